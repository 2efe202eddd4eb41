"""Baking against real registries: the dev environment's, and registries started here from the
same CNCF distribution binary (one with bearer-token auth and a token server signing RS256
JWTs, one that goes away in the middle of a push)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.server
import io
import json
import os
import re
import subprocess
import tarfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tiny_models import tiny_savedmodel

from kakehashi.bake import Credentials, Registry, RegistryError, bake
from kakehashi.bake import mediatypes as mt
from kakehashi.dev import tools
from kakehashi.dev.environment import DevEnvironment
from kakehashi.dev.processes import free_port
from kakehashi.modelformat import ModelArtifact
from kakehashi.modelformat.compiled import source_digest

MODEL_FILES = {
    "savedmodel/saved_model.pb": os.urandom(2048),
    "savedmodel/variables/variables.index": os.urandom(512),
    "savedmodel/variables/variables.data-00000-of-00001": os.urandom(3 << 20),
    "labels.json": b'["zero", "one", "two"]',
    "metrics.json": b'{"accuracy": 0.98}',
}


# -- helpers ---------------------------------------------------------------------------------

def write_model(root: Path, files: dict[str, bytes] = MODEL_FILES) -> tuple[Path, str]:
    for relative, data in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    digest = source_digest(root)
    artifact = ModelArtifact.model_validate({
        "uri": "s3://kakehashi-models/team/digits-1/", "digest": digest,
        "createdAt": "2026-11-26T10:00:00Z",
        "metrics": {"accuracy": 0.98, "loss": 0.05},
        "lineage": {"runName": "digits-1", "namespace": "team",
                    "git": {"url": "https://git.example/team/digits.git",
                            "commit": "0123456789abcdef"}}})
    (root / "model.json").write_text(artifact.model_dump_json(by_alias=True))
    return root, digest


def tiny_layer(files: dict[str, bytes]) -> tuple[bytes, str]:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0), \
        "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()


def push_base(registry: Registry, repository: str, *, kind: str = "docker") -> str:
    """A small base image built here from tiny tar layers: Docker v2, OCI, or an OCI index
    of linux/amd64 and linux/arm64. Returns its reference."""

    def image(arch: str, manifest_type: str) -> bytes:
        blob, diff_id = tiny_layer({"etc/passwd": b"kakehashi:x:10001:10001::/:/bin/false\n",
                                    "etc/arch": arch.encode()})
        docker = manifest_type == mt.DOCKER_MANIFEST
        config = json.dumps({
            "architecture": arch, "os": "linux", "created": "2026-01-01T00:00:00Z",
            "config": {"Env": ["PATH=/usr/bin", "KAKEHASHI_MODEL_NAME=model"],
                       "User": "10001:10001", "Labels": {"base": "serving"}},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": "2026-01-01T00:00:00Z", "created_by": "base"}]}).encode()
        return json.dumps({
            "schemaVersion": 2, "mediaType": manifest_type,
            "config": {"mediaType": mt.DOCKER_CONFIG if docker else mt.OCI_CONFIG,
                       "size": len(config), "digest": registry.push_blob(repository, config)},
            "layers": [{"mediaType": mt.DOCKER_LAYER_GZIP if docker else mt.OCI_LAYER_GZIP,
                        "size": len(blob), "digest": registry.push_blob(repository, blob)}],
        }).encode()

    if kind == "index":
        entries = []
        for arch in ("amd64", "arm64"):
            raw = image(arch, mt.OCI_MANIFEST)
            digest = registry.put_manifest(repository, "sha256:" + hashlib.sha256(raw)
                                           .hexdigest(), raw, mt.OCI_MANIFEST)
            entries.append({"mediaType": mt.OCI_MANIFEST, "digest": digest, "size": len(raw),
                            "platform": {"os": "linux", "architecture": arch}})
        index = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                            "manifests": entries}).encode()
        registry.put_manifest(repository, "v1", index, mt.OCI_INDEX)
    else:
        manifest_type = mt.DOCKER_MANIFEST if kind == "docker" else mt.OCI_MANIFEST
        registry.put_manifest(repository, "v1", image("amd64", manifest_type), manifest_type)
    return f"{registry.host}/{repository}:v1"


def image_files(registry: Registry, repository: str, layer_digest: str) -> dict[str, Any]:
    with io.BytesIO() as out:
        registry.download_blob(repository, layer_digest, out)
        out.seek(0)
        with tarfile.open(fileobj=out) as tar:
            found: dict[str, Any] = {}
            for member in tar.getmembers():
                extracted = tar.extractfile(member) if member.isfile() else None
                found[member.name] = (member, extracted.read() if extracted else None)
            return found


# -- a registry of our own -------------------------------------------------------------------

def registry_binary(dev_env: DevEnvironment) -> Path:
    """The distribution binary `dev up` built (and linked into the environment's bin dir)."""
    linked = dev_env.bin_dir / "registry"
    if linked.exists():
        return linked
    tool = next(t for t in tools.TOOLS if t.name == "registry")
    return tools.build(tool) / "registry"


class LocalRegistry:
    """The distribution binary on a loopback port of its own, with its own storage."""

    def __init__(self, binary: Path, root: Path, auth: dict[str, Any] | None = None) -> None:
        self.binary, self.root, self.port = binary, root, free_port()
        self.address = f"127.0.0.1:{self.port}"
        config: dict[str, Any] = {
            "version": 0.1, "log": {"level": "info"},
            "storage": {"filesystem": {"rootdirectory": str(root / "data")}},
            "http": {"addr": self.address}}
        if auth:
            config["auth"] = auth
        root.mkdir(parents=True, exist_ok=True)
        (root / "config.json").write_text(json.dumps(config))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> LocalRegistry:
        log = (self.root / "registry.log").open("ab")
        self.process = subprocess.Popen(
            [str(self.binary), "serve", str(self.root / "config.json")], stdout=log,
            stderr=log, env={**os.environ, "OTEL_TRACES_EXPORTER": "none"})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://{self.address}/v2/", timeout=1).status_code in (200, 401):
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError(f"registry did not start: {(self.root / 'registry.log').read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def own_registry(dev_env: DevEnvironment, tmp_path: Path) -> Iterator[LocalRegistry]:
    registry = LocalRegistry(registry_binary(dev_env), tmp_path / "registry").start()
    yield registry
    registry.stop()


# -- a token server: RS256 JWTs as distribution's token auth expects them ---------------------

def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


class TokenServer:
    """Issues tokens to alice/secret for whatever repository scopes she asks."""

    ISSUER, SERVICE, KID = "kakehashi-test-issuer", "kakehashi-test", "kakehashi-test-key"
    _SHA256_PREFIX = bytes.fromhex("3031300d060960864801650304020105000420")

    def __init__(self, root: Path) -> None:
        key = root / "token.key"
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True,
                       capture_output=True)
        text = subprocess.run(["openssl", "rsa", "-in", str(key), "-noout", "-text"],
                              check=True, capture_output=True, text=True).stdout
        self.n = self._number(text, "modulus")
        self.d = self._number(text, "privateExponent")
        self.e = int(re.search(r"publicExponent: (\d+)", text)[1])  # type: ignore[index]
        self.jwks = root / "jwks.json"
        self.jwks.write_text(json.dumps({"keys": [{
            "kty": "RSA", "kid": self.KID, "use": "sig", "alg": "RS256",
            "n": _b64url(_int_bytes(self.n)), "e": _b64url(_int_bytes(self.e))}]}))
        self.issued: list[list[str]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                expected = "Basic " + base64.b64encode(b"alice:secret").decode()
                if self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.end_headers()
                    return
                query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
                scopes = query.get("scope", [])
                server.issued.append(scopes)
                body = json.dumps({"token": server.token(scopes), "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @staticmethod
    def _number(text: str, name: str) -> int:
        block = re.search(rf"{name}:\n((?:\s+[0-9a-f:]+\n)+)", text)
        assert block is not None, text
        return int(re.sub(r"[^0-9a-f]", "", block[1]), 16)

    def token(self, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT", "kid": self.KID}
        claims = {"iss": self.ISSUER, "sub": "alice", "aud": self.SERVICE, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}." \
                        f"{_b64url(json.dumps(claims).encode())}"
        # RS256: RSASSA-PKCS1-v1_5 over SHA-256.
        size = (self.n.bit_length() + 7) // 8
        digest_info = self._SHA256_PREFIX + hashlib.sha256(signing_input.encode()).digest()
        encoded = b"\x00\x01" + b"\xff" * (size - len(digest_info) - 3) + b"\x00" + digest_info
        signature = pow(int.from_bytes(encoded, "big"), self.d, self.n).to_bytes(size, "big")
        return f"{signing_input}.{_b64url(signature)}"

    def auth_config(self) -> dict[str, Any]:
        return {"token": {"realm": self.realm, "service": self.SERVICE, "issuer": self.ISSUER,
                          "jwks": str(self.jwks)}}

    def close(self) -> None:
        self.httpd.shutdown()


# -- the tests -------------------------------------------------------------------------------

def test_baked_image_holds_exactly_the_model_and_its_lineage(dev_env: DevEnvironment,
                                                             tmp_path: Path) -> None:
    registry = Registry(dev_env.registry, insecure=True)
    suffix = uuid.uuid4().hex[:6]
    base = push_base(registry, f"test/bake-base-{suffix}", kind="docker")
    model, digest = write_model(tmp_path / "digits")
    result = bake(model, base, f"{dev_env.registry}/test/bake-{suffix}", service="digits",
                  model_name="digits", compile_hook=None, insecure=True,
                  progress=lambda line: print(line))
    repository = f"test/bake-{suffix}"
    assert result.image == f"{dev_env.registry}/{repository}@{result.digest}"
    assert result.tag.endswith(f":digits-{digest[7:23]}")
    assert registry.tags(repository) == [result.tag.rsplit(":", 1)[1]]

    manifest = registry.get_manifest(repository, result.digest)
    assert manifest.media_type == mt.DOCKER_MANIFEST
    body = manifest.json()
    assert body["mediaType"] == mt.DOCKER_MANIFEST and len(body["layers"]) == 2
    assert body["layers"][-1] == {"mediaType": mt.DOCKER_LAYER, "digest": result.layer_digest,
                                  "size": result.layer_size}
    files = image_files(registry, repository, result.layer_digest)
    expected = {f"models/digits/{name}" for name in [*MODEL_FILES, "model.json"]}
    assert {name for name, (member, _) in files.items() if member.isfile()} == expected
    for relative, data in MODEL_FILES.items():
        member, content = files[f"models/digits/{relative}"]
        assert content == data
        assert (member.uid, member.gid, member.mode, member.mtime) == (10001, 10001, 0o644, 0)

    config = json.loads(registry.pull_blob(repository, body["config"]["digest"]))
    labels = config["config"]["Labels"]
    assert labels["kakehashi.dev/model-digest"] == digest
    assert labels["kakehashi.dev/training-run"] == "team/digits-1"
    assert labels["org.opencontainers.image.source"] == "https://git.example/team/digits.git"
    assert labels["org.opencontainers.image.revision"] == "0123456789abcdef"
    assert json.loads(labels["kakehashi.dev/metrics"]) == {"accuracy": 0.98, "loss": 0.05}
    assert labels["base"] == "serving"
    assert "KAKEHASHI_MODEL_NAME=digits" in config["config"]["Env"]
    assert config["rootfs"]["diff_ids"][-1] == result.layer_diff_id == result.layer_digest
    assert len(config["history"]) == 2 and config["config"]["User"] == "10001:10001"
    assert config["created"] == config["history"][-1]["created"] == "2026-11-26T10:00:00Z"


def test_baking_twice_uploads_nothing_new(dev_env: DevEnvironment, tmp_path: Path) -> None:
    """On a two-platform OCI index; the second bake, by a fresh client, sends no byte."""
    suffix = uuid.uuid4().hex[:6]
    setup = Registry(dev_env.registry, insecure=True)
    base = push_base(setup, f"test/bake-base-{suffix}", kind="index")
    model, _ = write_model(tmp_path / "digits")
    target = f"{dev_env.registry}/test/bake-{suffix}"
    first_client = Registry(dev_env.registry, insecure=True)
    first = bake(model, base, target, service="digits", compile_hook=None,
                 registries={dev_env.registry: first_client})
    second_client = Registry(dev_env.registry, insecure=True)
    second = bake(model, base, target, service="digits", compile_hook=None,
                  registries={dev_env.registry: second_client})
    assert first.digest == second.digest and first.media_type == mt.OCI_INDEX
    assert first.bytes_uploaded > len(MODEL_FILES["savedmodel/variables/variables.data-"
                                                  "00000-of-00001"])
    assert second.bytes_uploaded == 0
    stats = second_client.stats
    assert (stats.blobs_uploaded, stats.blobs_mounted, stats.manifests_pushed) == (0, 0, 0)
    assert first_client.stats.blobs_mounted == 2  # each platform's base layer, not uploaded
    index = setup.get_manifest(f"test/bake-{suffix}", first.digest).json()
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64", "arm64"]
    for entry in index["manifests"]:
        child = setup.get_manifest(f"test/bake-{suffix}", entry["digest"]).json()
        assert child["mediaType"] == mt.OCI_MANIFEST
        assert child["layers"][-1]["digest"] == first.layer_digest
        assert child["layers"][-1]["mediaType"] == mt.OCI_LAYER
        assert child["annotations"]["org.opencontainers.image.base.name"] == base


def test_bearer_token_registry(dev_env: DevEnvironment, tmp_path: Path) -> None:
    tokens = TokenServer(tmp_path / "tokens")
    protected = LocalRegistry(registry_binary(dev_env), tmp_path / "registry",
                              auth=tokens.auth_config()).start()
    try:
        alice = Credentials("alice", "secret")
        anonymous = Registry(protected.address, use_default_credentials=False)
        with pytest.raises(RegistryError) as refused:
            anonymous.blob_exists("serving/base", "sha256:" + "0" * 64)
        assert refused.value.reason == "Unauthorized"

        base = push_base(Registry(protected.address, credentials=alice), "serving/base")
        model, _ = write_model(tmp_path / "digits")
        result = bake(model, base, f"{protected.address}/apps/digits", service="digits",
                      compile_hook=None, credentials=alice)
        client = Registry(protected.address, credentials=alice)
        assert client.get_manifest("apps/digits", result.digest).digest == result.digest
        # The mount asked for push on the target and pull on the base repository at once.
        assert ["repository:apps/digits:pull,push", "repository:serving/base:pull"] \
            in tokens.issued
        with pytest.raises(RegistryError) as wrong:
            bake(model, base, f"{protected.address}/apps/digits", service="digits",
                 compile_hook=None, credentials=Credentials("alice", "guess"))
        assert wrong.value.reason == "Unauthorized" and not wrong.value.temporary
    finally:
        protected.stop()
        tokens.close()


class _StopOnFirstPatch(httpx.BaseTransport):
    """Kills the registry the moment the first chunk of the model layer is on its way."""

    def __init__(self, registry: LocalRegistry) -> None:
        self.inner, self.registry, self.done = httpx.HTTPTransport(), registry, False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PATCH" and not self.done:
            self.done = True
            self.registry.stop()
        return self.inner.handle_request(request)


def test_registry_outage_mid_push_then_retry(own_registry: LocalRegistry,
                                            tmp_path: Path) -> None:
    address = own_registry.address
    base = push_base(Registry(address), "serving/base")
    model, _ = write_model(tmp_path / "digits")
    failing = Registry(address, retries=2, transport=_StopOnFirstPatch(own_registry))
    started = time.monotonic()
    with pytest.raises(RegistryError) as outage:
        bake(model, base, f"{address}/apps/digits", service="digits", compile_hook=None,
             registries={address: failing})
    error = outage.value
    assert error.temporary and error.reason == "RegistryUnavailable"
    assert f"registry {address} unavailable" in str(error)
    assert time.monotonic() - started < 60
    assert failing.stats.blobs_uploaded == 1  # the config went up before the outage

    own_registry.start()  # back, same storage
    retry_client = Registry(address)
    result = bake(model, base, f"{address}/apps/digits", service="digits", compile_hook=None,
                  registries={address: retry_client})
    assert retry_client.stats.blobs_uploaded == 1  # only the layer: the config was kept
    assert retry_client.stats.blobs_skipped >= 1
    again = Registry(address)
    assert bake(model, base, f"{address}/apps/digits", service="digits", compile_hook=None,
                registries={address: again}).digest == result.digest
    assert again.stats.bytes_uploaded == 0


def test_bake_from_s3_compiles_once_and_writes_the_compiled_form_back(
        dev_env: DevEnvironment, s3: Any, tmp_path: Path) -> None:
    """A model with no compiled form is compiled by the bake (TensorFlow here, as in the
    training image the bake Job runs), `compiled/` goes back beside it in S3, and the next
    bake (a fresh download) reuses it: same image, nothing uploaded."""
    from kakehashi.artifacts import upload_directory

    pytest.importorskip("tensorflow")
    source = tmp_path / "trained"
    source.mkdir()
    tiny_savedmodel(source)
    uri = f"s3://{dev_env.s3.model_bucket}/test-bake/{uuid.uuid4().hex[:8]}/"
    upload_directory(s3, source, uri)
    registry = Registry(dev_env.registry, insecure=True)
    suffix = uuid.uuid4().hex[:6]
    base = push_base(registry, f"test/bake-base-{suffix}", kind="oci")
    target = f"{dev_env.registry}/test/bake-{suffix}"

    first = bake(uri, base, target, service="scorer", model_name="scorer", s3_client=s3,
                 insecure=True, progress=print)
    assert first.compiled and first.labels["kakehashi.dev/compiled"] == "true"
    bucket, prefix = uri[5:].split("/", 1)
    keys = {o["Key"][len(prefix):] for o in
            s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])}
    assert "compiled/record.json" in keys and any(k.endswith(".tflite") for k in keys)
    files = image_files(registry, f"test/bake-{suffix}", first.layer_digest)
    assert "models/scorer/compiled/record.json" in files

    def no_compile(model_dir: Path, progress: Any) -> None:
        raise AssertionError("the compiled form in S3 should have been reused")

    again_client = Registry(dev_env.registry, insecure=True)
    again = bake(uri, base, target, service="scorer", model_name="scorer", s3_client=s3,
                 compile_hook=no_compile, registries={dev_env.registry: again_client})
    assert (again.digest, again.bytes_uploaded) == (first.digest, 0)
