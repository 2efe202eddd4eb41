"""The notebook SDK and the `kakehashi` verbs against the local clusters, as a data scientist
uses them: submit (twice), wait, read why a run failed, read logs, deploy a model, predict,
roll back. kwok nodes simulate training outcomes quickly; logs, serving and predictions run on
the real nodes."""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from kubernetes import client
from modelservices import prepare_namespace, upload_model
from tiny_models import compiled_tiny_model

from kakehashi.cli import main
from kakehashi.dev import node
from kakehashi.sdk import (
    Connection,
    ModelService,
    RunFailed,
    SpecConflict,
    TrainingRun,
    WaitTimeout,
)
from kakehashi.sdk.predictor import Predictor

FAST = {"kwok.kakehashi.dev/run-duration": "1s"}


@pytest.fixture
def connection(learning: Any, namespace: str, operator: Any) -> Connection:
    return Connection(learning, namespace)


@pytest.fixture
def cli(dev_env: Any, namespace: str, operator: Any) -> Any:
    """invoke("runs", "-o", "json") -> click's Result, against the learning cluster."""

    def invoke(verb: str, *args: str) -> Any:
        # The options go right after the verb: `train` takes everything after `--` as its command.
        return CliRunner().invoke(main, [verb, "--kubeconfig", str(dev_env.learning.kubeconfig), "-n", namespace,
                                         *args], prog_name="kakehashi", catch_exceptions=False)

    return invoke


def _real(dev_env: Any, *images: str) -> None:
    if not dev_env.real_nodes or any(image not in dev_env.images for image in images):
        pytest.skip(f"needs the real nodes and the images {images}: {dev_env.no_real_nodes_reason}")


# -- training on kwok nodes: outcomes simulated by pod annotations ---------------------------------

def test_submitting_twice_is_one_run_and_waiting_shows_its_phases(connection: Connection, learning: Any) -> None:
    arguments: dict[str, Any] = {"hyperparameters": {"epochs": 2, "learning_rate": 0.005},
                                 "data": "s3://data/digits/", "gate": ("accuracy", 0.9), "pod_annotations": FAST}
    first = TrainingRun("digits", connection=connection, **arguments).submit()
    again = TrainingRun("digits", connection=connection, **arguments).submit()
    runs = client.CustomObjectsApi(learning).list_namespaced_custom_object(
        "kakehashi.dev", "v1alpha1", connection.namespace, "trainingruns")["items"]
    assert [r["metadata"]["name"] for r in runs] == ["digits"]
    assert again.object["metadata"]["uid"] == first.object["metadata"]["uid"]

    out = io.StringIO()
    started = time.monotonic()
    again.wait(timeout=120, stream=out)
    assert time.monotonic() - started < 60
    assert again.phase == "Succeeded"
    lines = out.getvalue().splitlines()
    assert lines[-1].startswith("TrainingRun digits: Succeeded") and lines[-1].endswith(" s"), lines
    assert any(": Running" in line for line in lines) or any(": Pending" in line for line in lines), lines
    # kwok trains nothing: no model.json, so no metrics, and not promotable.
    assert again.metrics == {} and again.promotable is False

    with pytest.raises(SpecConflict, match=r"hyperparameters: .*'epochs': 2.* there, .*'epochs': 3.* here"):
        TrainingRun("digits", connection=connection, **{**arguments, "hyperparameters": {"epochs": 3}}).submit()
    attached = TrainingRun.attach("digits", connection=connection)
    assert attached.spec == first.spec and attached.phase == "Succeeded"


def test_a_failing_run_raises_with_its_reason_and_log_tail(connection: Connection) -> None:
    run = TrainingRun("nan", connection=connection, pod_annotations={
        "kwok.kakehashi.dev/outcome": "fail", "kwok.kakehashi.dev/exit-code": "3",
        "kwok.kakehashi.dev/log-tail": "epoch 1/5\nTraceback (most recent call last):\nValueError: NaN loss"}).submit()
    with pytest.raises(RunFailed) as raised:
        run.wait(timeout=120, progress=False)
    error = raised.value
    assert error.reason == "NonZeroExitCode"
    assert "exited with code 3" in error.message
    assert error.log_tail.rstrip().endswith("ValueError: NaN loss")
    assert "TrainingRun 'nan' failed: NonZeroExitCode" in str(error) and "ValueError: NaN loss" in str(error)


