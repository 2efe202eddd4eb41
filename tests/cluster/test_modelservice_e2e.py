"""The bridge, for real: a TrainingRun's model (real TensorFlow on the learning cluster's real
node) is baked into the serving image by a bake Job, delivered to the production cluster by
server-side apply, served by pods on the production cluster's real node that report its
digest, answers predictions through its Service, and rolls back without baking again."""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes import client
from modelservices import Services, predict, prepare_namespace, service_spec
from trainingruns import Runs, wait_for

from kakehashi import GROUP
from kakehashi.dev import node

SERVICE = "digits"


def _predict(production: Any, namespace: str) -> dict[str, Any]:
    # A handwritten-looking "1": a vertical bar in the middle of the 8x8 grid.
    pixels = [[0.0] * 8 for _ in range(8)]
    for row in range(1, 7):
        pixels[row][3] = pixels[row][4] = 16.0
    return predict(production, namespace, SERVICE, [{"name": "pixels", "shape": [1, 8, 8], "datatype": "FP32",
                                                     "data": [v for row in pixels for v in row]}])


@pytest.mark.timeout(1500)
def test_a_trained_model_is_baked_served_on_production_and_rolled_back(
    learning: Any, production: Any, namespace: str, production_namespace: str, operator: Any, dev_env: Any,
) -> None:
    if not dev_env.real_nodes or "serving" not in dev_env.images:
        pytest.skip(f"needs the real nodes and the project's images: {dev_env.no_real_nodes_reason}")
    prepare_namespace(learning, namespace, dev_env)
    runs = Runs(learning, namespace)
    training = {
        "image": dev_env.images["training"],
        "command": ["python", "/opt/kakehashi/examples/digits/train.py"],
        "gate": {"metric": "accuracy", "threshold": 0.8},
        "env": [{"name": "AWS_REGION", "value": dev_env.s3.region}],
        "resources": {"cpu": 1, "memory": "2Gi"},
        "nodeSelector": node.SELECTOR,
        "tolerations": [node.TOLERATION],
    }
    runs.create("digits-v1", {**training, "hyperparameters": {"epochs": 15, "seed": 1}})
    runs.create("digits-v2", {**training, "hyperparameters": {"epochs": 20, "seed": 2}})
    v1 = runs.wait_phase("digits-v1", "Succeeded", "Failed", timeout=600)
    assert v1["phase"] == "Succeeded", v1
    services = Services(learning, namespace)
    spec = service_spec(dev_env, production_namespace, "models/digits", model={"trainingRun": "digits-v1"},
                        replicas=2)
    started = time.monotonic()
    services.apply(SERVICE, spec)
    ready = services.wait(SERVICE, lambda s: s.get("phase") == "Ready" or s.get("phase") == "Failed", 900, "Ready")
    assert ready["phase"] == "Ready", ready
    print(f"v1: applied to Ready in {time.monotonic() - started:.1f} s")
    image_v1 = ready["image"]
    assert "@sha256:" in image_v1 and ready["servedDigests"] == [v1["model"]["digest"]]
    assert ready["readyReplicas"] == 2 and [h["id"] for h in ready["history"]] == [1]
    # The pods run the baked image, pinned by digest, on the production cluster's real node.
    pods = client.CoreV1Api(production).list_namespaced_pod(
        production_namespace, label_selector=f"{GROUP}/modelservice={SERVICE}").items
    assert {p.spec.containers[0].image for p in pods} == {image_v1}
    assert {p.spec.node_name for p in pods} == {"production-real"}
    answer = _predict(production, production_namespace)
    assert answer["model_name"] == SERVICE and answer["model_version"] == v1["model"]["digest"]
    probabilities = answer["outputs"][0]["data"]
    assert len(probabilities) == 10 and abs(sum(probabilities) - 1) < 1e-3

    # A newer model: baked and rolled out; the history keeps both.
    v2 = runs.wait_phase("digits-v2", "Succeeded", "Failed", timeout=600)
    assert v2["phase"] == "Succeeded" and v2["model"]["digest"] != v1["model"]["digest"]
    services.apply(SERVICE, {**spec, "model": {"trainingRun": "digits-v2"}})
    ready = services.wait(SERVICE, lambda s: s.get("phase") == "Ready" and s.get("image") != image_v1, 900, "v2 Ready")
    assert ready["servedDigests"] == [v2["model"]["digest"]] and [h["id"] for h in ready["history"]] == [1, 2]
    bakes = client.BatchV1Api(learning).list_namespaced_job(namespace, label_selector=f"{GROUP}/modelservice={SERVICE}")
    assert len(bakes.items) == 2

    # Roll back to entry 1: the old image again, no third bake, every ready pod serving v1.
    started = time.monotonic()
    services.apply(SERVICE, {**spec, "model": {"trainingRun": "digits-v2"}, "rollbackTo": "1"})
    back = services.wait(SERVICE, lambda s: s.get("phase") == "Ready" and s.get("image") == image_v1, 300, "rolled back")
    print(f"rollback: spec change to Ready in {time.monotonic() - started:.1f} s")
    assert back["servedDigests"] == [v1["model"]["digest"]]
    assert back["history"][-1]["rollback"] is True and back["history"][-1]["image"] == image_v1
    assert len(client.BatchV1Api(learning).list_namespaced_job(
        namespace, label_selector=f"{GROUP}/modelservice={SERVICE}").items) == 2

    # Deleting the service removes it from production.
    services.delete(SERVICE)
    wait_for(lambda: not client.AppsV1Api(production).list_namespaced_deployment(
        production_namespace, label_selector=f"{GROUP}/modelservice={SERVICE}").items, 60, "production cleaned up")
