"""The distribution client: auth, retries, chunked uploads, mounts, references."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from bake_fakes import HOST, FakeRegistry, digest_of  # type: ignore[import-not-found]

from kakehashi.bake.registry import (
    Credentials,
    Reference,
    RegistryError,
    _challenge,
    docker_config_credentials,
    ecr_credentials,
)


def _blob_file(tmp_path: Path, size: int) -> tuple[Path, str]:
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    path = tmp_path / "blob"
    path.write_bytes(data)
    return path, digest_of(data)


def test_chunked_upload_streams_the_file_in_ranges(fake: FakeRegistry, tmp_path: Path) -> None:
    path, digest = _blob_file(tmp_path, 10_000)
    registry = fake.client(chunk_size=4096)
    assert registry.push_blob_file("apps/x", path) == "uploaded"
    assert fake.blobs["apps/x"][digest] == path.read_bytes()
    ranges = [h["content-range"] for m, _, h in fake.log if m == "PATCH"]
    assert ranges == ["0-4095", "4096-8191", "8192-9999"]
    assert registry.stats.bytes_uploaded == 10_000
    # Present now: a HEAD, nothing sent.
    assert registry.push_blob_file("apps/x", path) == "present"
    assert registry.stats.bytes_uploaded == 10_000


def test_mount_from_another_repository_and_fallback_to_upload(fake: FakeRegistry,
                                                              tmp_path: Path) -> None:
    path, digest = _blob_file(tmp_path, 1000)
    fake.put_blob("base/serve", path.read_bytes())
    registry = fake.client()
    assert registry.push_blob_file("apps/a", path, mount_from=("base/serve",)) == "mounted"
    assert registry.stats.bytes_uploaded == 0
    fake.allow_mount = False
    assert registry.push_blob_file("apps/b", path, mount_from=("base/serve",)) == "uploaded"
    assert fake.blobs["apps/b"][digest] == path.read_bytes()


def test_basic_auth_on_challenge(fake: FakeRegistry) -> None:
    fake.auth = "basic"
    registry = fake.client(credentials=Credentials("alice", "secret"))
    digest = registry.push_blob("apps/x", b"config")
    assert fake.blobs["apps/x"][digest] == b"config"
    with pytest.raises(RegistryError) as caught:
        fake.client().push_blob("apps/x", b"other")
    assert caught.value.reason == "Unauthorized" and "credentials" in str(caught.value)


def test_bearer_token_challenge_scopes_and_cache(fake: FakeRegistry) -> None:
    fake.auth = "bearer"
    fake.put_blob("base/serve", b"layer")
    registry = fake.client(credentials=Credentials("alice", "secret"))
    registry.push_blob("apps/x", b"config")
    assert registry.mount_blob("apps/x", digest_of(b"layer"), "base/serve") is None
    assert fake.tokens_issued == [
        ["repository:apps/x:pull"], ["repository:apps/x:pull,push"],
        ["repository:apps/x:pull,push", "repository:base/serve:pull"]]
    registry.push_blob("apps/x", b"config2")  # cached tokens: no new ones
    assert len(fake.tokens_issued) == 3
    with pytest.raises(RegistryError) as caught:
        fake.client(credentials=Credentials("alice", "wrong")).push_blob("apps/x", b"c")
    assert caught.value.reason == "Unauthorized"


def test_transient_failures_are_retried(fake: FakeRegistry, tmp_path: Path) -> None:
    failures = {"PATCH": 0, "HEAD": 0}

    def flaky(request: httpx.Request) -> httpx.Response | None:
        if request.method == "PATCH" and failures["PATCH"] < 2:
            failures["PATCH"] += 1
            return httpx.Response(503, text="storage hiccup")
        if request.method == "HEAD" and failures["HEAD"] < 1:
            failures["HEAD"] += 1
            raise httpx.ConnectError("refused", request=request)
        return None

    fake.fail.append(flaky)
    slept: list[float] = []
    registry = fake.client(sleep=slept.append)
    path, digest = _blob_file(tmp_path, 5000)
    assert registry.push_blob_file("apps/x", path) == "uploaded"
    assert fake.blobs["apps/x"][digest] == path.read_bytes()
    assert registry.stats.retries >= 3 and len(slept) >= 3
    assert not fake.uploads or all(len(b) == 0 for b in fake.uploads.values())


def test_retry_after_is_honoured(fake: FakeRegistry) -> None:
    answers = iter([httpx.Response(429, headers={"Retry-After": "7"})])
    fake.fail.append(lambda request: next(answers, None))
    slept: list[float] = []
    fake.client(sleep=slept.append).blob_exists("apps/x", "sha256:" + "0" * 64)
    assert slept == [7.0]


def test_an_outage_that_lasts_gives_a_clear_temporary_error(fake: FakeRegistry,
                                                             tmp_path: Path) -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    fake.fail.append(down)
    path, _ = _blob_file(tmp_path, 100)
    with pytest.raises(RegistryError) as caught:
        fake.client(retries=2).push_blob_file("apps/x", path)
    error = caught.value
    assert error.temporary and error.reason == "RegistryUnavailable"
    assert f"registry {HOST} unavailable after 3 attempts" in str(error)
    # It comes back: the same client goes on.
    fake.fail.clear()
    assert fake.client().push_blob_file("apps/x", path) == "uploaded"


def test_permanent_refusals_are_not_retried(fake: FakeRegistry) -> None:
    fake.fail.append(lambda request: httpx.Response(403, json={"errors": [
        {"code": "DENIED", "message": "push to apps/x denied"}]}))
    slept: list[float] = []
    with pytest.raises(RegistryError) as caught:
        fake.client(sleep=slept.append).push_blob("apps/x", b"c")
    assert not caught.value.temporary and caught.value.reason == "Forbidden"
    assert "denied" in str(caught.value) and slept == []


def test_manifests_keep_their_bytes_and_media_type(fake: FakeRegistry) -> None:
    registry = fake.client()
    registry.push_blob("apps/x", b"{}")
    raw = json.dumps({"schemaVersion": 2, "mediaType":
                      "application/vnd.docker.distribution.manifest.v2+json",
                      "config": {"digest": digest_of(b"{}"), "size": 2,
                                 "mediaType": "application/vnd.docker.container.image.v1+json"},
                      "layers": []}, indent=7).encode()
    digest = registry.put_manifest("apps/x", "t", raw,
                                   "application/vnd.docker.distribution.manifest.v2+json")
    found = registry.get_manifest("apps/x", "t")
    assert (found.raw, found.digest) == (raw, digest)
    assert found.media_type == "application/vnd.docker.distribution.manifest.v2+json"
    before = registry.stats.bytes_uploaded
    registry.put_manifest("apps/x", "t", raw, found.media_type)  # same bytes: skipped
    assert registry.stats.bytes_uploaded == before and registry.stats.manifests_skipped == 1
    assert registry.pull_manifest("apps/x", digest)[1] == digest


def test_downloads_are_verified(fake: FakeRegistry) -> None:
    digest = fake.put_blob("apps/x", b"payload")
    out = io.BytesIO()
    assert fake.client().download_blob("apps/x", digest, out) == 7 and out.getvalue() == b"payload"
    fake.blobs["apps/x"][digest] = b"tampered"
    with pytest.raises(RegistryError, match="does not match"):
        fake.client().download_blob("apps/x", digest, io.BytesIO())
    with pytest.raises(RegistryError, match="does not match"):
        fake.client().pull_blob("apps/x", digest)


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:5000/apps/digits:v1", Reference("127.0.0.1:5000", "apps/digits", "v1")),
    ("registry.example/a/b/c", Reference("registry.example", "a/b/c")),
    ("localhost/x@sha256:" + "a" * 64, Reference("localhost", "x", None, "sha256:" + "a" * 64)),
    ("r.io:443/x:t@sha256:" + "b" * 64, Reference("r.io:443", "x", "t", "sha256:" + "b" * 64)),
])
def test_references(text: str, expected: Reference) -> None:
    assert Reference.parse(text) == expected
    assert str(Reference.parse(text)) == text


@pytest.mark.parametrize("text", ["apps/digits:v1", "r.io/Apps", "r.io/x:bad tag",
                                  "r.io/x@sha256:short"])
def test_bad_references(text: str) -> None:
    with pytest.raises(ValueError):
        Reference.parse(text)


def test_challenge_parsing() -> None:
    scheme, params = _challenge('Bearer realm="https://auth.example/token",service="reg",'
                                'scope="repository:a/b:pull,push"')
    assert scheme == "bearer"
    assert params == {"realm": "https://auth.example/token", "service": "reg",
                      "scope": "repository:a/b:pull,push"}
    assert _challenge('Basic realm="x"') == ("basic", {"realm": "x"})


def test_docker_config_credentials(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {
        "r.example": {"auth": base64.b64encode(b"bob:pw:with:colons").decode()},
        "https://other.example": {"username": "u", "password": "p"}}}))
    assert docker_config_credentials("r.example", config) == Credentials("bob", "pw:with:colons")
    assert docker_config_credentials("other.example", config) == Credentials("u", "p")
    assert docker_config_credentials("none.example", config) is None


def test_ecr_credentials_from_get_authorization_token() -> None:
    class FakeEcr:
        def get_authorization_token(self, registryIds: list[str]) -> dict[str, object]:
            assert registryIds == ["123456789012"]
            token = base64.b64encode(b"AWS:ecr-password").decode()
            return {"authorizationData": [{"authorizationToken": token}]}

    creds = ecr_credentials("123456789012.dkr.ecr.eu-west-1.amazonaws.com", client=FakeEcr())
    assert (creds.username, creds.password) == ("AWS", "ecr-password")
    assert creds.expires_at is not None
    with pytest.raises(ValueError):
        ecr_credentials("registry.example")


def test_a_generated_blob_is_regenerated_for_a_retried_upload(fake: FakeRegistry,
                                                              make_model: Any) -> None:
    """The second chunk fails after the registry read it: the upload starts over, and the
    layer's stream is reopened at the offset asked for, not continued."""
    from kakehashi.bake.layer import model_layer

    layer = model_layer(make_model({"w.bin": bytes(range(256)) * 100}), "m")
    patches = {"n": 0}

    def fail_second_patch(request: httpx.Request) -> httpx.Response | None:
        if request.method == "PATCH":
            patches["n"] += 1
            if patches["n"] == 2:
                request.read()
                return httpx.Response(502, text="bad gateway")
        return None

    fake.fail.append(fail_second_patch)
    registry = fake.client(chunk_size=8192)
    assert registry.push_blob_stream("apps/x", layer.digest, layer.size, layer.open) \
        == "uploaded"
    assert fake.blobs["apps/x"][layer.digest] == b"".join(layer.open())
    assert registry.stats.retries == 1
