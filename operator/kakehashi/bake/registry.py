"""A client for the OCI distribution API, on httpx: what baking needs and nothing more.

- Blobs: HEAD before upload (nothing the registry has is sent again), cross-repository mount
  (`POST .../blobs/uploads/?mount=<digest>&from=<repo>`) where the registry allows it, and
  chunked uploads (PATCH with Content-Range) streamed from a file, so a 5 GB layer never sits
  in memory. Downloads stream to a file and are verified against their digest.
- Manifests are pushed as the exact bytes given, with their own media type (Docker v2 schema 2,
  Docker manifest lists, OCI manifests and indexes), and checked against the digest the
  registry answers with.
- Auth: anonymous, basic, the bearer-token challenge (`WWW-Authenticate: Bearer realm=...,
  service=...,scope=...`, tokens cached per scope), and ECR (a token from boto3's
  `ecr.get_authorization_token`, imported only for an ECR host). Credentials come from the
  caller, else a Docker config.json (`$DOCKER_CONFIG`, a mounted `.dockerconfigjson` Secret),
  else ECR for an ECR host, else none.
- Transient failures (connection errors, 429, 5xx) are retried with capped, jittered backoff
  (`kakehashi.control.errors.classify` decides temporary from permanent); when retries run out
  the error says which registry was unreachable and that retrying later will do.

Why not a library: oras-py 0.2.43 always sends the OCI manifest media type (a Docker base
cannot be re-pushed as it is) and buffers uploads; olot 1.2.1 edits a local OCI layout and
converts Docker manifests to OCI (the base's manifest type and digest lineage would change);
python-dxf 12.1.1 fits the protocol (push, mount, each manifest's own media type) but brings
requests and jwcrypto into the bake image beside httpx, has no ECR token source, and retries
nothing by our temporary/permanent rules; restarting a failed chunk from a generated (never
written) layer stream, which is what makes the append fast here, would sit outside it anyway.
What baking needs is a few hundred lines over httpx, which the operator extra already has.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import httpx

from kakehashi.bake.mediatypes import (
    ACCEPT_MANIFESTS,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
)
from kakehashi.control.backoff import Backoff
from kakehashi.control.errors import PermanentError, TemporaryError, classify

__all__ = [
    "OCI_CONFIG", "OCI_INDEX", "OCI_LAYER_GZIP", "OCI_MANIFEST", "Credentials", "Manifest",
    "Reference", "Registry", "RegistryError", "sha256_digest",
]

DEFAULT_CHUNK: Final = 64 << 20
_READ: Final = 1 << 20
_ECR_HOST: Final = re.compile(
    r"^(?P<account>\d{12})\.dkr(?:-fips)?\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")
_CHALLENGE_PARAM: Final = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]+))')
_DIGEST: Final = re.compile(r"^sha256:[0-9a-f]{64}$")
_TAG: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")

Progress = Callable[[str], None]


class RegistryError(RuntimeError):
    """The registry refused a request, kept failing, or returned bytes that are not what
    their digest says. `temporary` says whether trying again later can help; `reason` is a
    CamelCase word for a status condition (RegistryUnavailable, Unauthorized, NotFound...)."""

    def __init__(self, message: str, *, reason: str = "RegistryError", temporary: bool = False,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.temporary = temporary
        self.status = status


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as stream:
        while chunk := stream.read(_READ):
            digest.update(chunk)
            size += len(chunk)
    return "sha256:" + digest.hexdigest(), size


@dataclass(frozen=True)
class Reference:
    """`host[:port]/repository[:tag][@sha256:...]`; the registry host is required."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        rest, _, digest = text.partition("@")
        host, slash, path = rest.partition("/")
        if not slash or not ("." in host or ":" in host or host == "localhost"):
            raise ValueError(f"image reference {text!r} must start with its registry "
                             "(host[:port]/repository)")
        repository, tag = path, None
        last = path.rsplit("/", 1)[-1]
        if ":" in last:
            repository, _, tag = path.rpartition(":")
            if not _TAG.match(tag):
                raise ValueError(f"image reference {text!r}: invalid tag {tag!r}")
        if digest and not _DIGEST.match(digest):
            raise ValueError(f"image reference {text!r}: invalid digest {digest!r}")
        if not repository or repository != repository.lower():
            raise ValueError(f"image reference {text!r}: repository must be lowercase")
        return cls(host, repository, tag, digest or None)

    @property
    def reference(self) -> str:
        """What a manifest request names: the digest if there is one, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    expires_at: float | None = None  # monotonic time after which to ask the provider again


CredentialProvider = Callable[[], Credentials | None]


def docker_config_credentials(host: str, config: Path | None = None) -> Credentials | None:
    """Credentials for `host` from a Docker config.json (`$DOCKER_CONFIG/config.json`, else
    `~/.docker/config.json`): `auths.<host>.auth` (base64 user:password) or username/password."""
    if config is None:
        directory = os.environ.get("DOCKER_CONFIG")
        config = Path(directory) / "config.json" if directory else (
            Path.home() / ".docker" / "config.json")
    try:
        auths = json.loads(config.read_text()).get("auths", {})
    except (OSError, ValueError):
        return None
    for key in (host, f"https://{host}", f"http://{host}", f"https://{host}/v1/"):
        entry = auths.get(key)
        if not isinstance(entry, dict):
            continue
        if entry.get("auth"):
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            return Credentials(user, password)
        if entry.get("username"):
            return Credentials(str(entry["username"]), str(entry.get("password", "")))
    return None


def ecr_credentials(host: str, *, client: Any = None) -> Credentials:
    """A 12-hour ECR token for `host` from boto3's `ecr.get_authorization_token`."""
    match = _ECR_HOST.match(host)
    if match is None:
        raise ValueError(f"{host} is not an ECR registry")
    if client is None:
        import boto3  # only where an ECR registry is used: the operator image has it

        client = boto3.client("ecr", region_name=match["region"])
    answer = client.get_authorization_token(registryIds=[match["account"]])
    token = answer["authorizationData"][0]["authorizationToken"]
    user, _, password = base64.b64decode(token).decode().partition(":")
    # Ask again well before the 12 hours are up.
    return Credentials(user, password, expires_at=time.monotonic() + 6 * 3600)


