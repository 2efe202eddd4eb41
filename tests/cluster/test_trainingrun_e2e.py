"""A TrainingRun end to end with real training: the operator's Job environment runs the real
digits example, the model lands in S3, and the run's status carries it, gated.

kwok pods execute nothing, so the test plays the kubelet: it runs the Job's container command
as a local process with exactly the Job's environment (Secret references resolved the way the
kubelet resolves them), then lets kwok finish the pod.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from trainingruns import Runs

from kakehashi.dev import kubelet

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def runs(learning: Any, namespace: str, operator: Any) -> Runs:
    return Runs(learning, namespace)


def test_real_training_lands_its_model_in_the_run_status(runs: Runs, dev_env: Any) -> None:
    runs.core.create_namespaced_secret(
        runs.namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="kakehashi-s3"),
            string_data={"AWS_ACCESS_KEY_ID": dev_env.s3.access_key, "AWS_SECRET_ACCESS_KEY": dev_env.s3.secret_key},
        ),
    )
    runs.create(
        "digits-real",
        {
            "command": ["python", "examples/digits/train.py"],
            "hyperparameters": {"epochs": 20, "learning_rate": 0.005},
            "gate": {"metric": "accuracy", "threshold": 0.8},
            "env": [{"name": "AWS_REGION", "value": dev_env.s3.region}],
        },
        pod_annotations=kubelet.HOLD,
    )
    runs.wait_phase("digits-real", "Running")
    result = kubelet.run_job_container(runs.custom.api_client, runs.namespace, "digits-real", REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    kubelet.release_pods(runs.custom.api_client, runs.namespace, "kakehashi.dev/trainingrun=digits-real")
    [job] = runs.jobs("digits-real")
    env = {e.name: e.value for e in job.spec.template.spec.containers[0].env}
    status = runs.wait_phase("digits-real", "Succeeded", "Failed", timeout=60)
    assert status["phase"] == "Succeeded", status
    model = status["model"]
    assert model["uri"] == env["KAKEHASHI_OUTPUT_URI"]
    assert model["digest"].startswith("sha256:")
    assert model["metrics"]["accuracy"] > 0.8
    assert model["lineage"]["runName"] == "digits-real"
    assert model["lineage"]["hyperparameters"]["epochs"] == 20
    promotable = runs.condition("digits-real", "Promotable")
    assert (promotable["status"], promotable["reason"]) == ("True", "GatePassed")
