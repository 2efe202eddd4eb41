"""A small client for the OCI distribution API (blobs and manifests), the way `crane` talks.

Baking a model into an image is only blob uploads and a manifest PUT, so no Docker engine is
needed. Digests are checked on every pull: a registry that returns other bytes is an error.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
ACCEPT_MANIFESTS = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST))


class RegistryError(RuntimeError):
    """The registry refused a request or returned content that does not match its digest."""


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Registry:
    """One registry, e.g. `Registry("127.0.0.1:5000")` (plain HTTP) or an https URL."""

    def __init__(self, address: str, *, client: httpx.Client | None = None,
                 insecure: bool | None = None) -> None:
        if "://" not in address:
            local = address.startswith(("127.", "localhost", "[::1]"))
            scheme = "http" if (insecure if insecure is not None else local) else "https"
            address = f"{scheme}://{address}"
        self.base = address.rstrip("/")
        self._client = client or httpx.Client(timeout=60.0)

    def _url(self, path: str) -> str:
        return f"{self.base}/v2/{path}"

    def _check(self, response: httpx.Response, what: str) -> httpx.Response:
        if response.status_code >= 400:
            raise RegistryError(f"{what}: HTTP {response.status_code} {response.text[:500]}")
        return response

    def blob_exists(self, repository: str, digest: str) -> bool:
        response = self._client.head(self._url(f"{repository}/blobs/{digest}"))
        return response.status_code == 200

    def push_blob(self, repository: str, data: bytes) -> str:
        """Upload `data` (monolithic POST then PUT); skip it if the registry has it."""
        digest = sha256_digest(data)
        if self.blob_exists(repository, digest):
            return digest
        start = self._check(self._client.post(self._url(f"{repository}/blobs/uploads/")),
                            f"start upload to {repository}")
        location = start.headers["Location"]
        if location.startswith("/"):
            location = self.base + location
        # The upload URL carries the registry's own state in its query: extend it, never
        # replace it (httpx's `params=` would).
        url = httpx.URL(location)
        url = url.copy_with(params=url.params.set("digest", digest))
        self._check(
            self._client.put(url, content=data,
                             headers={"Content-Type": "application/octet-stream"}),
            f"upload blob {digest} to {repository}",
        )
        return digest

    def pull_blob(self, repository: str, digest: str) -> bytes:
        response = self._check(
            self._client.get(self._url(f"{repository}/blobs/{digest}"), follow_redirects=True),
            f"pull blob {digest} from {repository}",
        )
        if sha256_digest(response.content) != digest:
            raise RegistryError(f"blob {digest} from {repository} does not match its digest")
        return response.content

    def push_manifest(self, repository: str, reference: str, manifest: dict[str, Any],
                      media_type: str = OCI_MANIFEST) -> str:
        """PUT a manifest under a tag (or its digest); return the manifest's digest."""
        body = json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()
        digest = sha256_digest(body)
        response = self._check(
            self._client.put(self._url(f"{repository}/manifests/{reference}"), content=body,
                             headers={"Content-Type": media_type}),
            f"push manifest {repository}:{reference}",
        )
        returned = response.headers.get("Docker-Content-Digest", digest)
        if returned != digest:
            raise RegistryError(f"registry stored manifest as {returned}, expected {digest}")
        return digest

    def pull_manifest(self, repository: str, reference: str) -> tuple[dict[str, Any], str]:
        """GET a manifest by tag or digest; return it and its digest (verified)."""
        response = self._check(
            self._client.get(self._url(f"{repository}/manifests/{reference}"),
                             headers={"Accept": ACCEPT_MANIFESTS}),
            f"pull manifest {repository}:{reference}",
        )
        digest = sha256_digest(response.content)
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(f"manifest {reference} does not match its digest")
        manifest: dict[str, Any] = response.json()
        return manifest, digest

    def tags(self, repository: str) -> list[str]:
        response = self._check(self._client.get(self._url(f"{repository}/tags/list")),
                               f"list tags of {repository}")
        tags: list[str] = response.json().get("tags") or []
        return tags
