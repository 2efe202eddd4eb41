"""Fixtures for the bake tests: the in-memory registry (bake_fakes.py), models, bases."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from bake_fakes import FakeRegistry, digest_of  # type: ignore[import-not-found]


@pytest.fixture
def fake() -> FakeRegistry:
    return FakeRegistry()


ModelMaker = Callable[..., Path]


@pytest.fixture
def make_model(tmp_path: Path) -> ModelMaker:
    """`make_model({"a/b.bin": b"..."}, name="m1")`: files under tmp_path/name."""

    def make(files: dict[str, bytes], name: str = "model") -> Path:
        root = tmp_path / name
        for relative, data in files.items():
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return root

    return make


BaseMaker = Callable[..., str]


@pytest.fixture
def make_base(fake: FakeRegistry) -> BaseMaker:
    """Push a small base image into the fake: kind "docker", "oci", or "index" (an OCI index
    of linux/amd64 and linux/arm64 plus an attestation manifest); returns its digest."""
    from kakehashi.bake import mediatypes as mt

    def image(repository: str, manifest_type: str, arch: str) -> tuple[bytes, str]:
        layer = f"base layer for {arch}".encode()
        layer_digest = fake.put_blob(repository, layer)
        config = json.dumps({
            "architecture": arch, "os": "linux", "created": "2026-01-01T00:00:00Z",
            "config": {"Env": ["PATH=/usr/bin", "KAKEHASHI_MODEL_NAME=model"],
                       "Labels": {"base": "yes"}, "User": "10001:10001"},
            "rootfs": {"type": "layers", "diff_ids": [digest_of(layer)]},
            "history": [{"created_by": "base"}],
        }).encode()
        config_digest = fake.put_blob(repository, config)
        docker = manifest_type == mt.DOCKER_MANIFEST
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": manifest_type,
            "config": {"mediaType": mt.DOCKER_CONFIG if docker else mt.OCI_CONFIG,
                       "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": mt.DOCKER_LAYER_GZIP if docker else mt.OCI_LAYER_GZIP,
                        "digest": layer_digest, "size": len(layer)}],
        }, indent=3).encode()
        return manifest, fake.put_manifest(repository, digest_of(manifest), manifest,
                                           manifest_type)

    def make(repository: str = "base/serve", tag: str = "v1", kind: str = "docker") -> str:
        if kind == "docker":
            raw, digest = image(repository, mt.DOCKER_MANIFEST, "amd64")
            return fake.put_manifest(repository, tag, raw, mt.DOCKER_MANIFEST)
        if kind == "oci":
            raw, digest = image(repository, mt.OCI_MANIFEST, "amd64")
            return fake.put_manifest(repository, tag, raw, mt.OCI_MANIFEST)
        entries = []
        for arch in ("amd64", "arm64"):
            raw, digest = image(repository, mt.OCI_MANIFEST, arch)
            entries.append({"mediaType": mt.OCI_MANIFEST, "digest": digest, "size": len(raw),
                            "platform": {"os": "linux", "architecture": arch}})
        attestation, att_digest = image(repository, mt.OCI_MANIFEST, "unknown")
        entries.append({"mediaType": mt.OCI_MANIFEST, "digest": att_digest,
                        "size": len(attestation),
                        "platform": {"os": "unknown", "architecture": "unknown"},
                        "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                                        "vnd.docker.reference.digest": entries[0]["digest"]}})
        index = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                            "manifests": entries}).encode()
        return fake.put_manifest(repository, tag, index, mt.OCI_INDEX)

    return make
