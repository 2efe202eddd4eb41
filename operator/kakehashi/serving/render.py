"""Pure renderers: a ModelService and a baked image in, the production cluster's objects out.

Deployment (image pinned by digest, probes, non-root, read-only root filesystem), Service,
HorizontalPodAutoscaler, PodDisruptionBudget, and for a canary a second Deployment and Service
with a Gateway API HTTPRoute that splits the traffic by weight. No API calls here: the same
objects are applied directly (server-side apply) or committed to the GitOps repository.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

from kakehashi import GROUP
from kakehashi.api.modelservice import ModelService

LABEL_SERVICE: Final = f"{GROUP}/modelservice"
LABEL_TRACK: Final = f"{GROUP}/track"
ANNOTATION_MODEL_DIGEST: Final = f"{GROUP}/model-digest"
ANNOTATION_IMAGE: Final = f"{GROUP}/image"
CONTAINER: Final = "server"
PORT: Final = 8080
SERVICE_PORT: Final = 80
# Where the bake step puts the model inside the image, and what the server loads.
MODEL_DIR_IN_IMAGE: Final = "/models/model"
SERVING_UID: Final = 10001
# The shared Gateway every service's HTTPRoute attaches to (it lets routes in from every
# namespace): the platform owns it, each team's namespace owns its routes.
GATEWAY_NAME: Final = "kakehashi"
GATEWAY_NAMESPACE: Final = "kakehashi-gateway"

Track = Literal["stable", "canary"]


@dataclass(frozen=True)
class Release:
    """What one track serves: the baked image (repository@sha256:...) and its model digest."""

    image: str
    model_digest: str


def _labels(ms: ModelService, track: Track | None = None) -> dict[str, str]:
    labels = {
        "app.kubernetes.io/name": "kakehashi-inference",
        "app.kubernetes.io/instance": ms.name,
        "app.kubernetes.io/component": "inference",
        "app.kubernetes.io/part-of": "kakehashi",
        "app.kubernetes.io/managed-by": "kakehashi-operator",
        LABEL_SERVICE: ms.name,
    }
    if track is not None:
        labels[LABEL_TRACK] = track
    return labels


def _selector(ms: ModelService, track: Track) -> dict[str, str]:
    return {LABEL_SERVICE: ms.name, LABEL_TRACK: track}


def object_name(ms: ModelService, track: Track) -> str:
    return ms.name if track == "stable" else f"{ms.name}-canary"


def _meta(ms: ModelService, name: str, namespace: str, track: Track | None = None) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": _labels(ms, track)}


def _quantity(value: int | str | None) -> str | None:
    return None if value is None else str(value)


def deployment(ms: ModelService, release: Release, namespace: str, track: Track = "stable") -> dict[str, Any]:
    spec = ms.spec
    resources: dict[str, str] = {}
    if spec.resources is not None:
        for key, value in (("cpu", spec.resources.cpu), ("memory", spec.resources.memory)):
            if (quantity := _quantity(value)) is not None:
                resources[key] = quantity
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": release.image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "env": [
            {"name": "KAKEHASHI_MODEL_NAME", "value": ms.name},
            {"name": "KAKEHASHI_MODEL_DIR", "value": MODEL_DIR_IN_IMAGE},
            {"name": "KAKEHASHI_PORT", "value": str(PORT)},
            {"name": "KAKEHASHI_MAX_BATCH_SIZE", "value": str(spec.batching.max_batch_size)},
            {"name": "KAKEHASHI_MAX_WAIT_MS", "value": f"{spec.batching.max_latency_ms:g}"},
        ],
        # Ready only once the model is loaded, verified against its digest and warmed up.
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 2, "failureThreshold": 2},
        "livenessProbe": {
            "httpGet": {"path": "/health", "port": "http"},
            "initialDelaySeconds": 10, "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3,
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": SERVING_UID,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        # A server that dies at start leaves its log's tail in the pod status, and from there
        # in the ModelService's Degraded message: no kubectl logs needed to see why.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if resources:
        container["resources"] = {"requests": dict(resources), "limits": dict(resources)}
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}],
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations]
    replicas = spec.autoscaling.min if spec.autoscaling is not None else spec.replicas
    if track == "canary":
        replicas = 1
    body: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            **_meta(ms, object_name(ms, track), namespace, track),
            "annotations": {ANNOTATION_MODEL_DIGEST: release.model_digest, ANNOTATION_IMAGE: release.image},
        },
        "spec": {
            "selector": {"matchLabels": _selector(ms, track)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "100%"}},
            "revisionHistoryLimit": 5,
            "template": {
                "metadata": {
                    "labels": _labels(ms, track),
                    "annotations": {ANNOTATION_MODEL_DIGEST: release.model_digest},
                },
                "spec": pod_spec,
            },
        },
    }
    # With an autoscaler the HPA owns the replica count; applying one would fight it.
    if spec.autoscaling is None or track == "canary":
        body["spec"]["replicas"] = replicas
    return body


def service(ms: ModelService, namespace: str, track: Track = "stable") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(ms, object_name(ms, track), namespace, track),
        "spec": {
            "type": "ClusterIP",
            "selector": _selector(ms, track),
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def autoscaler(ms: ModelService, namespace: str) -> dict[str, Any] | None:
    scaling = ms.spec.autoscaling
    if scaling is None:
        return None
    if scaling.target_cpu is not None:
        metric: dict[str, Any] = {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": scaling.target_cpu}},
        }
    else:
        metric = {
            "type": "Pods",
            "pods": {
                "metric": {"name": "kakehashi_inference_in_flight"},
                "target": {"type": "AverageValue", "averageValue": str(scaling.target_in_flight)},
            },
        }
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(ms, ms.name, namespace),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": ms.name},
            "minReplicas": scaling.min,
            "maxReplicas": scaling.max,
            "metrics": [metric],
        },
    }


def disruption_budget(ms: ModelService, namespace: str) -> dict[str, Any] | None:
    most = ms.spec.autoscaling.max if ms.spec.autoscaling is not None else ms.spec.replicas
    if most < 2:
        return None  # one pod: a PDB would block every node drain forever
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(ms, ms.name, namespace),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _selector(ms, "stable")}},
    }


def route(ms: ModelService, namespace: str) -> dict[str, Any] | None:
    """The Gateway API HTTPRoute splitting traffic between the stable and canary Services."""
    canary = ms.spec.canary
    if canary is None:
        return None
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": _meta(ms, ms.name, namespace),
        "spec": {
            "parentRefs": [{"name": GATEWAY_NAME, "namespace": GATEWAY_NAMESPACE}],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": f"/{ms.name}/"}}],
                    "filters": [{"type": "URLRewrite",
                                 "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}],
                    "backendRefs": [
                        {"name": object_name(ms, "stable"), "port": SERVICE_PORT, "weight": 100 - canary.weight},
                        {"name": object_name(ms, "canary"), "port": SERVICE_PORT, "weight": canary.weight},
                    ],
                }
            ],
        },
    }


def render(
    ms: ModelService, stable: Release, namespace: str, canary: Release | None = None
) -> list[dict[str, Any]]:
    """Every object the service needs on the production cluster, in apply order."""
    objects = [deployment(ms, stable, namespace), service(ms, namespace)]
    if ms.spec.canary is not None and canary is not None:
        objects += [deployment(ms, canary, namespace, "canary"), service(ms, namespace, "canary")]
    for optional in (autoscaler(ms, namespace), disruption_budget(ms, namespace)):
        if optional is not None:
            objects.append(optional)
    # The route last: on a cluster without the Gateway API it is refused, and everything the
    # stable track needs is in place by then.
    if ms.spec.canary is not None and canary is not None and (http_route := route(ms, namespace)) is not None:
        objects.append(http_route)
    return objects