def default_credentials(host: str) -> CredentialProvider:
    """Docker config.json first, then ECR for an ECR host, else anonymous."""

    def provide() -> Credentials | None:
        found = docker_config_credentials(host)
        if found is None and _ECR_HOST.match(host):
            found = ecr_credentials(host)
        return found

    return provide


@dataclass(frozen=True)
class Manifest:
    """A manifest as the registry holds it: its exact bytes, media type and digest."""

    raw: bytes
    media_type: str
    digest: str

    def json(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.raw)
        return value


@dataclass
class Stats:
    """What a client sent: request bodies, and what it did with each blob."""

    bytes_uploaded: int = 0
    requests: int = 0
    retries: int = 0
    blobs_uploaded: int = 0
    blobs_mounted: int = 0
    blobs_skipped: int = 0
    manifests_pushed: int = 0
    manifests_skipped: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, amount: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + amount)

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if k != "lock"}


class _Counting(httpx.BaseTransport):
    """Counts every request body byte actually handed to the transport, retries included."""

    def __init__(self, inner: httpx.BaseTransport, stats: Stats) -> None:
        self.inner, self.stats = inner, stats

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.stats.add("requests")
        length = request.headers.get("Content-Length")
        if length and length.isdigit():
            self.stats.add("bytes_uploaded", int(length))
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
              for m in _CHALLENGE_PARAM.finditer(rest)}
    return scheme.lower(), params


