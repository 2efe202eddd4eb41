"""The run context a training script sees: hyperparameters, lineage and its distributed role."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kakehashi import contract
from kakehashi.trainer import context, parse_hyperparameters, parse_tf_config


def test_json_hyperparameters_keep_their_types() -> None:
    params, rest = parse_hyperparameters('{"epochs": 5, "lr": 0.01, "augment": true, "opt": "adam"}')
    assert params == {"epochs": 5, "lr": 0.01, "augment": True, "opt": "adam"}
    assert isinstance(params["epochs"], int) and isinstance(params["augment"], bool)
    assert rest == []


def test_args_the_operator_adds_agree_with_json_and_keep_json_types() -> None:
    # The operator passes the same map both ways; "--tag=007" must not become the int 7.
    params, _ = parse_hyperparameters(
        '{"epochs": 5, "lr": 0.5, "tag": "007", "shuffle": false}',
        ["--epochs=5", "--lr=0.5", "--tag=007", "--shuffle=False"],
    )
    assert params == {"epochs": 5, "lr": 0.5, "tag": "007", "shuffle": False}
    assert isinstance(params["shuffle"], bool)


def test_args_override_json_and_are_typed_by_it() -> None:
    params, _ = parse_hyperparameters('{"epochs": 5, "lr": 0.5}', ["--epochs=20", "--lr=1"])
    assert params == {"epochs": 20, "lr": 1.0}
    assert isinstance(params["lr"], float)


def test_args_alone_get_plausible_types_and_other_args_are_passed_through() -> None:
    params, rest = parse_hyperparameters(
        None, ["--epochs=3", "--lr=1e-3", "--fast=true", "--name=nan", "-v", "data.csv", "--flag"]
    )
    assert params == {"epochs": 3, "lr": 0.001, "fast": True, "name": "nan"}
    assert rest == ["-v", "data.csv", "--flag"]


@pytest.mark.parametrize(
    ("json_text", "argv", "message"),
    [
        ("[1, 2]", [], "JSON object"),
        ("{not json", [], "not valid JSON"),
        ('{"layers": [64, 32]}', [], "layers"),
        ('{"epochs": 5}', ["--epochs=many"], "epochs='many' is not a valid int"),
    ],
)
def test_bad_hyperparameters_fail_naming_the_problem(
    json_text: str, argv: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        parse_hyperparameters(json_text, argv)


def test_get_converts_to_the_type_of_the_default() -> None:
    ctx = context(argv=["--epochs=7", "--lr=0.1", "--debug=true"], environ={})
    assert ctx.get("epochs", 10) == 7
    assert ctx.get("lr", 0.5) == 0.1
    assert ctx.get("debug", False) is True
    assert ctx.get("missing", "adam") == "adam"
    with pytest.raises(ValueError, match="lr"):
        ctx.get("lr", 1)  # 0.1 is not an int: silently truncating it would train the wrong model


@pytest.mark.parametrize(
    ("tf_config", "chief"),
    [
        (None, True),
        ("", True),
        ('{"cluster": {"worker": ["w0:2222"]}, "task": {"type": "worker", "index": 0}}', True),
        ('{"cluster": {"worker": ["w0:2222", "w1:2222"]}, "task": {"type": "worker", "index": 0}}',
         True),
        ('{"cluster": {"worker": ["w0:2222", "w1:2222"]}, "task": {"type": "worker", "index": 1}}',
         False),
        ('{"cluster": {"chief": ["c:2222"], "worker": ["w0:2222"]}, '
         '"task": {"type": "chief", "index": 0}}', True),
        ('{"cluster": {"chief": ["c:2222"], "worker": ["w0:2222"]}, '
         '"task": {"type": "worker", "index": 0}}', False),
        ('{"cluster": {"master": ["m:2222"], "worker": ["w0:2222"]}, '
         '"task": {"type": "master", "index": 0}}', True),
        ('{"cluster": {"worker": ["w0:2222"], "ps": ["p0:2222"]}, "task": {"type": "ps", "index": 0}}',
         False),
        ('{"cluster": {"worker": ["w0:2222"]}, "task": {"type": "evaluator", "index": 0}}', False),
    ],
)
def test_only_one_replica_is_chief(tf_config: str | None, chief: bool) -> None:
    assert parse_tf_config(tf_config).is_chief is chief
    environ = {} if tf_config is None else {"TF_CONFIG": tf_config}
    assert context(argv=[], environ=environ).is_chief is chief


def test_replica_count_counts_chief_and_workers() -> None:
    task = parse_tf_config(
        '{"cluster": {"chief": ["c:1"], "worker": ["w0:1", "w1:1"], "ps": ["p:1"]},'
        ' "task": {"type": "worker", "index": 1}}'
    )
    assert (task.type, task.index, task.num_replicas) == ("worker", 1, 3)
    assert parse_tf_config(None).num_replicas == 1


def test_context_reads_everything_the_operator_injects(tmp_path: Path) -> None:
    commit_file = tmp_path / "commit"
    commit_file.write_text("0123456789abcdef0123456789abcdef01234567\n")
    environ = {
        contract.ENV_RUN_ID: "uid-1",
        contract.ENV_RUN_NAME: "digits",
        contract.ENV_NAMESPACE: "team-a",
        contract.ENV_HYPERPARAMETERS: json.dumps({"epochs": 3}),
        contract.ENV_DATA_URI: "s3://data/digits/",
        contract.ENV_OUTPUT_URI: "s3://kakehashi-models/team-a/digits/uid-1/",
        contract.ENV_SOURCE_GIT_URL: "https://git.example/ml.git",
        contract.ENV_SOURCE_GIT_REVISION: "main",
        contract.ENV_SOURCE_COMMIT_FILE: str(commit_file),
        contract.ENV_WORKSPACE: str(tmp_path),
    }
    ctx = context(argv=["--epochs=3"], environ=environ)
    assert ctx.hyperparameters == {"epochs": 3}
    assert (ctx.run_id, ctx.run_name, ctx.namespace) == ("uid-1", "digits", "team-a")
    assert ctx.data_uri == "s3://data/digits/"
    assert ctx.output_uri == "s3://kakehashi-models/team-a/digits/uid-1/"
    assert ctx.git.url == "https://git.example/ml.git"
    assert ctx.git.revision == "main"
    assert ctx.git.commit == "0123456789abcdef0123456789abcdef01234567"
    assert ctx.workspace == tmp_path


def test_a_missing_commit_file_leaves_the_commit_unknown(tmp_path: Path) -> None:
    ctx = context(argv=[], environ={contract.ENV_SOURCE_COMMIT_FILE: str(tmp_path / "absent")})
    assert ctx.git.commit is None


def test_importing_the_runtime_does_not_import_tensorflow() -> None:
    # The operator image has no TensorFlow and imports kakehashi.artifacts to read model.json.
    code = ("import sys, kakehashi.artifacts, kakehashi.trainer; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
