"""Direct delivery: server-side apply to the production cluster through a kubeconfig Secret.

The production cluster is another API server: owner references cannot reach across, so what
belongs to a service is found by its label, objects it no longer needs (a canary removed, an
autoscaler dropped) are pruned by that label, and the ModelService's finalizer removes the rest
when it is deleted. Status is read back from production, never assumed from what was applied.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from kakehashi.control.client import Kube, api_client
from kakehashi.control.errors import PermanentError
from kakehashi.control.resources import (
    DEPLOYMENTS,
    HPAS,
    HTTPROUTES,
    PDBS,
    PODS,
    SERVICES,
    Resource,
    of,
)

FIELD_MANAGER: Final = "kakehashi"
# Every kind a service may own on production, in the order they are pruned.
OWNED: Final = (HTTPROUTES, HPAS, PDBS, SERVICES, DEPLOYMENTS)


@dataclass
class ProductionState:
    """What production holds for one service."""

    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)  # by name
    pods: list[dict[str, Any]] = field(default_factory=list)
    served: dict[str, str] = field(default_factory=dict)  # ready pod name -> model digest it reports


class Production:
    """One production cluster, reached through a kubeconfig (blocking: call from a thread)."""

    def __init__(self, kube: Kube, *, owner_label: str, port: int) -> None:
        self.kube = kube
        self.owner_label = owner_label  # the label naming the service an object belongs to
        self.port = port  # where the serving pods answer /ready with the digest they serve

    @classmethod
    def from_kubeconfig(cls, text: str, *, owner_label: str, port: int) -> Production:
        # The client reads kubeconfigs from files; the file lives only while it is parsed.
        with tempfile.NamedTemporaryFile("w", suffix=".kubeconfig", delete=True) as handle:
            handle.write(text)
            handle.flush()
            return cls(Kube(api_client(Path(handle.name))), owner_label=owner_label, port=port)

    def apply(self, objects: list[dict[str, Any]]) -> None:
        for obj in objects:
            resource = of(obj)
            try:
                self.kube.apply(resource, obj, field_manager=FIELD_MANAGER)
            except Exception as error:
                # A cluster without the Gateway API answers 404 for the whole kind: say what
                # is missing rather than "NotFound", which reads like a missing object.
                if resource is HTTPROUTES and getattr(error, "status", None) == 404:
                    raise PermanentError(
                        f"the production cluster has no Gateway API ({resource.kind} "
                        f"{resource.group}/{resource.version} is not served): a canary's traffic "
                        "split needs its CRDs and an implementation such as Traefik installed",
                        reason="GatewayAPIMissing") from error
                raise

    def prune(self, namespace: str, service: str, keep: list[dict[str, Any]]) -> list[str]:
        """Delete what carries the service's label but is not in `keep`; the names deleted."""
        wanted = {(obj["kind"], obj["metadata"]["name"]) for obj in keep}
        deleted = []
        for resource in OWNED:
            for obj in self._owned(resource, namespace, service):
                name = obj["metadata"]["name"]
                if (resource.kind, name) not in wanted:
                    self.kube.delete(resource, namespace, name)
                    deleted.append(f"{resource.kind}/{name}")
        return deleted

    def _owned(self, resource: Resource, namespace: str, service: str) -> list[dict[str, Any]]:
        try:
            return self.kube.list_objects(resource, namespace, f"{self.owner_label}={service}")
        except Exception as error:
            # No Gateway API installed: nothing of that kind can exist.
            if getattr(error, "status", None) == 404:
                return []
            raise

    def read(self, namespace: str, service: str) -> ProductionState:
        state = ProductionState()
        for deployment in self._owned(DEPLOYMENTS, namespace, service):
            state.deployments[deployment["metadata"]["name"]] = deployment
        state.pods = self.kube.list_objects(PODS, namespace, f"{self.owner_label}={service}")
        for pod in state.pods:
            if _ready(pod) and not pod["metadata"].get("deletionTimestamp"):
                digest = self._served_digest(namespace, pod["metadata"]["name"])
                if digest:
                    state.served[pod["metadata"]["name"]] = digest
        return state

    def _served_digest(self, namespace: str, pod: str) -> str | None:
        try:
            answer = json.loads(self.kube.pod_proxy_get(namespace, pod, self.port, "/ready"))
        except Exception:
            return None  # not answering right now: it serves nothing we can vouch for
        digest = answer.get("digest") if isinstance(answer, dict) else None
        return str(digest) if digest else None

    def delete_all(self, namespace: str, service: str) -> list[str]:
        return self.prune(namespace, service, [])


def _ready(pod: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in (pod.get("status") or {}).get("conditions") or []
    )