def _scopes(repository: str | None, push: bool, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    scopes = list(extra)
    if repository:
        scopes.append(f"repository:{repository}:{'pull,push' if push else 'pull'}")
    return tuple(sorted(set(scopes)))


class _Auth:
    """Remembers which scheme the registry asked for, and bearer tokens per scope set."""

    def __init__(self, registry: Registry, provider: CredentialProvider | None) -> None:
        self.registry = registry
        self.provider = provider
        self.scheme: str | None = None
        self.realm: str | None = None
        self.service: str | None = None
        self._credentials: Credentials | None = None
        self._fetched = False
        self._tokens: dict[tuple[str, ...], tuple[str, float]] = {}
        self._lock = threading.Lock()

    def credentials(self) -> Credentials | None:
        with self._lock:
            stale = (self._credentials is not None and self._credentials.expires_at is not None
                     and time.monotonic() > self._credentials.expires_at)
            if self.provider is not None and (not self._fetched or stale):
                self._credentials, self._fetched = self.provider(), True
            return self._credentials

    def header(self, scopes: tuple[str, ...]) -> str | None:
        if self.scheme == "basic":
            creds = self.credentials()
            return _basic(creds) if creds is not None else None
        if self.scheme == "bearer":
            cached = self._tokens.get(scopes)
            if cached is None or time.monotonic() > cached[1]:
                cached = self._token(scopes)
            return f"Bearer {cached[0]}"
        return None

    def challenged(self, response: httpx.Response, scopes: tuple[str, ...]) -> None:
        """Learn from a 401: the scheme, and for bearer the realm and service."""
        header = response.headers.get("WWW-Authenticate", "")
        scheme, params = _challenge(header)
        if scheme not in ("basic", "bearer"):
            raise RegistryError(f"{self.registry.host} asked for authentication "
                                f"({header or 'no WWW-Authenticate header'}) this client "
                                "cannot give", reason="Unauthorized", status=401)
        self.scheme = scheme
        if scheme == "bearer":
            self.realm, self.service = params.get("realm"), params.get("service")
            if not self.realm:
                raise RegistryError(f"{self.registry.host}: bearer challenge without a realm",
                                    reason="Unauthorized", status=401)
            self._tokens.pop(scopes, None)
        elif self.credentials() is None:
            raise RegistryError(f"{self.registry.host} requires credentials (basic auth) and "
                                "none were given (Docker config.json, or ECR for ECR hosts)",
                                reason="Unauthorized", status=401)

    def _token(self, scopes: tuple[str, ...]) -> tuple[str, float]:
        assert self.realm is not None
        params: list[tuple[str, str]] = [("scope", scope) for scope in scopes]
        if self.service:
            params.insert(0, ("service", self.service))
        creds = self.credentials()
        headers = {"Authorization": _basic(creds)} if creds else {}
        response = self.registry.send("GET", self.realm, params=params, headers=headers,
                                      authenticate=False, what=f"token from {self.realm}")
        if response.status_code != 200:
            raise RegistryError(
                f"token server {self.realm} refused {' '.join(scopes) or 'access'}: HTTP "
                f"{response.status_code} {response.text[:300]}",
                reason="Unauthorized", status=response.status_code)
        body = response.json()
        token = body.get("token") or body.get("access_token")
        if not token:
            raise RegistryError(f"token server {self.realm} answered without a token",
                                reason="Unauthorized")
        lifetime = float(body.get("expires_in") or 60)
        entry = (str(token), time.monotonic() + max(10.0, lifetime - 10))
        self._tokens[scopes] = entry
        return entry


Opener = Callable[[int], Iterator[bytes]]
"""The bytes of a blob from an offset on: a file read from there, or a stream generated anew."""


def file_opener(path: Path) -> Opener:
    def open_at(offset: int) -> Iterator[bytes]:
        with path.open("rb") as stream:
            stream.seek(offset)
            while data := stream.read(_READ * 4):
                yield data

    return open_at


class _Source:
    """Hands out consecutive byte ranges of a blob as request bodies, reopening it only when
    a range is asked for again (a retried request) or out of order."""

    def __init__(self, opener: Opener, on_bytes: Callable[[int], None]) -> None:
        self.opener, self.on_bytes = opener, on_bytes
        self.stream: Iterator[bytes] | None = None
        self.position = 0
        self.pending = b""

    def body(self, start: int, length: int) -> Iterator[bytes]:
        if self.stream is None or start != self.position:
            self.stream, self.position, self.pending = self.opener(start), start, b""
        left = length
        while left > 0:
            data = self.pending or next(self.stream, b"")
            if not data:
                raise RegistryError("the blob ended before its recorded size: it changed "
                                    "while it was being uploaded")
            piece, self.pending = data[:left], data[left:]
            left -= len(piece)
            self.position += len(piece)
            self.on_bytes(len(piece))
            yield piece


class Registry:
    """One registry: `Registry("127.0.0.1:5000")` (plain HTTP on loopback) or a host name
    (HTTPS unless `insecure`). `stats` counts every request body byte sent, retries included."""

    def __init__(self, address: str, *, credentials: Credentials | CredentialProvider | None
                 = None, insecure: bool | None = None, client: httpx.Client | None = None,
                 retries: int = 4, backoff: Backoff | None = None,
                 chunk_size: int = DEFAULT_CHUNK, timeout: float = 300.0,
                 sleep: Callable[[float], None] = time.sleep, use_default_credentials: bool
                 = True, transport: httpx.BaseTransport | None = None) -> None:
        if "://" in address:
            scheme, _, host = address.partition("://")
        else:
            host = address
            local = host.startswith(("127.", "localhost", "[::1]"))
            scheme = "http" if (insecure if insecure is not None else local) else "https"
        self.host = host.rstrip("/")
        self.base = f"{scheme}://{self.host}"
        self.stats = Stats()
        if isinstance(credentials, Credentials):
            fixed = credentials
            provider: CredentialProvider | None = lambda: fixed  # noqa: E731
        elif credentials is None and use_default_credentials:
            provider = default_credentials(self.host)
        else:
            provider = credentials
        self._auth = _Auth(self, provider)
        if client is None:
            inner = transport or httpx.HTTPTransport(retries=0, verify=_tls_context())
            counting = _Counting(inner, self.stats)
            client = httpx.Client(transport=counting, timeout=httpx.Timeout(timeout,
                                  connect=10.0), follow_redirects=False)
        self._client = client
        self.retries = retries
        self.backoff = backoff or Backoff(base_s=0.5, factor=2.0, cap_s=8.0)
        self.chunk_size = chunk_size
        self._sleep = sleep

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- requests ------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self.base}/v2/{path}"

    def _absolute(self, location: str) -> str:
        return self.base + location if location.startswith("/") else location

    def send(self, method: str, url: str, *, scopes: tuple[str, ...] = (),
             headers: Mapping[str, str] | None = None,
             content: Callable[[], Any] | bytes | None = None,
             params: Any = None, authenticate: bool = True,
             retry: bool = True, what: str = "request", stream: bool = False
             ) -> httpx.Response:
        """One request, retried on transient failures, authenticated on a 401 challenge.

        `content` may be a callable making the body anew for each attempt (a file chunk).
        Answers with a status below 500 other than 401 and 429 are returned for the caller to
        judge; 5xx, 429 and transport failures are retried and then raised as temporary.
        """
        attempt, reauthenticated = 0, False
        while True:
            attempt += 1
            request_headers = dict(headers or {})
            if authenticate:
                header = self._auth.header(scopes)
                if header:
                    request_headers["Authorization"] = header
            body = content() if callable(content) else content
            try:
                request = self._client.build_request(method, url, headers=request_headers,
                                                     content=body, params=params)
                response = self._client.send(request, stream=stream)
            except httpx.HTTPError as error:
                verdict = classify(error)
                if not isinstance(verdict, TemporaryError):
                    raise RegistryError(f"{what} at {self.host}: {error}") from error
                self._wait_or_raise(attempt, retry, what, f"{type(error).__name__}: {error}",
                                    None, error)
                continue
            if response.status_code == 401 and authenticate and not reauthenticated:
                if stream:
                    response.close()
                self._auth.challenged(response, scopes)
                reauthenticated = True
                attempt -= 1
                continue
            if response.status_code == 429 or response.status_code >= 500:
                if stream:
                    response.read()
                verdict = classify(httpx.HTTPStatusError(what, request=request,
                                                         response=response))
                delay = _retry_after(response)
                self._wait_or_raise(attempt, retry, what,
                                    f"HTTP {response.status_code} {_text(response)}",
                                    delay if isinstance(verdict, TemporaryError) else None,
                                    None, status=response.status_code)
                continue
            return response

    def _wait_or_raise(self, attempt: int, retry: bool, what: str, detail: str,
                       delay: float | None, cause: BaseException | None,
                       status: int | None = None) -> None:
        if not retry or attempt > self.retries:
            tries = f" after {attempt} attempts" if attempt > 1 else ""
            raise RegistryError(f"registry {self.host} unavailable{tries}: {what}: {detail}",
                                reason="RegistryUnavailable", temporary=True,
                                status=status) from cause
        self.stats.add("retries")
        self._sleep(delay if delay is not None else self.backoff.delay(attempt))

    def _check(self, response: httpx.Response, what: str, *ok: int) -> httpx.Response:
        if response.status_code in ok or (not ok and response.status_code < 400):
            return response
        verdict = classify(httpx.HTTPStatusError(what, request=response.request,
                                                 response=response))
        reason = verdict.reason if isinstance(verdict, PermanentError) else "RegistryError"
        raise RegistryError(f"{what} at {self.host}: HTTP {response.status_code} "
                            f"{_text(response)}", reason=reason,
                            temporary=isinstance(verdict, TemporaryError),
                            status=response.status_code)

    # -- blobs ---------------------------------------------------------------------------

    def blob_exists(self, repository: str, digest: str) -> bool:
        response = self.send("HEAD", self._url(f"{repository}/blobs/{digest}"),
                             scopes=_scopes(repository, False), what=f"HEAD blob {digest}")
        if response.status_code == 404:
            return False
        self._check(response, f"HEAD blob {digest} in {repository}", 200)
        return True

    def mount_blob(self, repository: str, digest: str, source: str) -> str | None:
        """Mount `digest` from `source` (same registry): None when mounted; otherwise the
        upload location the registry opened instead (the blob must be uploaded there)."""
        url = self._url(f"{repository}/blobs/uploads/")
        response = self.send("POST", url, params={"mount": digest, "from": source},
                             scopes=_scopes(repository, True, (f"repository:{source}:pull",)),
                             headers={"Content-Length": "0"},
                             what=f"mount {digest} from {source}")
        if response.status_code == 201:
            self.stats.add("blobs_mounted")
            return None
        self._check(response, f"mount {digest} into {repository}", 202)
        return self._absolute(response.headers["Location"])

    def _start_upload(self, repository: str) -> str:
        response = self.send("POST", self._url(f"{repository}/blobs/uploads/"),
                             scopes=_scopes(repository, True), headers={"Content-Length": "0"},
                             what=f"start upload to {repository}")
        self._check(response, f"start upload to {repository}", 202)
        return self._absolute(response.headers["Location"])

    def push_blob_file(self, repository: str, path: Path, digest: str | None = None,
                       size: int | None = None, *, mount_from: tuple[str, ...] = (),
                       progress: Progress | None = None) -> str:
        """Make `repository` hold the blob in `path` (see `push_blob_stream`)."""
        if digest is None or size is None:
            digest, size = file_digest(path)
        return self.push_blob_stream(repository, digest, size, file_opener(path),
                                     mount_from=mount_from, progress=progress)

    def push_blob_stream(self, repository: str, digest: str, size: int, opener: Opener, *,
                         mount_from: tuple[str, ...] = (), progress: Progress | None = None
                         ) -> str:
        """Make `repository` hold the blob `opener` yields; return "present", "mounted" or
        "uploaded". HEAD first, then a mount from `mount_from`, then a chunked upload, the
        chunks streamed from `opener` (never the whole blob in memory)."""
        if self.blob_exists(repository, digest):
            self.stats.add("blobs_skipped")
            return "present"
        location: str | None = None
        for source in mount_from:
            if source == repository:
                continue
            location = self.mount_blob(repository, digest, source)
            if location is None:
                return "mounted"
            break
        for restart in range(self.retries + 1):
            try:
                self._upload(repository, location or self._start_upload(repository), opener,
                             digest, size, progress)
                self.stats.add("blobs_uploaded")
                return "uploaded"
            except RegistryError as error:
                # A chunk that failed mid-stream leaves the session in an unknown state:
                # start a fresh session (the HEAD above already ruled out a finished blob).
                if not error.temporary or restart == self.retries:
                    raise
                location = None
                self.stats.add("retries")
                self._sleep(self.backoff.delay(restart + 1))
        raise AssertionError("unreachable")

    def _upload(self, repository: str, location: str, opener: Opener, digest: str, size: int,
                progress: Progress | None) -> None:
        scopes = _scopes(repository, True)
        offset, sent, last_report = 0, 0, time.monotonic()

        def on_bytes(count: int) -> None:
            nonlocal sent, last_report
            sent += count
            if progress is not None and time.monotonic() - last_report > 2 and size:
                last_report = time.monotonic()
                progress(f"  {digest[:19]}…: {sent / 1e6:.0f}/{size / 1e6:.0f} MB")

        source = _Source(opener, on_bytes)
        while offset < size:
            length = min(self.chunk_size, size - offset)
            response = self.send(
                "PATCH", location, scopes=scopes, retry=False,
                headers={"Content-Type": "application/octet-stream",
                         "Content-Range": f"{offset}-{offset + length - 1}",
                         "Content-Length": str(length)},
                content=functools.partial(source.body, offset, length),
                what=f"upload {digest[:19]}… to {repository}")
            self._check(response, f"upload chunk of {digest} to {repository}", 202)
            location = self._absolute(response.headers.get("Location", location))
            offset += length
        url = httpx.URL(location)
        url = url.copy_with(params=url.params.set("digest", digest))
        response = self.send("PUT", str(url), scopes=scopes, retry=False,
                             headers={"Content-Length": "0"},
                             what=f"finish upload of {digest[:19]}… to {repository}")
        if response.status_code == 400 and "DIGEST_INVALID" in _text(response):
            raise RegistryError(f"the registry received other bytes than {digest}: the blob "
                                "changed while it was being uploaded", reason="BlobChanged",
                                status=400)
        self._check(response, f"finish upload of {digest} to {repository}", 201)

    def push_blob(self, repository: str, data: bytes) -> str:
        """Upload a small blob held in memory (a config) in one request; return its digest."""
        digest = sha256_digest(data)
        if self.blob_exists(repository, digest):
            self.stats.add("blobs_skipped")
            return digest
        for restart in range(self.retries + 1):
            try:
                location = self._start_upload(repository)
                url = httpx.URL(location)
                url = url.copy_with(params=url.params.set("digest", digest))
                response = self.send("PUT", str(url), scopes=_scopes(repository, True),
                                     content=data, retry=False,
                                     headers={"Content-Type": "application/octet-stream"},
                                     what=f"upload blob {digest[:19]}… to {repository}")
                self._check(response, f"upload blob {digest} to {repository}", 201)
                self.stats.add("blobs_uploaded")
                return digest
            except RegistryError as error:
                if not error.temporary or restart == self.retries:
                    raise
                self._sleep(self.backoff.delay(restart + 1))
        raise AssertionError("unreachable")

    def pull_blob(self, repository: str, digest: str) -> bytes:
        """A small blob (a config), verified against its digest."""
        response = self.send("GET", self._url(f"{repository}/blobs/{digest}"),
                             scopes=_scopes(repository, False), what=f"GET blob {digest}")
        response = self._follow(response, repository)
        self._check(response, f"pull blob {digest} from {repository}", 200)
        if sha256_digest(response.content) != digest:
            raise RegistryError(f"blob {digest} from {repository} does not match its digest")
        return response.content

    def download_blob(self, repository: str, digest: str, output: IO[bytes]) -> int:
        """Stream a blob into `output`, verifying its digest; return its size."""
        for attempt in range(1, self.retries + 2):
            output.seek(0)
            output.truncate()
            response = self.send("GET", self._url(f"{repository}/blobs/{digest}"),
                                 scopes=_scopes(repository, False), stream=True,
                                 what=f"GET blob {digest}")
            try:
                response = self._follow(response, repository, stream=True)
                self._check(response, f"download blob {digest} from {repository}", 200)
                hasher, size = hashlib.sha256(), 0
                for chunk in response.iter_bytes(_READ):
                    hasher.update(chunk)
                    output.write(chunk)
                    size += len(chunk)
            except httpx.HTTPError as error:
                if attempt > self.retries:
                    raise RegistryError(f"download of {digest} from {self.host} kept failing: "
                                        f"{error}", reason="RegistryUnavailable",
                                        temporary=True) from error
                self._sleep(self.backoff.delay(attempt))
                continue
            finally:
                response.close()
            if "sha256:" + hasher.hexdigest() != digest:
                raise RegistryError(f"blob {digest} from {repository} does not match its digest")
            return size
        raise AssertionError("unreachable")

    def _follow(self, response: httpx.Response, repository: str, stream: bool = False
                ) -> httpx.Response:
        """Blob GETs may redirect to storage (S3, a CDN), which must not get our token."""
        if response.status_code in (301, 302, 303, 307, 308) and "Location" in response.headers:
            location = self._absolute(response.headers["Location"])
            response.close()
            return self.send("GET", location, authenticate=False, stream=stream,
                             what=f"GET redirected blob of {repository}")
        return response

    # -- manifests -----------------------------------------------------------------------

    def get_manifest(self, repository: str, reference: str,
                     accept: str = ACCEPT_MANIFESTS) -> Manifest:
        """A manifest or index by tag or digest, exactly as stored (digest verified)."""
        response = self.send("GET", self._url(f"{repository}/manifests/{reference}"),
                             scopes=_scopes(repository, False), headers={"Accept": accept},
                             what=f"GET manifest {repository}:{reference}")
        self._check(response, f"pull manifest {repository}:{reference}", 200)
        raw = response.content
        digest = sha256_digest(raw)
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(f"manifest {reference} does not match its digest")
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        declared = json.loads(raw).get("mediaType")
        return Manifest(raw=raw, media_type=declared or media_type, digest=digest)

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        """The digest `reference` names in `repository`, or None if it names nothing."""
        response = self.send("HEAD", self._url(f"{repository}/manifests/{reference}"),
                             scopes=_scopes(repository, False),
                             headers={"Accept": ACCEPT_MANIFESTS},
                             what=f"HEAD manifest {repository}:{reference}")
        if response.status_code == 404:
            return None
        self._check(response, f"HEAD manifest {repository}:{reference}", 200)
        found = response.headers.get("Docker-Content-Digest")
        return str(found) if found else None

    def put_manifest(self, repository: str, reference: str, raw: bytes, media_type: str,
                     *, skip_if_present: bool = True) -> str:
        """PUT these exact bytes under a tag or their digest; return the digest. When the
        reference already names exactly these bytes, nothing is sent."""
        digest = sha256_digest(raw)
        if skip_if_present and self.manifest_digest(repository, reference) == digest:
            self.stats.add("manifests_skipped")
            return digest
        response = self.send("PUT", self._url(f"{repository}/manifests/{reference}"),
                             scopes=_scopes(repository, True), content=raw,
                             headers={"Content-Type": media_type},
                             what=f"PUT manifest {repository}:{reference}")
        self._check(response, f"push manifest {repository}:{reference}", 201)
        returned = response.headers.get("Docker-Content-Digest", digest)
        if returned != digest:
            raise RegistryError(f"registry stored manifest as {returned}, expected {digest}")
        self.stats.add("manifests_pushed")
        return digest

    # -- the small API `kakehashi.oci` always had ----------------------------------------

    def push_manifest(self, repository: str, reference: str, manifest: dict[str, Any],
                      media_type: str = OCI_MANIFEST) -> str:
        body = json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()
        return self.put_manifest(repository, reference, body, media_type, skip_if_present=False)

    def pull_manifest(self, repository: str, reference: str) -> tuple[dict[str, Any], str]:
        found = self.get_manifest(repository, reference)
        return found.json(), found.digest

    def tags(self, repository: str) -> list[str]:
        response = self.send("GET", self._url(f"{repository}/tags/list"),
                             scopes=_scopes(repository, False), what=f"tags of {repository}")
        self._check(response, f"list tags of {repository}", 200)
        tags: list[str] = response.json().get("tags") or []
        return tags


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context per process: loading the CA bundle takes ~80 ms, which
    every new client would otherwise pay again."""
    return httpx.create_ssl_context()


def _basic(creds: Credentials) -> str:
    return "Basic " + base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()


def _text(response: httpx.Response) -> str:
    try:
        return response.text[:300].strip()
    except (httpx.ResponseNotRead, UnicodeDecodeError):
        return ""


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return min(60.0, float(value)) if value is not None else None
    except ValueError:
        return None
