"""The OCI distribution client, under the name its first users import it by.

The client itself lives in `kakehashi.bake.registry` (auth, retries, chunked uploads from files,
mounts); this module keeps `Registry`, `RegistryError`, `sha256_digest` and the media types
where `kakehashi.dev.images`, `kakehashi.demo` and the dev-environment tests expect them.
"""

from __future__ import annotations

from kakehashi.bake.mediatypes import (
    ACCEPT_MANIFESTS,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
)
from kakehashi.bake.registry import Registry, RegistryError, sha256_digest

__all__ = [
    "ACCEPT_MANIFESTS", "DOCKER_MANIFEST", "OCI_CONFIG", "OCI_INDEX", "OCI_LAYER_GZIP",
    "OCI_MANIFEST", "Registry", "RegistryError", "sha256_digest",
]
