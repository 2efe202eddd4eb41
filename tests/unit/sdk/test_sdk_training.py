"""TrainingRun in the SDK: arguments render the resource's own spec; submit is idempotent."""

from __future__ import annotations

import io
from typing import Any

import pytest
from pydantic import ValidationError
from sdk_fakes import FakeConnection

from kakehashi.api.trainingrun import DEFAULT_IMAGE, TrainingRunSpec
from kakehashi.sdk import NotFound, RunFailed, SpecConflict, TrainingRun
from kakehashi.sdk.training import LABEL_RUN, render_spec, spec_differences, split_failure


def _run(connection: FakeConnection, **arguments: Any) -> TrainingRun:
    return TrainingRun("digits", connection=connection, **arguments)  # type: ignore[arg-type]


def test_arguments_render_the_resource_spec() -> None:
    spec = render_spec(
        image="registry/train:1", command="python train.py --fast", hyperparameters={"epochs": 5, "lr": 0.01},
        data="s3://data/digits/", replicas=3, gpu=1, memory="4Gi", git="https://github.com/you/models.git",
        revision="v2", gate=("accuracy", 0.9), env={"SEED": "1"}, deadline_seconds=600,
        pod_annotations={"sidecar.istio.io/inject": "false"},
    )
    assert spec.command == ["python", "train.py", "--fast"]
    assert (spec.replicas.worker, spec.replicas.distributed) == (3, True)
    assert spec.resources is not None and (spec.resources.gpu, spec.resources.memory) == (1, "4Gi")
    assert spec.source is not None and spec.source.git is not None
    assert (spec.source.git.url, spec.source.git.revision) == ("https://github.com/you/models.git", "v2")
    assert spec.gate is not None and (spec.gate.metric, spec.gate.threshold, spec.gate.direction) == ("accuracy", 0.9, "higher")
    assert spec.run_policy.active_deadline_seconds == 600
    assert spec.env[0].name == "SEED"
    assert spec.pod_metadata is not None and spec.pod_metadata.annotations == {"sidecar.istio.io/inject": "false"}


def test_the_submitted_body_holds_only_what_was_asked_and_the_api_server_fills_in_the_rest() -> None:
    run = _run(FakeConnection(), command=["python", "train.py"], hyperparameters={"epochs": 2})
    body = run.to_dict()
    assert body["apiVersion"] == "kakehashi.dev/v1alpha1" and body["kind"] == "TrainingRun"
    assert body["metadata"] == {"name": "digits", "namespace": "team"}
    assert body["spec"] == {"command": ["python", "train.py"], "hyperparameters": {"epochs": 2}}
    # What the API server returns, its defaults applied, is the same spec.
    defaulted = TrainingRunSpec.model_validate(body["spec"]).model_dump(mode="json", by_alias=True)
    assert defaulted["image"] == DEFAULT_IMAGE and defaulted["replicas"]["worker"] == 1
    assert spec_differences(TrainingRunSpec.model_validate(defaulted), run.spec) == {}


def test_invalid_arguments_are_refused_before_anything_is_sent() -> None:
    with pytest.raises(ValidationError, match=r"data\.uri"):
        render_spec(data="/local/path")
    with pytest.raises(ValidationError, match="worker"):
        render_spec(replicas=1000)


def test_submitting_the_same_run_twice_is_one_run() -> None:
    connection = FakeConnection()
    first = _run(connection, command="python train.py", hyperparameters={"epochs": 2}).submit()
    again = _run(connection, command="python train.py", hyperparameters={"epochs": 2}).submit()
    assert connection.kube.creates == 1
    assert first.object["metadata"]["uid"] == again.object["metadata"]["uid"]


