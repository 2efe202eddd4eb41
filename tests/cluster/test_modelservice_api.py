"""The ModelService API: the API server refuses what cannot be served, naming the field, and
the operator refuses a model that did not pass its gate before baking anything."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from modelservices import Services
from trainingruns import Runs, wait_for

from kakehashi import GROUP

DIGEST = "sha256:" + "0" * 64


def _spec(**extra: Any) -> dict[str, Any]:
    return {"model": {"trainingRun": "digits"}, "registry": "127.0.0.1:5000/models",
            "delivery": {"mode": "direct", "direct": {"kubeconfigSecret": {"name": "prod"}, "namespace": "prod"}},
            **extra}


@pytest.fixture
def services(learning: Any, namespace: str, operator: Any) -> Services:
    return Services(learning, namespace)


@pytest.mark.parametrize(("spec", "field", "words"), [
    (_spec(model={}), "spec.model", "name either trainingRun, or uri and digest"),
    (_spec(model={"trainingRun": "digits", "uri": "s3://b/m/", "digest": DIGEST}), "spec.model", "either trainingRun"),
    (_spec(model={"uri": "s3://b/m/"}), "spec.model", "uri and digest go together"),
    (_spec(model={"uri": "s3://b/m/", "digest": "md5:abc"}), "spec.model.digest", "should match"),
    (_spec(canary={"model": {"trainingRun": "v2"}, "weight": 120}), "spec.canary.weight", "less than or equal to 100"),
    (_spec(autoscaling={"min": 5, "max": 2, "targetCPU": 70}), "spec.autoscaling", "min must not exceed max"),
    (_spec(autoscaling={"min": 1, "max": 2}), "spec.autoscaling", "exactly one of targetCPU and targetInFlight"),
    (_spec(delivery={"mode": "direct"}), "spec.delivery", "mode direct needs delivery.direct"),
    ({"model": {"trainingRun": "digits"}}, "spec.registry", "Required value"),
])
def test_an_invalid_service_is_refused_naming_the_field(
    services: Services, spec: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(ApiException) as info:
        services.create("bad", spec)
    assert info.value.status == 422, info.value.body
    message = json.loads(info.value.body)["message"]
    assert field in message and words in message, message


def test_a_model_that_is_not_promotable_is_refused_before_baking(
    learning: Any, namespace: str, operator: Any, services: Services, s3: Any
) -> None:
    runs = Runs(learning, namespace)
    created = runs.create("digits", {"gate": {"metric": "accuracy", "threshold": 0.99}},
                          pod_annotations={"kwok.kakehashi.dev/run-duration": "3s"})
    # What the trainer would have written: a model that misses the gate.
    prefix = f"{namespace}/digits/{created['metadata']['uid']}/"
    manifest = {"uri": f"s3://kakehashi-models/{prefix}", "digest": DIGEST, "metrics": {"accuracy": 0.5}}
    s3.put_object(Bucket="kakehashi-models", Key=prefix + "model.json", Body=json.dumps(manifest).encode())
    status = runs.wait_phase("digits", "Succeeded")
    assert status["model"]["digest"] == DIGEST
    services.create("digits", _spec())
    status = wait_for(lambda: (s := services.status("digits")).get("phase") == "Failed" and s, 30, "Failed")
    assert status["reason"] == "NotPromotable" and "gateOverride" in status["message"]
    ready = next(c for c in status["conditions"] if c["type"] == "ModelResolved")
    assert ready["status"] == "False"
    assert client.BatchV1Api(learning).list_namespaced_job(
        namespace, label_selector=f"{GROUP}/modelservice=digits").items == []
