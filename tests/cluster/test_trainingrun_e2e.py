"""A TrainingRun end to end with real training on the learning cluster's real node: the
operator's Job runs the digits example in the project's training image (built from
notebook-images/Dockerfile target jupyter, real TensorFlow), reading and writing the real MinIO, and
the run's status carries the model, gated."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from trainingruns import Runs, real_digits_spec


@pytest.fixture
def runs(learning: Any, namespace: str, operator: Any, dev_env: Any) -> Runs:
    if not dev_env.real_nodes:
        pytest.skip(f"no real nodes on this machine: {dev_env.no_real_nodes_reason}")
    return Runs(learning, namespace)


def test_real_training_lands_its_model_in_the_run_status(runs: Runs, dev_env: Any) -> None:
    runs.core.create_namespaced_secret(
        runs.namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="kakehashi-s3"),
            string_data={"AWS_ACCESS_KEY_ID": dev_env.s3.access_key, "AWS_SECRET_ACCESS_KEY": dev_env.s3.secret_key},
        ),
    )
    runs.create("digits-real", real_digits_spec(dev_env))
    status = runs.wait_phase("digits-real", "Succeeded", "Failed", timeout=600)
    assert status["phase"] == "Succeeded", status
    [job] = runs.jobs("digits-real")
    env = {e.name: e.value for e in job.spec.template.spec.containers[0].env}
    [pod] = runs.pods("digits-real")
    assert pod.spec.node_name == "learning-real"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 0
    model = status["model"]
    assert model["uri"] == env["KAKEHASHI_OUTPUT_URI"]
    assert model["digest"].startswith("sha256:")
    assert model["metrics"]["accuracy"] > 0.8
    assert model["lineage"]["runName"] == "digits-real"
    assert model["lineage"]["hyperparameters"]["epochs"] == 20
    assert model["lineage"]["frameworks"]["tensorflow"].startswith("2.")
    promotable = runs.condition("digits-real", "Promotable")
    assert (promotable["status"], promotable["reason"]) == ("True", "GatePassed")
