"""ModelService when things go wrong, for real: a baked image that cannot start, the registry
going away in the middle of a bake, and the operator killed while a bake Job runs. In each the
earlier version keeps serving, the status says what happened, and nothing is done twice."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from modelservices import Services, predict, prepare_namespace, service_spec, upload_model
from tiny_models import FEATURES, compiled_tiny_model, corrupt_compiled_model
from trainingruns import wait_for

from kakehashi.dev import stack

SERVICE = "scorer"
INPUTS = [{"name": FEATURES, "shape": [1, 3], "datatype": "FP32", "data": [1.0, 1.0, 1.0]}]


@pytest.fixture
def services(learning: Any, namespace: str, operator: Any, dev_env: Any) -> Iterator[Services]:
    if not dev_env.real_nodes or "serving" not in dev_env.images:
        pytest.skip(f"needs the real nodes and the project's images: {dev_env.no_real_nodes_reason}")
    prepare_namespace(learning, namespace, dev_env)
    yield Services(learning, namespace)


@pytest.fixture
def models(s3: Any, dev_env: Any, namespace: str, tmp_path: Path) -> Any:
    """model(weights, corrupt=False) -> the `spec.model` of a tiny compiled model put in S3."""

    def make(weights: tuple[float, float, float], *, corrupt: bool = False) -> dict[str, str]:
        directory = tmp_path / uuid.uuid4().hex[:8]
        directory.mkdir()
        compiled_tiny_model(directory, weights)
        if corrupt:
            corrupt_compiled_model(directory)
        return upload_model(s3, dev_env.s3.model_bucket, f"{namespace}/{directory.name}", directory,
                            {"accuracy": 0.9})

    return make


def _ready(status: dict[str, Any]) -> bool:
    return status.get("phase") in ("Ready", "Failed")


def _serve_first(services: Services, spec: dict[str, Any]) -> dict[str, Any]:
    services.apply(SERVICE, spec)
    ready = services.wait(SERVICE, _ready, 600, "the first version Ready")
    assert ready["phase"] == "Ready", ready
    return ready


def _manifest_puts(repository: str) -> int:
    """Manifests the registry accepted for `repository`, from its access log: a push is one."""
    log = stack.shared_service("registry").log_file.read_text(errors="replace")
    return len(re.findall(rf'"PUT /v2/{re.escape(repository)}/manifests/\S+ HTTP/[\d.]+" 201', log))


@pytest.mark.timeout(900)
def test_an_image_that_cannot_start_leaves_the_service_degraded_while_the_earlier_version_serves(
    services: Services, models: Any, production: Any, production_namespace: str, dev_env: Any,
) -> None:
    good = models((1.0, 2.0, 3.0))
    spec = service_spec(dev_env, production_namespace, f"models/{uuid.uuid4().hex[:8]}", model=good)
    first = _serve_first(services, spec)
    assert first["servedDigests"] == [good["digest"]]

    # A corrupt compiled model: it bakes (its files match their record), but cannot load.
    bad = models((4.0, 5.0, 6.0), corrupt=True)
    services.apply(SERVICE, {**spec, "model": bad})
    degraded = services.wait(SERVICE, lambda s: s.get("modelDigest") == bad["digest"]
                             and s.get("phase") in ("Degraded", "Ready", "Failed"), 600, "Degraded")
    assert degraded["phase"] == "Degraded", degraded
    assert degraded["reason"] == "CrashLoopBackOff", degraded
    assert "keeps crashing" in degraded["message"] and "the earlier version keeps serving" in degraded["message"]
    assert degraded["image"] != first["image"]  # the new image was baked and is the one failing
    # Never Ready: the pod keeps crashing, and the service keeps saying so.
    for _ in range(10):
        status = services.status(SERVICE)
        assert status["phase"] == "Degraded", status
        assert status["servedDigests"] == [good["digest"]]
        time.sleep(1)
    assert [h["id"] for h in status["history"]] == [1]
    # The earlier version answers through the Service.
    answer = predict(production, production_namespace, SERVICE, INPUTS)
    assert answer["model_version"] == good["digest"] and answer["outputs"][0]["data"] == [6.0]


@pytest.mark.timeout(900)
def test_a_registry_outage_during_a_bake_is_reported_and_the_bake_resumes_when_it_returns(
    services: Services, models: Any, production: Any, production_namespace: str, dev_env: Any,
    learning: Any,
) -> None:
    first_model = models((1.0, 2.0, 3.0))
    repository = f"models/{uuid.uuid4().hex[:8]}"
    spec = service_spec(dev_env, production_namespace, repository, model=first_model)
    _serve_first(services, spec)
    second = models((2.0, 2.0, 2.0))
    registry = stack.shared_service("registry")
    registry.stop()
    try:
        services.apply(SERVICE, {**spec, "model": second})
        retrying = services.wait(SERVICE, lambda s: s.get("modelDigest") == second["digest"] and (
            s.get("reason") == "BakeRetrying" or _ready(s)), 300, "the bake to report the outage")
        assert retrying["phase"] == "Baking", retrying
        baked = next(c for c in retrying["conditions"] if c["type"] == "Baked")
        assert (baked["status"], baked["reason"]) == ("False", "BakeRetrying")
        assert "RegistryUnavailable" in baked["message"] and dev_env.registry in baked["message"], baked
        # Meanwhile production is untouched: the first model still answers.
        answer = predict(production, production_namespace, SERVICE, INPUTS)
        assert answer["model_version"] == first_model["digest"]
    finally:
        registry.start()
    ready = services.wait(SERVICE, lambda s: s.get("phase") == "Failed" or (
        s.get("phase") == "Ready" and s.get("servedDigests") == [second["digest"]]), 600,
        "the second model Ready after the registry returned")
    assert ready["phase"] == "Ready" and [h["id"] for h in ready["history"]] == [1, 2]
    assert predict(production, production_namespace, SERVICE, INPUTS)["outputs"][0]["data"] == [6.0]
    # One bake Job per model, one push each: the retries after the outage pushed nothing twice.
    assert len(services.bake_jobs(client.BatchV1Api(learning), SERVICE)) == 2
    assert _manifest_puts(repository) == 2


@pytest.mark.timeout(900)
def test_an_operator_killed_mid_bake_resumes_without_baking_or_pushing_twice(
    services: Services, models: Any, operator: Any, production_namespace: str, dev_env: Any, learning: Any,
) -> None:
    model = models((3.0, 1.0, 2.0))
    repository = f"models/{uuid.uuid4().hex[:8]}"
    batch = client.BatchV1Api(learning)
    services.apply(SERVICE, service_spec(dev_env, production_namespace, repository, model=model))
    try:
        [job] = wait_for(lambda: services.bake_jobs(batch, SERVICE), 120, "the bake Job")
        assert not (job.status.succeeded or job.status.failed), "the bake finished before the kill"
        operator.kill()
        # The Job goes on without the operator; it pushes once.
        done = wait_for(lambda: (j := batch.read_namespaced_job(job.metadata.name, services.namespace))
                        .status.succeeded and j, 300, "the bake Job to finish")
        assert _manifest_puts(repository) == 1
    finally:
        if operator.process is None:
            operator.start()
    ready = services.wait(SERVICE, _ready, 300, "Ready after the restart")
    assert ready["phase"] == "Ready" and ready["servedDigests"] == [model["digest"]], ready
    [again] = services.bake_jobs(batch, SERVICE)
    assert again.metadata.uid == done.metadata.uid and (again.status.succeeded, again.status.failed) == (1, None)
    assert _manifest_puts(repository) == 1
    assert ready["image"].startswith(f"{dev_env.registry}/{repository}@sha256:")
