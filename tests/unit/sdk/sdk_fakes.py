"""An in-memory stand-in for the control layer's Kube, enough for the SDK's create/get/list/patch."""

from __future__ import annotations

import copy
from typing import Any

from kakehashi.control.resources import Resource


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.creates = 0
        self.patches: list[dict[str, Any]] = []

    def create(self, resource: Resource, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        key = (resource.plural, body["metadata"]["namespace"], body["metadata"]["name"])
        if key in self.objects:
            return copy.deepcopy(self.objects[key]), False
        self.creates += 1
        stored = copy.deepcopy(body)
        stored["metadata"].update({"uid": f"uid-{self.creates}", "generation": 1,
                                   "creationTimestamp": "2026-11-26T10:00:00Z"})
        self.objects[key] = stored
        return copy.deepcopy(stored), True

    def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.objects.get((resource.plural, namespace, name))
        return copy.deepcopy(found) if found else None

    def list_objects(self, resource: Resource, namespace: str, label_selector: str = "") -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for (plural, ns, _), o in self.objects.items()
                if plural == resource.plural and ns == namespace]

    def log_tail(self, namespace: str, pod: str, container: str, lines: int) -> str:
        return ""

    def patch(self, resource: Resource, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any] | None:
        self.patches.append(patch)
        found = self.objects.get((resource.plural, namespace, name))
        if found is None:
            return None
        _merge(found, patch)
        found["metadata"]["generation"] += 1
        return copy.deepcopy(found)


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """RFC 7386 JSON merge patch."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


class FakeConnection:
    def __init__(self, namespace: str = "team") -> None:
        self.kube = FakeKube()
        self.namespace = namespace
        self.api = None
        self.via = "kakehashi sdk"

    def identity(self) -> str:
        return f"ada via {self.via}"
