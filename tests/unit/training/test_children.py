"""The Job and TFJob a TrainingRun renders to: what a data scientist's code will see."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kakehashi import contract
from kakehashi.api.trainingrun import TrainingRun
from kakehashi.settings import OperatorSettings
from kakehashi.training import children

SETTINGS = OperatorSettings(model_bucket="models", s3_endpoint="http://s3.local:9000")


def make_run(**spec: Any) -> TrainingRun:
    return TrainingRun.model_validate(
        {
            "metadata": {"name": "digits", "namespace": "team-a", "uid": "1234-uid", "generation": 1},
            "spec": spec,
        }
    )


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_one_replica_is_a_job_with_the_contract_env() -> None:
    run = make_run(
        image="registry.local/train:1",
        command=["python", "-m", "train"],
        args=["--verbose"],
        hyperparameters={"epochs": 5, "lr": 0.01, "augment": True, "optimizer": "adam"},
        data={"uri": "s3://data/digits/"},
    )
    job = children.render_child(run, SETTINGS)
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    assert job["metadata"]["name"] == "digits"
    owner = job["metadata"]["ownerReferences"][0]
    assert owner == {
        "apiVersion": "kakehashi.dev/v1alpha1", "kind": "TrainingRun", "name": "digits",
        "uid": "1234-uid", "controller": True, "blockOwnerDeletion": True,
    }
    assert job["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kakehashi-operator"
    pod = job["spec"]["template"]
    assert pod["metadata"]["labels"][children.LABEL_RUN] == "digits"
    assert children.POD_FINALIZER in pod["metadata"]["finalizers"]
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "train"]
    assert container["args"] == ["--verbose", "--augment=true", "--epochs=5", "--lr=0.01", "--optimizer=adam"]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    env = env_of(container)
    assert json.loads(env[contract.ENV_HYPERPARAMETERS]) == {
        "epochs": 5, "lr": 0.01, "augment": True, "optimizer": "adam",
    }
    assert env[contract.ENV_DATA_URI] == "s3://data/digits/"
    assert env[contract.ENV_OUTPUT_URI] == "s3://models/team-a/digits/1234-uid/"
    assert env[contract.ENV_RUN_ID] == "1234-uid"
    assert env[contract.ENV_S3_ENDPOINT] == "http://s3.local:9000"
    assert env["AWS_ACCESS_KEY_ID"]["secretKeyRef"]["optional"] is True
    assert pod["spec"]["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] == 0


def test_rendering_is_deterministic() -> None:
    # Fixed expected values, not just two renders in one process: a restarted operator (another
    # process, another hash seed) must render the same name and bytes, or it creates a second Job.
    run = make_run(hyperparameters={"b": 1, "a": 2})
    job = children.render_child(run, SETTINGS)
    assert job == children.render_child(make_run(hyperparameters={"a": 2, "b": 1}), SETTINGS)
    assert job["metadata"]["name"] == "digits"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["--a=2", "--b=1"]
    assert env_of(container)[contract.ENV_HYPERPARAMETERS] == '{"a": 2, "b": 1}'
    tfjob = children.render_child(make_run(replicas={"chief": 1, "worker": 2}), SETTINGS)
    assert tfjob["metadata"]["name"] == "digits"
    assert list(tfjob["spec"]["tfReplicaSpecs"]) == ["Chief", "Worker"]


def test_explicit_output_uri_and_run_policy() -> None:
    run = make_run(
        output={"uri": "s3://elsewhere/models/x"},
        runPolicy={"backoffLimit": 2, "activeDeadlineSeconds": 600, "ttlSecondsAfterFinished": 60},
    )
    job = children.render_job(run, SETTINGS)
    assert env_of(job["spec"]["template"]["spec"]["containers"][0])[contract.ENV_OUTPUT_URI] == "s3://elsewhere/models/x/"
    assert (job["spec"]["backoffLimit"], job["spec"]["activeDeadlineSeconds"], job["spec"]["ttlSecondsAfterFinished"]) == (2, 600, 60)


def test_gpu_requests_tolerate_the_gpu_taint_and_select_gpu_nodes() -> None:
    run = make_run(resources={"cpu": 4, "memory": "16Gi", "gpu": 2}, nodeSelector={"zone": "a"})
    pod = children.render_job(run, SETTINGS)["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["limits"] == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "2"}
    assert resources["requests"] == resources["limits"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"zone": "a", "nvidia.com/gpu.present": "true"}


def test_git_source_is_cloned_by_an_init_container() -> None:
    run = make_run(source={"git": {"url": "https://git.example/ds/digits.git", "revision": "v1.2", "path": "train"}})
    pod = children.render_job(run, SETTINGS)["spec"]["template"]["spec"]
    init = pod["initContainers"][0]
    assert init["name"] == children.CLONE_CONTAINER
    assert "git clone" in init["command"][-1] and "git rev-parse HEAD" in init["command"][-1]
    assert env_of(init)[contract.ENV_SOURCE_GIT_REVISION] == "v1.2"
    container = pod["containers"][0]
    assert container["workingDir"] == f"{children.SOURCE_DIR}/train"
    assert env_of(container)[contract.ENV_SOURCE_COMMIT_FILE] == children.COMMIT_FILE
    assert pod["volumes"] == [{"name": "workspace", "emptyDir": {}}]


def test_default_image_is_the_notebook_image() -> None:
    container = children.render_job(make_run(), SETTINGS)["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "kakehashi/notebook-jupyter:0.1.0"


@pytest.mark.parametrize(
    ("replicas", "expected"),
    [
        ({"worker": 2}, {"Worker": 2}),
        ({"chief": 1, "worker": 3, "ps": 2, "evaluator": 1}, {"Chief": 1, "Worker": 3, "PS": 2, "Evaluator": 1}),
    ],
)
def test_distributed_runs_are_tfjobs(replicas: dict[str, int], expected: dict[str, int]) -> None:
    run = make_run(replicas=replicas, runPolicy={"backoffLimit": 1, "cleanPodPolicy": "Running", "activeDeadlineSeconds": 30})
    tfjob = children.render_child(run, SETTINGS)
    assert (tfjob["apiVersion"], tfjob["kind"]) == ("kubeflow.org/v1", "TFJob")
    specs = tfjob["spec"]["tfReplicaSpecs"]
    assert {k: v["replicas"] for k, v in specs.items()} == expected
    for spec in specs.values():
        assert spec["restartPolicy"] == "ExitCode"
        assert spec["template"]["spec"]["containers"][0]["name"] == "tensorflow"
    assert tfjob["spec"]["runPolicy"] == {"backoffLimit": 1, "activeDeadlineSeconds": 30, "cleanPodPolicy": "Running"}