def test_the_same_name_with_another_spec_is_refused_naming_what_differs() -> None:
    connection = FakeConnection()
    _run(connection, hyperparameters={"epochs": 2}).submit()
    with pytest.raises(SpecConflict) as raised:
        _run(connection, hyperparameters={"epochs": 3}).submit()
    assert set(raised.value.differences) == {"hyperparameters"}
    text = str(raised.value)
    assert "'digits' already exists with a different spec" in text
    assert "{'epochs': 2} there, {'epochs': 3} here" in text and "TrainingRun.attach('digits')" in text
    assert connection.kube.creates == 1


def test_attach_finds_a_run_by_name_and_says_when_there_is_none() -> None:
    connection = FakeConnection()
    _run(connection, gate=("accuracy", 0.8)).submit()
    attached = TrainingRun.attach("digits", connection=connection)  # type: ignore[arg-type]
    assert attached.spec.gate is not None and attached.spec.gate.threshold == 0.8
    with pytest.raises(NotFound, match="team/other does not exist"):
        TrainingRun.attach("other", connection=connection)  # type: ignore[arg-type]


def test_metrics_come_from_the_recorded_model() -> None:
    connection = FakeConnection()
    run = _run(connection).submit()
    assert run.metrics == {}
    connection.kube.objects[("trainingruns", "team", "digits")]["status"] = {
        "phase": "Succeeded",
        "model": {"uri": "s3://m/team/digits/", "digest": "sha256:" + "a" * 64, "metrics": {"accuracy": 0.97}},
        "conditions": [{"type": "Promotable", "status": "True", "reason": "GatePassed", "message": ""}],
    }
    assert run.metrics == {"accuracy": 0.97}
    assert run.promotable is True and run.phase == "Succeeded"


def test_a_failure_carries_its_reason_and_the_log_tail() -> None:
    # As the operator writes it: what happened, a note on the retries, then the log's last lines.
    message = ("container trainer in pod digits-x exited with code 3; last log lines: (failed 1 time(s), "
               "runPolicy.backoffLimit=0)\nepoch 1/5\nValueError: NaN loss")
    what, tail = split_failure(message)
    assert what == "container trainer in pod digits-x exited with code 3 (failed 1 time(s), runPolicy.backoffLimit=0)"
    assert tail == "epoch 1/5\nValueError: NaN loss"
    assert split_failure("activeDeadlineSeconds=2s exceeded") == ("activeDeadlineSeconds=2s exceeded", "")
    text = str(RunFailed("digits", "NonZeroExitCode", what, tail))
    assert text.startswith("TrainingRun 'digits' failed: NonZeroExitCode: container trainer")
    assert text.endswith("--- last lines of its log ---\nepoch 1/5\nValueError: NaN loss")


def test_the_pod_label_is_the_operators() -> None:
    from kakehashi.training.children import LABEL_RUN as OPERATOR_LABEL

    assert LABEL_RUN == OPERATOR_LABEL


def test_progress_as_plain_lines_says_each_phase_once_with_the_time() -> None:
    from kakehashi.sdk.progress import Progress

    out = io.StringIO()
    progress = Progress("TrainingRun digits", ["Pending", "Running", "Succeeded"], "auto", out)
    for phase in ("Pending", "Pending", "Running", "Succeeded"):
        progress.update(phase)
    progress.close()
    lines = out.getvalue().splitlines()
    assert [line.split(" after ")[0] for line in lines] == [
        "TrainingRun digits: Pending", "TrainingRun digits: Running", "TrainingRun digits: Succeeded"]
    assert all(line.endswith(" s") for line in lines)


def test_progress_draws_a_bar_when_asked() -> None:
    from kakehashi.sdk.progress import Progress

    out = io.StringIO()
    progress = Progress("ModelService digits", ["Baking", "Deploying", "Ready"], "bar", out)
    progress.update("Baking", "bake Job running")
    progress.update("Ready")
    assert progress.bar.n == 3
    progress.close()
    text = out.getvalue()
    assert "ModelService digits: Baking (bake Job running) after" in text and "3/3" in text
