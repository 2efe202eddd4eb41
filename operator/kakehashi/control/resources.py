"""Which API resource an object is: group, version, plural, kind. Pure data, no client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import quote


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        path = f"{base}/namespaces/{quote(namespace, safe='')}/{self.plural}"
        if name is not None:
            path += f"/{quote(name, safe='')}"
        if subresource is not None:
            path += f"/{subresource}"
        return path


PODS: Final = Resource("", "v1", "pods", "Pod")
SECRETS: Final = Resource("", "v1", "secrets", "Secret")
JOBS: Final = Resource("batch", "v1", "jobs", "Job")
TFJOBS: Final = Resource("kubeflow.org", "v1", "tfjobs", "TFJob")
DEPLOYMENTS: Final = Resource("apps", "v1", "deployments", "Deployment")
SERVICES: Final = Resource("", "v1", "services", "Service")
HPAS: Final = Resource("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler")
PDBS: Final = Resource("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget")
HTTPROUTES: Final = Resource("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute")
LEASES: Final = Resource("coordination.k8s.io", "v1", "leases", "Lease")

BY_KIND: Final = {r.kind: r for r in (PODS, SECRETS, JOBS, TFJOBS, DEPLOYMENTS, SERVICES, HPAS, PDBS, HTTPROUTES)}


def of(obj: dict[str, object]) -> Resource:
    """The resource an object (with apiVersion and kind) belongs to."""
    return BY_KIND[str(obj["kind"])]