def test_waiting_past_the_timeout_raises_and_the_run_goes_on(connection: Connection) -> None:
    run = TrainingRun("forever", connection=connection,
                      pod_annotations={"kwok.kakehashi.dev/outcome": "run"}).submit()
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as raised:
        run.wait(timeout=4, progress=False)
    elapsed = time.monotonic() - started
    assert 4 <= elapsed < 12, elapsed
    assert raised.value.phase in ("Pending", "Running") and "after 4 s" in str(raised.value)
    assert run.phase in ("Pending", "Running")  # not cancelled


def test_the_cli_trains_lists_and_shows_runs(cli: Any) -> None:
    submitted = cli("train", "cli-run", "-p", "epochs=2", "--pod-annotation", "kwok.kakehashi.dev/run-duration=1s",
                    "--wait", "--timeout", "120", "--", "python", "train.py")
    assert submitted.exit_code == 0, submitted.output
    row = submitted.stdout.splitlines()[1].split()
    assert row[:2] == ["cli-run", "Succeeded"], submitted.stdout
    listed = json.loads(cli("runs", "-o", "json").stdout)
    assert [(r["metadata"]["name"], r["spec"]["command"], r["status"]["phase"]) for r in listed] == [
        ("cli-run", ["python", "train.py"], "Succeeded")]
    table = cli("runs").stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "REASON", "PROMOTABLE", "METRICS", "AGE"]
    status = cli("status", "cli-run").stdout
    assert "CONDITION" in status and "ModelNotFound" in status
    refused = cli("train", "cli-run", "-p", "epochs=3")
    assert refused.exit_code == 1 and "already exists with a different spec" in refused.output


# -- on the real node: logs --------------------------------------------------------------------

def test_logs_of_a_real_run_and_following_them_while_it_trains(connection: Connection, dev_env: Any, cli: Any) -> None:
    _real(dev_env, "base")
    script = "import time\nfor i in range(1, 4):\n    print(f'epoch {i}/3', flush=True)\n    time.sleep(1)\n"
    run = TrainingRun("hello", connection=connection, image=dev_env.images["base"],
                      command=["python3", "-c", script], node_selector=node.SELECTOR,
                      tolerations=[node.TOLERATION]).submit()
    out = io.StringIO()
    followed = run.logs(follow=True, stream=out, timeout=300)
    assert followed == "epoch 1/3\nepoch 2/3\nepoch 3/3\n" == out.getvalue()
    run.wait(timeout=120, progress=False)
    assert run.logs() == followed
    assert run.logs(tail=1) == "epoch 3/3\n"
    printed = cli("logs", "hello")
    assert printed.exit_code == 0 and printed.stdout == followed
    # fit(wait=True, logs=True)'s habit: the log streams while waiting.
    fit = TrainingRun("hello-fit", connection=connection, image=dev_env.images["base"],
                      command=["python3", "-c", script], node_selector=node.SELECTOR,
                      tolerations=[node.TOLERATION]).submit()
    streamed = io.StringIO()
    fit.wait(timeout=300, progress=False, logs=True, log_stream=streamed)
    assert fit.phase == "Succeeded" and streamed.getvalue() == followed


# -- on the real nodes: deploy a tiny model and predict ------------------------------------------

@pytest.fixture
def models(s3: Any, dev_env: Any, namespace: str, tmp_path: Path) -> Any:
    """model(weights) -> (uri, digest) of a tiny compiled model put in S3 (model.json last)."""

    def make(weights: tuple[float, float, float]) -> tuple[str, str]:
        directory = tmp_path / uuid.uuid4().hex[:8]
        directory.mkdir()
        compiled_tiny_model(directory, weights)
        model = upload_model(s3, dev_env.s3.model_bucket, f"{namespace}/{directory.name}", directory, {})
        return model["uri"], model["digest"]

    return make


