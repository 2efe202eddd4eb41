"""Append one layer to a base image through the distribution API, as `crane append` does.

The base manifest is read as it is (Docker v2 schema 2 or OCI; an index or manifest list is
followed to each platform), each platform's image config gets the layer's diff_id, a history
entry, labels and environment, and the new config, the layer and the manifests (then the
index) are pushed with the base's own media types. Base layers the target repository lacks
are mounted from the base's repository (same registry) or copied (another registry). Nothing
here reads a clock or a random source: the same layer on the same base with the same labels
always gives the same image digest, and a second push of it sends nothing.

The pure functions (`append_to_config`, `append_to_manifest`, `rewrite_index`) hold the whole
rewriting; `append_layer` only moves bytes.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from kakehashi.bake.layer import Layer
from kakehashi.bake.mediatypes import (
    DOCKER_CONFIG,
    DOCKER_FOREIGN_LAYER,
    DOCKER_MANIFEST,
    IMAGE_MANIFESTS,
    INDEXES,
    OCI_CONFIG,
    OCI_MANIFEST,
)
from kakehashi.bake.registry import Manifest, Reference, Registry, RegistryError, sha256_digest

Progress = Callable[[str], None]

# BuildKit's provenance/SBOM manifests sit in an index beside the images they describe, and
# name them by digest: after the append they would describe an image that no longer is.
_ATTESTATION: Final = "attestation-manifest"
_NONDISTRIBUTABLE: Final = ("nondistributable", "foreign")


def _dumps(value: Any) -> bytes:
    """Compact JSON, keys in the order read: the same input always gives the same bytes."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def append_to_config(config: Mapping[str, Any], layer_diff_id: str, *,
                     labels: Mapping[str, str], env: Mapping[str, str],
                     created_by: str, comment: str | None = None,
                     created: str | None = None) -> dict[str, Any]:
    """A copy of an image config with one more layer: diff_id, history entry (only when the
    base keeps a history, so entries stay aligned with layers), labels merged, and `env`
    entries set (replacing the base's value of the same variable). `created` (RFC 3339), when
    given, dates the image and the history entry (the model's own time, never the clock's, so a
    re-bake is identical); otherwise the base's date is kept."""
    new: dict[str, Any] = json.loads(json.dumps(config))
    rootfs = new.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    rootfs.setdefault("type", "layers")
    rootfs["diff_ids"] = [*rootfs.get("diff_ids", []), layer_diff_id]
    if isinstance(new.get("history"), list):
        entry: dict[str, Any] = {"created": created} if created else {}
        entry["created_by"] = created_by
        if comment:
            entry["comment"] = comment
        new["history"] = [*new["history"], entry]
    if created:
        new["created"] = created
    runtime = new.get("config")
    if not isinstance(runtime, dict):
        runtime = new["config"] = {}
    if labels:
        runtime["Labels"] = {**(runtime.get("Labels") or {}), **labels}
    if env:
        kept = [item for item in (runtime.get("Env") or [])
                if item.partition("=")[0] not in env]
        runtime["Env"] = [*kept, *(f"{key}={value}" for key, value in env.items())]
    return new


def append_to_manifest(manifest: Mapping[str, Any], media_type: str, *, config: bytes,
                       layer: Layer, annotations: Mapping[str, str] | None = None
                       ) -> dict[str, Any]:
    """A copy of an image manifest pointing at `config` and ending with `layer`, in the
    manifest's own media type (a Docker manifest stays Docker, an OCI one stays OCI).
    `annotations` are added to an OCI manifest only: Docker's schema has none."""
    if media_type not in IMAGE_MANIFESTS:
        raise ValueError(f"not an image manifest: {media_type}")
    new: dict[str, Any] = json.loads(json.dumps(manifest))
    config_type = new.get("config", {}).get("mediaType") or (
        DOCKER_CONFIG if media_type == DOCKER_MANIFEST else OCI_CONFIG)
    new["config"] = {**new.get("config", {}), "mediaType": config_type,
                     "digest": sha256_digest(config), "size": len(config)}
    new["layers"] = [*new.get("layers", []), {
        "mediaType": layer.media_type(media_type), "digest": layer.digest, "size": layer.size}]
    if annotations and media_type == OCI_MANIFEST:
        new["annotations"] = {**(new.get("annotations") or {}), **annotations}
    return new


