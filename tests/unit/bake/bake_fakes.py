"""An in-memory registry speaking the distribution API subset baking uses, behind an
httpx.MockTransport: blobs (HEAD, GET, POST with mount, PATCH with Content-Range, PUT),
manifests (HEAD, GET, PUT), optional basic or bearer auth, and injected failures."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from kakehashi.bake.registry import Registry

HOST = "registry.test"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class FakeRegistry:
    auth: str | None = None  # None, "basic" or "bearer"
    user: str = "alice"
    password: str = "secret"
    allow_mount: bool = True
    blobs: dict[str, dict[str, bytes]] = field(default_factory=dict)  # repo -> digest -> data
    manifests: dict[str, dict[str, tuple[bytes, str]]] = field(default_factory=dict)
    uploads: dict[str, bytearray] = field(default_factory=dict)
    log: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    fail: list[Callable[[httpx.Request], httpx.Response | None]] = field(default_factory=list)
    tokens_issued: list[list[str]] = field(default_factory=list)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def client(self, host: str = HOST, **kwargs: Any) -> Registry:
        kwargs.setdefault("sleep", lambda _: None)
        kwargs.setdefault("use_default_credentials", False)
        return Registry(host, insecure=False, transport=self.transport(), **kwargs)

    # -- helpers for tests ---------------------------------------------------------------

    def put_blob(self, repository: str, data: bytes) -> str:
        digest = digest_of(data)
        self.blobs.setdefault(repository, {})[digest] = data
        return digest

    def put_manifest(self, repository: str, reference: str, raw: bytes, media_type: str) -> str:
        digest = digest_of(raw)
        store = self.manifests.setdefault(repository, {})
        store[digest] = (raw, media_type)
        store[reference] = (raw, media_type)
        return digest

    def requests(self, method: str) -> list[str]:
        return [path for m, path, _ in self.log if m == method]

    # -- the protocol --------------------------------------------------------------------

    def _authorized(self, request: httpx.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if self.auth == "basic":
            expected = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            return header == f"Basic {expected}"
        if self.auth == "bearer":
            return header.startswith("Bearer token-")
        return True

    def _challenge(self, repository: str) -> httpx.Response:
        if self.auth == "basic":
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="fake"'})
        return httpx.Response(401, headers={"WWW-Authenticate": (
            f'Bearer realm="https://{HOST}/token",service="{HOST}",'
            f'scope="repository:{repository}:pull,push"')})

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.log.append((request.method, path, dict(request.headers)))
        for failure in list(self.fail):
            answer = failure(request)
            if answer is not None:
                return answer
        if path == "/token":
            header = request.headers.get("Authorization", "")
            expected = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            if header != f"Basic {expected}":
                return httpx.Response(401, json={"errors": [{"code": "UNAUTHORIZED"}]})
            scopes = request.url.params.get_list("scope")
            self.tokens_issued.append(scopes)
            return httpx.Response(200, json={"token": f"token-{len(self.tokens_issued)}",
                                             "expires_in": 300})
        match = re.match(r"^/v2/(.+)/(blobs|manifests)/(uploads/)?(.*)$", path)
        if not match:
            return httpx.Response(404)
        repository, kind, uploads, rest = match.groups()
        if not self._authorized(request):
            return self._challenge(repository)
        if kind == "manifests":
            return self._manifest(request, repository, rest)
        if uploads:
            return self._upload(request, repository, rest)
        data = self.blobs.get(repository, {}).get(rest)
        if data is None:
            return httpx.Response(404)
        if request.method == "HEAD":
            return httpx.Response(200, headers={"Content-Length": str(len(data)),
                                                "Docker-Content-Digest": rest})
        return httpx.Response(200, content=data)

    def _upload(self, request: httpx.Request, repository: str, rest: str) -> httpx.Response:
        if request.method == "POST":
            mount, source = request.url.params.get("mount"), request.url.params.get("from")
            if mount and source and self.allow_mount and mount in self.blobs.get(source, {}):
                self.blobs.setdefault(repository, {})[mount] = self.blobs[source][mount]
                return httpx.Response(201, headers={"Location": f"/v2/{repository}/blobs/{mount}"})
            session = uuid.uuid4().hex
            self.uploads[session] = bytearray()
            return httpx.Response(202, headers={
                "Location": f"/v2/{repository}/blobs/uploads/{session}?_state={session}",
                "Range": "0-0"})
        session = rest
        if session not in self.uploads:
            return httpx.Response(404, json={"errors": [{"code": "BLOB_UPLOAD_UNKNOWN"}]})
        buffer = self.uploads[session]
        body = request.read()
        if request.method == "PATCH":
            if "Content-Range" in request.headers:
                start, end = (int(x) for x in request.headers["Content-Range"].split("-"))
                if start != len(buffer) or end - start + 1 != len(body):
                    return httpx.Response(416)
            buffer.extend(body)
            return httpx.Response(202, headers={
                "Location": f"/v2/{repository}/blobs/uploads/{session}?_state={len(buffer)}",
                "Range": f"0-{len(buffer) - 1}"})
        if request.method == "PUT":
            buffer.extend(body)
            digest = request.url.params["digest"]
            if digest_of(bytes(buffer)) != digest:
                return httpx.Response(400, json={"errors": [{"code": "DIGEST_INVALID"}]})
            self.blobs.setdefault(repository, {})[digest] = bytes(buffer)
            del self.uploads[session]
            return httpx.Response(201, headers={"Docker-Content-Digest": digest})
        return httpx.Response(405)

    def _manifest(self, request: httpx.Request, repository: str, reference: str
                  ) -> httpx.Response:
        store = self.manifests.setdefault(repository, {})
        if request.method == "PUT":
            raw = request.read()
            media_type = request.headers["Content-Type"]
            for descriptor in [json.loads(raw).get("config"), *json.loads(raw).get("layers", [])]:
                if descriptor and descriptor["digest"] not in self.blobs.get(repository, {}):
                    return httpx.Response(400, json={"errors": [{"code": "MANIFEST_BLOB_UNKNOWN"}]})
            for child in json.loads(raw).get("manifests", []):
                if child["digest"] not in store:
                    return httpx.Response(400, json={"errors": [{"code": "MANIFEST_UNKNOWN"}]})
            digest = self.put_manifest(repository, reference, raw, media_type)
            return httpx.Response(201, headers={"Docker-Content-Digest": digest})
        found = store.get(reference)
        if found is None:
            return httpx.Response(404)
        raw, media_type = found
        headers = {"Content-Type": media_type, "Docker-Content-Digest": digest_of(raw)}
        if request.method == "HEAD":
            return httpx.Response(200, headers=headers)
        return httpx.Response(200, content=raw, headers=headers)
