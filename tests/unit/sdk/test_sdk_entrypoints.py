"""Training code from a notebook: a Python function or a notebook shipped in the run's spec,
refused before submitting when it could not run in the training container, and run there by
`python -m kakehashi.trainer.function|notebook` (executed here, in a subprocess, as the
container would: a real kernel and real papermill for notebooks)."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sdk_fakes import FakeConnection

from kakehashi import contract
from kakehashi.sdk import NotFound, SpecConflict, TrainingRun
from kakehashi.sdk.entrypoints import MAX_INLINE, function_entrypoint, notebook_entrypoint
from kakehashi.sdk.training import render_spec
from kakehashi.trainer.notebook import without_outputs

REPO = Path(__file__).resolve().parents[3]
PYTHONPATH = os.pathsep.join([str(REPO / "operator"), str(REPO / "inference")])


def _registered(func: Callable[..., Any]) -> Callable[..., Any]:
    """A decorator that returns the function itself (a registry's habit)."""
    return func


@_registered
def train(out: str, epochs: int = 5, learning_rate: float = 0.01, optimizer: str = "adam", shuffle: bool = True) -> None:
    import json
    from pathlib import Path

    from kakehashi import trainer

    ctx = trainer.context()
    squares = [i * i for i in range(epochs)]  # a comprehension: code of its own
    Path(out).write_text(json.dumps({"epochs": epochs, "learning_rate": learning_rate, "optimizer": optimizer,
                                     "shuffle": shuffle, "squares": squares, "run": ctx.run_name}))


def explode(rate: float = 0.5) -> None:
    if rate > 0.1:
        raise ValueError(f"learning rate {rate} diverges")


def uses_globals(epochs: int = 1) -> None:
    print(json.dumps(REPO.name), epochs)  # json and REPO are this module's, not the container's


def _container(entrypoint: Any, hyperparameters: dict[str, Any], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the entrypoint as the operator's Job would: its command, the hyperparameters as
    JSON and as --key=value arguments (kakehashi.training.children's rendering)."""
    from kakehashi.training.children import hyperparameter_args

    environ = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONPATH": PYTHONPATH,
               contract.ENV_HYPERPARAMETERS: json.dumps(hyperparameters), contract.ENV_RUN_NAME: "digits",
               **entrypoint.env, **env}
    command = [sys.executable if entrypoint.command[0] == "python" else entrypoint.command[0], *entrypoint.command[1:]]
    return subprocess.run([*command, *hyperparameter_args(hyperparameters)], env=environ, cwd=tmp_path,
                          capture_output=True, text=True, timeout=240)


# -- a function ---------------------------------------------------------------------------------

def test_a_function_runs_in_the_container_with_the_hyperparameters_as_typed_keyword_arguments(tmp_path: Path) -> None:
    out = tmp_path / "called.json"
    hyperparameters = {"out": str(out), "epochs": 3, "learning_rate": 0.5, "optimizer": "sgd", "shuffle": False}
    entrypoint = function_entrypoint(train, hyperparameters)
    assert entrypoint.command == ["python", "-m", "kakehashi.trainer.function", "train"]
    source = entrypoint.env[contract.ENV_FUNCTION]
    # Its own source, without the decorator (which the container does not have).
    assert source.startswith("def train(out: str, epochs: int = 5") and "_registered" not in source
    result = _container(entrypoint, hyperparameters, tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text()) == {"epochs": 3, "learning_rate": 0.5, "optimizer": "sgd", "shuffle": False,
                                           "squares": [0, 1, 4], "run": "digits"}
    assert "kakehashi: calling train(epochs=3, learning_rate=0.5, optimizer='sgd', out=" in result.stderr


def test_an_error_in_the_function_fails_the_container_with_a_traceback_showing_its_line(tmp_path: Path) -> None:
    # 2, as the API server hands back 2.0 (JSON numbers): typed like the default 0.5, it is 2.0.
    result = _container(function_entrypoint(explode, {"rate": 2.0}), {"rate": 2}, tmp_path)
    assert result.returncode == 1
    lines = result.stderr.rstrip().splitlines()
    assert lines[-1] == "ValueError: learning rate 2.0 diverges"
    assert 'File "<explode>", line 3, in explode' in result.stderr
    assert 'raise ValueError(f"learning rate {rate} diverges")' in result.stderr  # the line itself


def test_a_hyperparameter_that_cannot_take_its_parameters_type_is_named(tmp_path: Path) -> None:
    result = _container(function_entrypoint(train, {"out": "x", "epochs": 3}), {"out": "x", "epochs": "many"}, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "kakehashi: hyperparameter epochs='many' is not a valid int"


def _closure() -> Callable[..., Any]:
    scale = 2

    def scaled(epochs: int = 1) -> int:
        return epochs * scale

    return scaled


class Trainer:
    def fit(self, epochs: int = 1) -> None:
        pass


async def fit_async(epochs: int = 1) -> None:
    pass


@pytest.mark.parametrize(("func", "message"), [
    (lambda epochs=1: epochs, "a lambda has no source of its own to ship; define the function with def"),
    (_closure(), "scaled is a closure over scale"),
    (uses_globals, "uses REPO, json from the notebook's globals"),
    (Trainer().fit, "Trainer.fit is a method, which needs its instance"),
    (len, "expected a function (def ...), got builtin_function_or_method"),
    (functools.partial(train, out="x"), "expected a function (def ...), got partial"),
    (fit_async, "fit_async is async or a generator"),
])
def test_a_function_that_cannot_run_alone_is_refused_before_submitting(func: Any, message: str) -> None:
    connection = FakeConnection()
    with pytest.raises(ValueError, match=r"^train_func: ") as raised:
        TrainingRun("digits", connection=connection, train_func=func).submit()  # type: ignore[arg-type]
    assert message in str(raised.value)
    assert connection.kube.creates == 0


def test_hyperparameters_must_match_the_functions_parameters() -> None:
    with pytest.raises(ValueError, match=r"^hyperparameters\.epoch: train\(\) has no parameter 'epoch' "
                                         r"\(its parameters: epochs, learning_rate, optimizer, out, shuffle\)"):
        function_entrypoint(train, {"out": "x", "epoch": 3})
    with pytest.raises(ValueError, match=r"^hyperparameters\.out: train\(\) needs it \(no default\)"):
        function_entrypoint(train, {"epochs": 3})

    def anything(**options: Any) -> None:
        pass

    assert function_entrypoint(anything, {"whatever": 1}).command[-1] == "anything"


def test_a_function_run_is_one_run_until_its_code_changes() -> None:
    connection = FakeConnection()
    arguments: dict[str, Any] = {"train_func": train, "hyperparameters": {"out": "/tmp/x", "epochs": 2}}
    first = TrainingRun("digits", connection=connection, **arguments).submit()
    again = TrainingRun("digits", connection=connection, **arguments).submit()
    assert connection.kube.creates == 1 and again.object["metadata"]["uid"] == first.object["metadata"]["uid"]
    spec = first.to_dict()["spec"]
    assert spec["command"] == ["python", "-m", "kakehashi.trainer.function", "train"]
    assert spec["env"] == [{"name": "KAKEHASHI_FUNCTION", "value": first.spec.env[0].value}]
    with pytest.raises(SpecConflict, match="env: "):
        TrainingRun("digits", connection=connection, train_func=explode).submit()


def test_the_code_is_a_command_a_function_or_a_notebook_never_two() -> None:
    with pytest.raises(ValueError, match=r"^train_func: give one of command, train_func or notebook, not command and train_func"):
        render_spec(command="python train.py", train_func=train)
    with pytest.raises(ValueError, match=r"^args: train_func takes its inputs as hyperparameters"):
        render_spec(train_func=train, args=["--fast"], hyperparameters={"out": "x"})
    with pytest.raises(ValueError, match=r"^env.KAKEHASHI_FUNCTION: set by the SDK"):
        render_spec(train_func=train, hyperparameters={"out": "x"}, env={"KAKEHASHI_FUNCTION": "x"})


# -- a notebook ---------------------------------------------------------------------------------

def _cell(source: str, *, tags: tuple[str, ...] = (), kind: str = "code") -> dict[str, Any]:
    cell: dict[str, Any] = {"cell_type": kind, "metadata": {"tags": list(tags)} if tags else {},
                            "source": source.splitlines(keepends=True)}
    if kind == "code":
        cell.update(outputs=[{"output_type": "stream", "name": "stdout", "text": ["old output\n"]}],
                    execution_count=7)
    return cell


def _notebook(path: Path, *cells: dict[str, Any]) -> Path:
    path.write_text(json.dumps({
        "cells": list(cells), "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                     "widgets": {"state": "x" * 1000}},
    }))
    return path


TRAINING_CELLS = (
    _cell("# Digits, the notebook way", kind="markdown"),
    _cell("epochs = 5\nlearning_rate: float = 0.01\n", tags=("parameters",)),
    _cell("import json, os\nfrom kakehashi import trainer\nctx = trainer.context()\n"
          "print(f'training {epochs} epochs at {learning_rate}', flush=True)\n"),
    _cell("assert learning_rate < 1, f'learning rate {learning_rate} diverges'\n"
          "open('result.json', 'w').write(json.dumps({'epochs': epochs, 'run': ctx.run_name,\n"
          "                                           'hyperparameters': ctx.hyperparameters}))\n"),
)


def test_a_local_notebook_travels_without_its_outputs(tmp_path: Path) -> None:
    path = _notebook(tmp_path / "train.ipynb", *TRAINING_CELLS)
    entrypoint = notebook_entrypoint(path, {"epochs": 3}, in_repository=False)
    assert entrypoint.command == ["python", "-m", "kakehashi.trainer.notebook", "train.ipynb"]
    shipped = json.loads(entrypoint.env[contract.ENV_NOTEBOOK])
    assert shipped == without_outputs(json.loads(path.read_text()))
    assert [c.get("outputs") for c in shipped["cells"]] == [None, [], [], []]
    assert shipped["cells"][1]["metadata"] == {"tags": ["parameters"]}
    assert "widgets" not in shipped["metadata"] and "old output" not in entrypoint.env[contract.ENV_NOTEBOOK]
    # In the run's git source, the notebook stays there: only its path travels.
    in_git = notebook_entrypoint("notebooks/train.ipynb", {"epochs": 3}, in_repository=True)
    assert (in_git.command[-1], in_git.env) == ("notebooks/train.ipynb", {})
    spec = render_spec(notebook="notebooks/train.ipynb", git="https://github.com/you/models.git")
    assert spec.command == ["python", "-m", "kakehashi.trainer.notebook", "notebooks/train.ipynb"] and spec.env == []


def test_a_notebook_that_would_ignore_its_hyperparameters_is_refused(tmp_path: Path) -> None:
    no_tag = _notebook(tmp_path / "untagged.ipynb", _cell("epochs = 5\n"), _cell("print(epochs)\n"))
    with pytest.raises(ValueError, match=r"^notebook untagged.ipynb has no cell tagged 'parameters'"):
        render_spec(notebook=no_tag, hyperparameters={"epochs": 3})
    assert render_spec(notebook=no_tag).command[-1] == "untagged.ipynb"  # no hyperparameters: fine
    tagged = _notebook(tmp_path / "train.ipynb", *TRAINING_CELLS)
    with pytest.raises(ValueError, match=r"^hyperparameters\.epoch: the parameters cell of notebook train.ipynb "
                                         r"sets no 'epoch' \(it sets epochs, learning_rate\)"):
        render_spec(notebook=tagged, hyperparameters={"epoch": 3})
    (tmp_path / "not.ipynb").write_text("print('a script')")
    with pytest.raises(ValueError, match=r"^notebook not.ipynb is not a notebook \(.ipynb JSON\)"):
        render_spec(notebook=tmp_path / "not.ipynb")
    with pytest.raises(ValueError, match=r"^notebook: cannot read .*absent.ipynb: No such file"):
        render_spec(notebook=tmp_path / "absent.ipynb")
    huge = _notebook(tmp_path / "huge.ipynb", _cell("x = 1\n" * (MAX_INLINE // 6 + 1)))
    with pytest.raises(ValueError, match=r"^notebook: huge.ipynb is .* characters without its outputs, more than a run carries"):
        render_spec(notebook=huge)
    with pytest.raises(ValueError, match=r"^notebook: '../train.ipynb' must be a relative path"):
        render_spec(notebook="../train.ipynb", git="https://github.com/you/models.git")


@pytest.mark.slow
def test_the_notebook_runs_with_papermill_and_its_executed_copy_is_stored_beside_the_model(tmp_path: Path) -> None:
    entrypoint = notebook_entrypoint(_notebook(tmp_path / "train.ipynb", *TRAINING_CELLS), {"epochs": 3},
                                     in_repository=False)
    work, output = tmp_path / "work", tmp_path / "output"
    work.mkdir()
    result = _container(entrypoint, {"epochs": 3}, work, **{contract.ENV_OUTPUT_URI: output.as_uri() + "/"})
    assert result.returncode == 0, result.stderr
    # The cells' output streams into the container's log; the notebook ran in the working directory.
    assert "training 3 epochs at 0.01" in result.stdout
    # The context inside the kernel holds the run's hyperparameters, not the kernel's arguments
    # (papermill starts it with --HistoryManager.hist_file=:memory:).
    assert json.loads((work / "result.json").read_text()) == {"epochs": 3, "run": "digits",
                                                              "hyperparameters": {"epochs": 3}}
    executed = json.loads((output / "run" / "notebook.ipynb").read_text())
    injected = [c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert [_text(c["source"]) for c in injected] == ["# Parameters\nepochs = 3\n"]
    assert executed["metadata"]["papermill"]["parameters"] == {"epochs": 3}
    printed = [_text(o["text"]) for c in executed["cells"] for o in c.get("outputs", []) if o.get("name") == "stdout"]
    assert printed == ["training 3 epochs at 0.01\n"]
    assert f"kakehashi: executed notebook stored at {output.as_uri()}/run/notebook.ipynb" in result.stderr


@pytest.mark.slow
def test_a_failing_cell_fails_the_container_with_its_error_last_and_the_notebook_still_stored(tmp_path: Path) -> None:
    entrypoint = notebook_entrypoint(_notebook(tmp_path / "train.ipynb", *TRAINING_CELLS), {"learning_rate": 2.0},
                                     in_repository=False)
    output = tmp_path / "output"
    # 2, as the API server hands 2.0 back: injected typed like the parameters cell's 0.01.
    result = _container(entrypoint, {"learning_rate": 2}, tmp_path, **{contract.ENV_OUTPUT_URI: output.as_uri()})
    assert result.returncode == 1
    last = result.stderr.rstrip().splitlines()[-1]
    assert last == ("kakehashi: notebook train.ipynb failed at In [4] (assert learning_rate < 1, f'learning rate "
                    "{learning_rate} diverges'): AssertionError: learning rate 2.0 diverges")
    assert "\x1b[" not in result.stderr  # no terminal colours in the log the status carries
    executed = json.loads((output / "run" / "notebook.ipynb").read_text())
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert [(e["ename"], e["evalue"]) for e in errors] == [("AssertionError", "learning rate 2.0 diverges")]
    injected = [c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert [_text(c["source"]) for c in injected] == ["# Parameters\nlearning_rate = 2.0\n"]


def test_the_executed_notebook_is_found_beside_the_model_of_a_notebook_run_only(tmp_path: Path) -> None:
    connection = FakeConnection()
    path = _notebook(tmp_path / "train.ipynb", *TRAINING_CELLS)
    run = TrainingRun("nb", connection=connection, notebook=path, hyperparameters={"epochs": 2}).submit()
    assert run.executed_notebook_uri is None  # the operator has not written the output URI yet
    connection.kube.patch(_runs(), "team", "nb", {"status": {"outputUri": "s3://models/team/nb/uid-1/"}})
    assert run.refresh().executed_notebook_uri == "s3://models/team/nb/uid-1/run/notebook.ipynb"
    script = TrainingRun("script", connection=connection, command="python train.py").submit()
    connection.kube.patch(_runs(), "team", "script", {"status": {"outputUri": "s3://models/team/script/uid-2/"}})
    assert script.refresh().executed_notebook_uri is None
    with pytest.raises(NotFound, match="is not a notebook run: no executed notebook"):
        script.executed_notebook()


def _text(value: str | list[str]) -> str:
    """A notebook's multi-line string: on disk, a list of lines."""
    return value if isinstance(value, str) else "".join(value)


def _runs() -> Any:
    from kakehashi.api.trainingrun import RESOURCE

    return RESOURCE