def is_attestation(descriptor: Mapping[str, Any]) -> bool:
    annotations = descriptor.get("annotations") or {}
    return bool(annotations.get("vnd.docker.reference.type") == _ATTESTATION)


def rewrite_index(index: Mapping[str, Any], replaced: Mapping[str, tuple[str, int]]
                  ) -> dict[str, Any]:
    """A copy of an index whose image entries point at their appended manifests (`replaced`:
    old digest -> (new digest, size)); attestation entries are dropped (they describe the old
    manifests). Platform, media type and annotations of each entry are kept."""
    new: dict[str, Any] = json.loads(json.dumps(index))
    entries = []
    for descriptor in new.get("manifests", []):
        if is_attestation(descriptor):
            continue
        if descriptor["digest"] in replaced:
            digest, size = replaced[descriptor["digest"]]
            descriptor = {**descriptor, "digest": digest, "size": size}
        entries.append(descriptor)
    new["manifests"] = entries
    return new


def _platform(descriptor: Mapping[str, Any]) -> str:
    platform = descriptor.get("platform") or {}
    parts = [platform.get("os", "?"), platform.get("architecture", "?")]
    if platform.get("variant"):
        parts.append(platform["variant"])
    return "/".join(parts)


@dataclass(frozen=True)
class PlatformImage:
    platform: str
    digest: str
    media_type: str
    config_digest: str


@dataclass(frozen=True)
class AppendResult:
    reference: Reference
    """Where the image was pushed, by tag and digest."""
    digest: str
    media_type: str
    base_digest: str
    platforms: tuple[PlatformImage, ...]
    layers_copied: int = 0
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def image(self) -> str:
        """`registry/repository@sha256:...`: what a Deployment pins."""
        return f"{self.reference.registry}/{self.reference.repository}@{self.digest}"