@pytest.fixture
def team_secrets(learning: Any, namespace: str, dev_env: Any) -> None:
    """What a team creates once: S3 keys for bake Jobs, the production kubeconfig for delivery."""
    prepare_namespace(learning, namespace, dev_env)


@pytest.fixture
def served(dev_env: Any, connection: Connection, team_secrets: None, models: Any,
           production_namespace: str) -> Iterator[dict[str, Any]]:
    _real(dev_env, "serving")
    repository = f"{dev_env.registry}/models/{uuid.uuid4().hex[:8]}"
    options = {"registry": repository, "production_namespace": production_namespace,
               "serving_image": dev_env.images["serving"], "cpu": "250m", "memory": "512Mi",
               "node_selector": node.SELECTOR, "tolerations": [node.TOLERATION]}
    yield {"options": options, "repository": repository, "production_namespace": production_namespace}


@pytest.mark.timeout(900)
def test_deploy_waits_until_ready_and_the_predictor_takes_lists_arrays_and_dataframes(
    connection: Connection, served: dict[str, Any], models: Any, cli: Any, dev_env: Any,
) -> None:
    import numpy as np
    import pandas as pd

    from kakehashi.sdk import deploy

    uri, digest = models((1.0, 2.0, 3.0))
    out = io.StringIO()
    started = time.monotonic()
    predictor = deploy("scorer", model_uri=uri, model_digest=digest, connection=connection, timeout=600,
                       stream=out, **served["options"])
    took = time.monotonic() - started
    lines = out.getvalue().splitlines()
    assert any(": Baking" in line for line in lines), lines
    assert lines[-1].startswith("ModelService scorer: Ready") and lines[-1].endswith(" s"), lines
    assert isinstance(predictor, Predictor) and took < 600

    assert predictor.predict([1.0, 1.0, 1.0]) == [6.0]  # one example in, one answer out
    assert predictor.predict(np.array([[1, 0, 0], [0, 0, 2]])) == [[1.0], [6.0]]
    frame = pd.DataFrame({"a": [1.0, 0.0], "b": [1.0, 1.0], "c": [1.0, 0.0]})
    assert predictor.predict(frame) == [[6.0], [2.0]]
    assert predictor.metadata()["versions"] == [digest]

    # The CLI reads the same service: a table, and predictions through the delivery Secret.
    table = cli("services").stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "REASON", "READY", "MODEL", "IMAGE", "AGE"]
    assert table[1].split()[:4] == ["scorer", "Ready", "Serving", "1/1"]
    predicted = cli("predict", "scorer", "--json", "[[1, 1, 1], [2, 2, 2]]")
    assert predicted.exit_code == 0 and json.loads(predicted.stdout) == [[6.0], [12.0]]

    # A second model through the CLI, then back to the first by `rollback`, without baking.
    uri2, digest2 = models((2.0, 2.0, 2.0))
    deployed = cli("deploy", "scorer", "--model-uri", uri2, "--model-digest", digest2,
                   "--registry", served["repository"], "--production-namespace", served["production_namespace"],
                   "--serving-image", dev_env.images["serving"], "--cpu", "250m", "--memory", "512Mi",
                   "--node-selector", "kakehashi.dev/node=real", "--toleration", "kakehashi.dev/node=real:NoSchedule",
                   "--timeout", "600", "-o", "json")
    assert deployed.exit_code == 0, deployed.output
    assert json.loads(deployed.stdout)["status"]["servedDigests"] == [digest2]
    assert predictor.predict([1.0, 0.0, 0.0]) == [2.0]  # the second model answers (the first: 1.0)
    rolled = cli("rollback", "scorer", "--timeout", "300", "-o", "json")
    assert rolled.exit_code == 0, rolled.output
    status = json.loads(rolled.stdout)["status"]
    assert status["servedDigests"] == [digest] and status["history"][-1]["rollback"] is True
    assert status["history"][-1]["changedBy"].endswith(" via kakehashi cli"), status["history"]
    assert ModelService("scorer", connection=connection).predictor().predict([[0, 0, 1]]) == [[3.0]]
