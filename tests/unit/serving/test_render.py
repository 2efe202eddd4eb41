"""What a ModelService renders to on the production cluster: what an SRE would check first."""

from __future__ import annotations

from typing import Any

from kakehashi.api.modelservice import ModelService
from kakehashi.serving import render
from kakehashi.serving.render import Release

DIGEST = "sha256:" + "1" * 64
IMAGE = "registry.local/models/digits@sha256:" + "a" * 64
CANARY_IMAGE = "registry.local/models/digits@sha256:" + "b" * 64


def service(**spec: Any) -> ModelService:
    return ModelService.model_validate({
        "metadata": {"name": "digits", "namespace": "team", "uid": "ms-uid", "generation": 1},
        "spec": {"model": {"trainingRun": "digits"}, "registry": "registry.local/models",
                 "delivery": {"mode": "direct", "direct": {"kubeconfigSecret": {"name": "p"}, "namespace": "prod"}},
                 **spec},
    })


def by_kind(objects: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        out.setdefault(obj["kind"], []).append(obj)
    return out


def test_the_deployment_pins_the_image_by_digest_and_is_locked_down() -> None:
    ms = service(replicas=2, resources={"cpu": 2, "memory": "1Gi"}, batching={"maxBatchSize": 8, "maxLatencyMs": 2},
                 nodeSelector={"kakehashi.dev/node": "real"},
                 tolerations=[{"key": "kakehashi.dev/node", "operator": "Exists", "effect": "NoSchedule"}])
    objects = by_kind(render.render(ms, Release(IMAGE, DIGEST), "prod"))
    assert sorted(objects) == ["Deployment", "PodDisruptionBudget", "Service"]
    deployment = objects["Deployment"][0]
    assert deployment["metadata"]["namespace"] == "prod" and deployment["spec"]["replicas"] == 2
    assert deployment["metadata"]["annotations"][render.ANNOTATION_MODEL_DIGEST] == DIGEST
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == IMAGE and "@sha256:" in container["image"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    security = container["securityContext"]
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "1Gi"}}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["KAKEHASHI_MAX_BATCH_SIZE"] == "8" and env["KAKEHASHI_MAX_WAIT_MS"] == "2"
    assert env["KAKEHASHI_MODEL_DIR"] == render.MODEL_DIR_IN_IMAGE
    assert pod["nodeSelector"] == {"kakehashi.dev/node": "real"}
    assert pod["tolerations"][0]["key"] == "kakehashi.dev/node"
    assert deployment["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kakehashi-operator"
    svc = objects["Service"][0]
    assert svc["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert objects["PodDisruptionBudget"][0]["spec"]["maxUnavailable"] == 1


def test_one_replica_gets_no_disruption_budget_that_would_block_drains() -> None:
    kinds = by_kind(render.render(service(replicas=1), Release(IMAGE, DIGEST), "prod"))
    assert "PodDisruptionBudget" not in kinds


def test_autoscaling_owns_the_replica_count() -> None:
    ms = service(autoscaling={"min": 2, "max": 6, "targetInFlight": 8})
    objects = by_kind(render.render(ms, Release(IMAGE, DIGEST), "prod"))
    assert "replicas" not in objects["Deployment"][0]["spec"]
    hpa = objects["HorizontalPodAutoscaler"][0]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 6)
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == "kakehashi_inference_in_flight"
    cpu = by_kind(render.render(service(autoscaling={"min": 1, "max": 3, "targetCPU": 70}), Release(IMAGE, DIGEST), "p"))
    assert cpu["HorizontalPodAutoscaler"][0]["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 70


def test_a_canary_gets_its_own_deployment_and_a_weighted_route() -> None:
    ms = service(replicas=3, canary={"model": {"trainingRun": "digits-v2"}, "weight": 20})
    objects = by_kind(render.render(ms, Release(IMAGE, DIGEST), "prod", canary=Release(CANARY_IMAGE, "sha256:" + "2" * 64)))
    names = {d["metadata"]["name"]: d for d in objects["Deployment"]}
    assert set(names) == {"digits", "digits-canary"}
    assert names["digits-canary"]["spec"]["template"]["spec"]["containers"][0]["image"] == CANARY_IMAGE
    # The stable Service never selects canary pods: the route alone decides the split.
    stable_svc = next(s for s in objects["Service"] if s["metadata"]["name"] == "digits")
    assert stable_svc["spec"]["selector"][render.LABEL_TRACK] == "stable"
    rule = objects["HTTPRoute"][0]["spec"]["rules"][0]
    assert [(b["name"], b["weight"]) for b in rule["backendRefs"]] == [("digits", 80), ("digits-canary", 20)]


def test_rendering_is_deterministic() -> None:
    # Fixed expected names, labels and order, not two renders in one process: a restarted
    # operator must render the same objects, or server-side apply and pruning would churn.
    objects = render.render(service(replicas=2), Release(IMAGE, DIGEST), "prod")
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("Deployment", "digits"), ("Service", "digits"), ("PodDisruptionBudget", "digits")]
    assert objects[0]["spec"]["selector"]["matchLabels"] == {
        "kakehashi.dev/modelservice": "digits", "kakehashi.dev/track": "stable"}
    assert [e["name"] for e in objects[0]["spec"]["template"]["spec"]["containers"][0]["env"]] == [
        "KAKEHASHI_MODEL_NAME", "KAKEHASHI_MODEL_DIR", "KAKEHASHI_PORT", "KAKEHASHI_MAX_BATCH_SIZE",
        "KAKEHASHI_MAX_WAIT_MS"]
