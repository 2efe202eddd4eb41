"""The learning cluster as the ModelService loop sees it, in memory: objects, Secrets and the
status and patches it writes. Shared by the reconciler's tests of both delivery modes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kakehashi.control.client import Secret
from kakehashi.control.resources import Resource


class FakeKube:
    def __init__(self, secrets: Mapping[str, Secret]) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.created: list[dict[str, Any]] = []
        self.statuses: list[dict[str, Any]] = []
        self.patches: list[dict[str, Any]] = []
        self.secrets = dict(secrets)

    def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((resource.kind, namespace, name))

    def create(self, resource: Resource, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """As the API server: an existing name is a conflict, answered with what exists."""
        key = (resource.kind, body["metadata"]["namespace"], body["metadata"]["name"])
        if key in self.objects:
            return self.objects[key], False
        obj = {**body, "metadata": {**body["metadata"], "uid": f"uid-{len(self.created)}"}, "status": {}}
        self.objects[key] = obj
        self.created.append(obj)
        return obj, True

    def patch_status(self, resource: Resource, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.statuses.append(patch["status"])
        return {"metadata": {"uid": "ms-uid", "resourceVersion": str(1000 + len(self.statuses))}, "status": patch["status"]}

    def patch(self, resource: Resource, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.patches.append(patch)
        return patch

    def read_secret(self, namespace: str, name: str) -> Secret | None:
        return self.secrets.get(name)

    def delete(self, resource: Resource, namespace: str, name: str) -> bool:
        return self.objects.pop((resource.kind, namespace, name), None) is not None