class Appender:
    """Appends `layer` to `base` and pushes the result as `target` (a tag reference)."""

    def __init__(self, source: Registry, target: Registry, base: Reference,
                 target_ref: Reference, layer: Layer, *, labels: Mapping[str, str],
                 env: Mapping[str, str], created_by: str, comment: str | None = None,
                 created: str | None = None, progress: Progress | None = None) -> None:
        if not target_ref.tag:
            raise ValueError(f"the target {target_ref} needs a tag")
        self.source, self.target = source, target
        self.base, self.target_ref, self.layer = base, target_ref, layer
        self.labels, self.env = dict(labels), dict(env)
        self.created_by, self.comment, self.created = created_by, comment, created
        self.say = progress or (lambda _: None)
        self.same_registry = source.host == target.host
        self.copied = 0
        self._ensured: set[str] = set()

    def run(self) -> AppendResult:
        base = self.source.get_manifest(self.base.repository, self.base.reference)
        self.say(f"Base {self.base}: {base.media_type} {base.digest[:19]}…")
        repository, tag = self.target_ref.repository, self.target_ref.tag
        assert tag is not None
        if base.media_type in INDEXES:
            index = base.json()
            replaced: dict[str, tuple[str, int]] = {}
            platforms = []
            for descriptor in index.get("manifests", []):
                if is_attestation(descriptor):
                    continue
                if descriptor.get("mediaType") not in IMAGE_MANIFESTS:
                    raise RegistryError(f"{self.base} lists a {descriptor.get('mediaType')} "
                                        "entry: only image manifests can take a layer",
                                        reason="UnsupportedBase")
                child = self.source.get_manifest(self.base.repository, descriptor["digest"])
                image, raw = self._append(child, _platform(descriptor))
                self.target.put_manifest(repository, image.digest, raw, image.media_type)
                replaced[descriptor["digest"]] = (image.digest, len(raw))
                platforms.append(image)
            raw_index = _dumps(rewrite_index(index, replaced))
            digest = self.target.put_manifest(repository, tag, raw_index, base.media_type)
            return self._result(digest, base, tuple(platforms))
        if base.media_type not in IMAGE_MANIFESTS:
            raise RegistryError(f"{self.base} is a {base.media_type or 'manifest of no type'}:"
                                " not an image this can append to (a Docker schema 1 "
                                "manifest must be re-pushed as schema 2 first)",
                                reason="UnsupportedBase")
        image, raw = self._append(base, None)
        digest = self.target.put_manifest(repository, tag, raw, image.media_type)
        return self._result(digest, base, (image,))

    def _result(self, digest: str, base: Manifest, platforms: tuple[PlatformImage, ...]
                ) -> AppendResult:
        ref = Reference(self.target_ref.registry, self.target_ref.repository,
                        self.target_ref.tag, digest)
        return AppendResult(reference=ref, digest=digest, media_type=base.media_type,
                            base_digest=base.digest, platforms=platforms,
                            layers_copied=self.copied)

    def _append(self, manifest: Manifest, platform: str | None) -> tuple[PlatformImage, bytes]:
        body = manifest.json()
        config_digest = body["config"]["digest"]
        config = json.loads(self.source.pull_blob(self.base.repository, config_digest))
        name = platform or f"{config.get('os', '?')}/{config.get('architecture', '?')}"
        for descriptor in body.get("layers", []):
            self._ensure_blob(descriptor)
        new_config = _dumps(append_to_config(config, self.layer.diff_id, labels=self.labels,
                                             env=self.env, created_by=self.created_by,
                                             comment=self.comment, created=self.created))
        repository = self.target_ref.repository
        self.target.push_blob(repository, new_config)
        if self.layer.digest not in self._ensured:
            outcome = self.target.push_blob_stream(repository, self.layer.digest,
                                                   self.layer.size, self.layer.open,
                                                   progress=self.say)
            self._ensured.add(self.layer.digest)
            self.say(f"Model layer {self.layer.digest[:19]}… ({self.layer.size / 1e6:.1f} MB):"
                     f" {outcome}")
        annotations = {"org.opencontainers.image.base.name": str(Reference(
            self.base.registry, self.base.repository, self.base.tag)),
            "org.opencontainers.image.base.digest": manifest.digest}
        new = append_to_manifest(body, manifest.media_type, config=new_config,
                                 layer=self.layer, annotations=annotations)
        raw = _dumps(new)
        image = PlatformImage(platform=name, digest=sha256_digest(raw),
                              media_type=manifest.media_type,
                              config_digest=sha256_digest(new_config))
        return image, raw

    def _ensure_blob(self, descriptor: Mapping[str, Any]) -> None:
        """Make the target repository hold a base layer: present, mounted, or copied."""
        digest, media_type = descriptor["digest"], descriptor.get("mediaType", "")
        if digest in self._ensured:
            return
        self._ensured.add(digest)
        if descriptor.get("urls") or media_type == DOCKER_FOREIGN_LAYER or any(
                word in media_type for word in _NONDISTRIBUTABLE):
            return  # pulled from its URLs, never pushed
        repository = self.target_ref.repository
        if self.same_registry and self.base.repository == repository:
            return
        if self.target.blob_exists(repository, digest):
            self.target.stats.add("blobs_skipped")
            return
        if self.same_registry:
            location = self.target.mount_blob(repository, digest, self.base.repository)
            if location is None:
                return
        # Another registry (or one that refused the mount): copy through a temporary file.
        with tempfile.NamedTemporaryFile(prefix="blob-") as spool:
            size = self.source.download_blob(self.base.repository, digest, spool)
            spool.flush()
            self.target.push_blob_file(repository, Path(spool.name), digest, size,
                                       progress=self.say)
        self.copied += 1


def append_layer(source: Registry, target: Registry, base: Reference, target_ref: Reference,
                 layer: Layer, *, labels: Mapping[str, str], env: Mapping[str, str],
                 created_by: str, comment: str | None = None, created: str | None = None,
                 progress: Progress | None = None) -> AppendResult:
    """Append `layer` to `base` (on `source`) and push it as `target_ref` (on `target`)."""
    return Appender(source, target, base, target_ref, layer, labels=labels, env=env,
                    created_by=created_by, comment=comment, created=created,
                    progress=progress).run()
