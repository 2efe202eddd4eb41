"""The CLI verbs: tables by default, the resources as JSON or YAML with -o, SDK errors as messages."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from sdk_fakes import FakeConnection

from kakehashi.cli import main
from kakehashi.sdk import cli, output

VERBS = ("train", "runs", "status", "logs", "deploy", "services", "rollback", "predict")


@pytest.fixture
def connection(monkeypatch: pytest.MonkeyPatch) -> FakeConnection:
    fake = FakeConnection()
    monkeypatch.setattr(cli, "_connect", lambda kubeconfig, namespace: fake)
    return fake


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(verb: str) -> None:
    result = CliRunner().invoke(main, [verb, "--help"], prog_name="kakehashi")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: kakehashi {verb} [OPTIONS]")


def test_train_submits_the_command_after_the_dashes_and_prints_a_row(connection: FakeConnection) -> None:
    result = CliRunner().invoke(main, ["train", "digits", "-p", "epochs=5", "-p", "lr=0.01", "-p", "opt=adam",
                                       "--gate", "loss<=0.2", "--", "python", "train.py", "--fast"])
    assert result.exit_code == 0, result.output
    header, row = result.output.splitlines()
    assert header.split() == ["NAME", "PHASE", "REASON", "PROMOTABLE", "METRICS", "AGE"]
    assert row.split()[:5] == ["digits", "-", "-", "-", "-"]
    spec = connection.kube.objects[("trainingruns", "team", "digits")]["spec"]
    assert spec["command"] == ["python", "train.py", "--fast"]
    assert spec["hyperparameters"] == {"epochs": 5, "lr": 0.01, "opt": "adam"}
    assert spec["gate"] == {"metric": "loss", "threshold": 0.2, "direction": "lower"}


def test_train_again_with_another_spec_is_an_error_message_not_a_traceback(connection: FakeConnection) -> None:
    CliRunner().invoke(main, ["train", "digits", "-p", "epochs=5"])
    result = CliRunner().invoke(main, ["train", "digits", "-p", "epochs=6"])
    assert result.exit_code == 1
    assert "Error: TrainingRun 'digits' already exists with a different spec" in result.output
    assert "Traceback" not in result.output


def _seed_runs(connection: FakeConnection) -> None:
    runner = CliRunner()
    for name in ("digits", "mnist-long-name"):
        assert runner.invoke(main, ["train", name]).exit_code == 0
    connection.kube.objects[("trainingruns", "team", "digits")]["status"] = {
        "phase": "Succeeded", "reason": "Completed",
        "model": {"uri": "s3://m/d/", "digest": "sha256:" + "a" * 64, "metrics": {"accuracy": 0.97321, "loss": 0.1}},
        "conditions": [{"type": "Promotable", "status": "True", "reason": "GatePassed", "message": ""}],
    }


def test_runs_is_an_aligned_table(connection: FakeConnection) -> None:
    _seed_runs(connection)
    result = CliRunner().invoke(main, ["runs"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[0] for line in lines] == ["NAME", "digits", "mnist-long-name"]
    # Columns line up: each header starts where its cells start.
    start = lines[0].index("PHASE")
    assert lines[1][start:].startswith("Succeeded") and lines[2][start:].startswith("-")
    assert "accuracy=0.9732,loss=0.1" in lines[1] and "True" in lines[1]


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_runs_as_json_or_yaml_are_the_resources(connection: FakeConnection, fmt: str) -> None:
    _seed_runs(connection)
    result = CliRunner().invoke(main, ["runs", "-o", fmt])
    assert result.exit_code == 0, result.output
    parsed = json.loads(result.output) if fmt == "json" else yaml.safe_load(result.output)
    assert [item["metadata"]["name"] for item in parsed] == ["digits", "mnist-long-name"]
    assert parsed[0]["status"]["model"]["metrics"]["accuracy"] == 0.97321


def test_status_shows_the_message_and_conditions(connection: FakeConnection) -> None:
    _seed_runs(connection)
    result = CliRunner().invoke(main, ["status", "digits"])
    assert result.exit_code == 0, result.output
    assert "Model: s3://m/d/ sha256:" in result.output
    assert "CONDITION" in result.output and "GatePassed" in result.output
    missing = CliRunner().invoke(main, ["status", "nope"])
    assert missing.exit_code == 1 and "TrainingRun team/nope does not exist" in missing.output


def test_deploy_without_waiting_prints_the_service_and_services_lists_it(
    connection: FakeConnection, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kakehashi.sdk.serving import ModelService

    monkeypatch.setattr(ModelService, "predictor", lambda self, kubeconfig=None: None)
    result = CliRunner().invoke(main, ["deploy", "digits", "--run", "digits", "--registry", "r/m",
                                       "--production-namespace", "inference", "--no-wait",
                                       "--toleration", "kakehashi.dev/node=real:NoSchedule"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].split() == ["NAME", "PHASE", "REASON", "READY", "MODEL", "IMAGE", "AGE"]
    spec = connection.kube.objects[("modelservices", "team", "digits")]["spec"]
    assert spec["tolerations"] == [{"key": "kakehashi.dev/node", "value": "real", "effect": "NoSchedule"}]
    listed = CliRunner().invoke(main, ["services", "-o", "json"])
    assert [s["metadata"]["name"] for s in json.loads(listed.output)] == ["digits"]


def test_deploy_needs_exactly_one_model(connection: FakeConnection) -> None:
    result = CliRunner().invoke(main, ["deploy", "digits", "--registry", "r/m", "--production-namespace", "p"])
    assert result.exit_code == 2 and "give --run, or --model-uri with --model-digest" in result.output


def test_table_and_age_helpers() -> None:
    from datetime import UTC, datetime

    assert output.table([{"a": "x", "bb": None}], ("a", "bb")) == "A   BB\nx   -"
    now = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
    assert [output.age(t, now) for t in ("2026-11-26T11:59:15Z", "2026-11-26T11:48:00Z",
                                         "2026-11-26T09:00:00Z", "2026-11-24T12:00:00Z")] == ["45s", "12m", "3h", "2d"]


def test_without_the_sdk_extra_help_works_and_a_verb_says_what_to_install() -> None:
    import subprocess
    import sys

    script = (
        "import sys; sys.modules['kubernetes'] = None\n"
        "from click.testing import CliRunner\n"
        "from kakehashi.cli import main\n"
        "assert CliRunner().invoke(main, ['runs', '--help']).exit_code == 0\n"
        "result = CliRunner().invoke(main, ['runs'])\n"
        "print(result.exit_code, result.output)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.startswith("1 Error: kubernetes is not installed: this verb needs pip install 'kakehashi[sdk]'")


def test_train_a_notebook_and_its_status_says_where_the_executed_notebook_is(
        connection: FakeConnection, tmp_path: Any) -> None:
    notebook = tmp_path / "train.ipynb"
    notebook.write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": "epochs = 5\n", "outputs": [],
         "execution_count": None}]}))
    result = CliRunner().invoke(main, ["train", "nb", "--notebook", str(notebook), "-p", "epochs=3"])
    assert result.exit_code == 0, result.output
    stored = connection.kube.objects[("trainingruns", "team", "nb")]
    assert stored["spec"]["command"] == ["python", "-m", "kakehashi.trainer.notebook", "train.ipynb"]
    assert [e["name"] for e in stored["spec"]["env"]] == ["KAKEHASHI_NOTEBOOK"]
    stored["status"] = {"phase": "Succeeded", "outputUri": "s3://models/team/nb/u1/"}
    status = CliRunner().invoke(main, ["status", "nb"])
    assert "Executed notebook: s3://models/team/nb/u1/run/notebook.ipynb" in status.output

    typo = CliRunner().invoke(main, ["train", "nb2", "--notebook", str(notebook), "-p", "epoch=3"])
    assert typo.exit_code == 1 and "Traceback" not in typo.output
    assert "hyperparameters.epoch: the parameters cell of notebook train.ipynb sets no 'epoch'" in typo.output
    both = CliRunner().invoke(main, ["train", "nb3", "--notebook", str(notebook), "--", "python", "x.py"])
    assert both.exit_code == 1 and "give one of command, train_func or notebook" in both.output
