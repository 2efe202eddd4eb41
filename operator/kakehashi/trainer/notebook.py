"""A notebook as the training job: `python -m kakehashi.trainer.notebook NOTEBOOK`.

The run's hyperparameters become the notebook's parameters the way papermill does it: a cell
injected after the cell tagged `parameters` (which holds the defaults) overrides them, each
typed like its default (5 for `learning_rate = 0.1` is injected as 5.0). The
notebook executes with papermill in the training container, its cells' output streaming into the
container's log; the executed notebook, outputs and the injected cell included, is stored in
the run's output prefix beside the model, as `run/notebook.ipynb` (no part of the model: see
`kakehashi.modelformat.RUN_DIR`), whether the notebook succeeded or not. A failing cell fails
the run, its error the last line of the log, which the run's status carries.

The notebook comes from the KAKEHASHI_NOTEBOOK variable (the SDK ships a local notebook so)
or, when that is unset, from the file NOTEBOOK relative to the working directory (a notebook in
the run's git source). Inside the notebook, `kakehashi.trainer.context()` and `trainer.save()`
work as in a script.

The helpers above `main` are pure (no papermill) so the SDK checks a notebook before it submits.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from kakehashi import contract
from kakehashi.modelformat import EXECUTED_NOTEBOOK
from kakehashi.trainer.context import HyperparameterValue, TrainingContext, context, typed_like
from kakehashi.trainer.data import local_path, s3_client

KERNEL: Final = "python3"
KERNEL_START_TIMEOUT_S: Final = 300
# papermill colours tracebacks for terminals; the log and the run's status are plain text.
_ANSI: Final = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class NotebookError(ValueError):
    """The notebook cannot run as a training job (not a notebook, no parameters cell...)."""


def cell_source(cell: Mapping[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def read_notebook(text: str, name: str) -> dict[str, Any]:
    """The notebook in `text` (an .ipynb's JSON), checked to be one papermill can run."""
    try:
        notebook = json.loads(text)
    except json.JSONDecodeError as error:
        raise NotebookError(f"notebook {name} is not a notebook (.ipynb JSON): {error}") from None
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
        raise NotebookError(f"notebook {name} is not a notebook: no list of cells")
    if notebook.get("nbformat") != 4:
        raise NotebookError(f"notebook {name} is nbformat {notebook.get('nbformat')!r}; "
                            "papermill runs nbformat 4 (save it again with Jupyter)")
    return notebook


def parameters_cell(notebook: Mapping[str, Any]) -> dict[str, Any] | None:
    """The first code cell tagged `parameters`, papermill's convention for the defaults."""
    for cell in notebook.get("cells", []):
        tags = (cell.get("metadata") or {}).get("tags") or []
        if cell.get("cell_type") == "code" and contract.PARAMETERS_TAG in tags:
            return dict(cell)
    return None


def assigned_names(source: str) -> set[str] | None:
    """Names a cell assigns at its top level; None when it is not plain Python (magics)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    names: set[str] = set()
    for node in tree.body:
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            targets = [node.target]
        for target in targets:
            for leaf in ast.walk(target):
                if isinstance(leaf, ast.Name):
                    names.add(leaf.id)
    return names


def default_values(notebook: Mapping[str, Any]) -> dict[str, object]:
    """The literal values the parameters cell assigns (`epochs = 5`), to type the injected
    hyperparameters like; names assigned anything else are left out."""
    cell = parameters_cell(notebook)
    try:
        tree = ast.parse(cell_source(cell)) if cell else None
    except SyntaxError:
        return {}
    found: dict[str, object] = {}
    for node in tree.body if tree else []:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name):
            try:
                found[target.id] = ast.literal_eval(value)
            except ValueError:
                continue
    return found


def check_parameters(notebook: Mapping[str, Any], hyperparameters: Mapping[str, HyperparameterValue],
                     name: str) -> None:
    """Refuse hyperparameters the notebook would silently ignore.

    Without a `parameters` cell papermill injects them at the top, where the notebook's own
    assignments of the same names override them; a name the parameters cell does not set is
    most likely a typo of one it does.
    """
    if not hyperparameters:
        return
    cell = parameters_cell(notebook)
    if cell is None:
        raise NotebookError(
            f"notebook {name} has no cell tagged {contract.PARAMETERS_TAG!r}, so its own values "
            f"would override the hyperparameters ({', '.join(sorted(hyperparameters))}): tag the "
            "cell that sets their defaults (Jupyter: View > Cell toolbar > Tags, papermill's convention)")
    names = assigned_names(cell_source(cell))
    if names is None:
        return
    unknown = sorted(set(hyperparameters) - names)
    if unknown:
        raise NotebookError(
            f"hyperparameters.{unknown[0]}: the parameters cell of notebook {name} sets no "
            f"{unknown[0]!r} (it sets {', '.join(sorted(names)) or 'nothing'})")


def without_outputs(notebook: Mapping[str, Any]) -> dict[str, Any]:
    """The notebook as it is to run: code cells without outputs and execution counts, and
    only the tags of each cell's metadata (papermill needs those; the rest is the editor's)."""
    cells = []
    for cell in notebook.get("cells", []):
        kept: dict[str, Any] = {"cell_type": cell.get("cell_type", "code"), "source": cell_source(cell)}
        if "id" in cell:  # nbformat 4.5 cell ids: kept, so the executed notebook's cells match
            kept["id"] = cell["id"]
        tags = (cell.get("metadata") or {}).get("tags")
        kept["metadata"] = {"tags": list(tags)} if tags else {}
        if kept["cell_type"] == "code":
            kept.update(outputs=[], execution_count=None)
        cells.append(kept)
    metadata = {key: value for key, value in (notebook.get("metadata") or {}).items()
                if key in ("kernelspec", "language_info")}
    return {"cells": cells, "metadata": metadata, "nbformat": 4,
            "nbformat_minor": notebook.get("nbformat_minor", 5)}


# -- in the training container ---------------------------------------------------------------

def execute(source: Path, executed: Path, parameters: Mapping[str, HyperparameterValue], cwd: Path) -> None:
    """Run `source` with papermill, writing `executed` as it goes (a failure leaves the cells
    run so far, the failing one with its error). Raises papermill's PapermillExecutionError."""
    import papermill

    papermill.execute_notebook(
        str(source), str(executed), parameters=dict(parameters), kernel_name=KERNEL, cwd=str(cwd),
        # No cell timeout (the run's activeDeadlineSeconds is the bound); the kernel may take
        # longer than papermill's 60 s to start on a node busy with other training.
        start_timeout=KERNEL_START_TIMEOUT_S, execution_timeout=None,
        progress_bar=False, log_output=False, stdout_file=sys.stdout, stderr_file=sys.stderr)


def store(executed: Path, ctx: TrainingContext) -> str | None:
    """Put the executed notebook at `<output>/run/notebook.ipynb`; where it went, or None
    without an output URI (a notebook run by hand) or on a replica that is not the chief."""
    if not ctx.output_uri or not ctx.is_chief:
        return None
    base = ctx.output_uri if ctx.output_uri.endswith("/") else ctx.output_uri + "/"
    uri = base + EXECUTED_NOTEBOOK
    destination = local_path(uri)
    if destination is not None:
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(executed, destination)
    else:
        from kakehashi.artifacts import parse_s3_uri

        bucket, prefix = parse_s3_uri(base)
        s3_client().upload_file(str(executed), bucket, prefix + EXECUTED_NOTEBOOK,
                                ExtraArgs={"ContentType": "application/x-ipynb+json"})
    return uri


def describe_failure(error: Any, name: str) -> str:
    """The failing cell's traceback and, last (the line a run's status shows first), what failed."""
    traceback = _ANSI.sub("", "\n".join(getattr(error, "traceback", None) or [])).rstrip()
    first_line = (getattr(error, "source", "") or "").strip().splitlines()[:1]
    # "In [n]": how the executed notebook labels the cell (papermill's parameters cells count).
    where = f"In [{getattr(error, 'exec_count', '?')}]" + (f" ({first_line[0][:80]})" if first_line else "")
    summary = f"kakehashi: notebook {name} failed at {where}: {error.ename}: {error.evalue}"
    return f"{traceback}\n{summary}" if traceback else summary


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    ctx = context(sys.argv[1:] if argv is None else argv, env)
    if len(ctx.args) != 1:
        print(f"usage: python -m {contract.NOTEBOOK_MODULE} NOTEBOOK [--key=value ...]", file=sys.stderr)
        return 2
    name = ctx.args[0]
    inline = env.get(contract.ENV_NOTEBOOK)
    try:
        from papermill.exceptions import PapermillExecutionError
    except ModuleNotFoundError:
        print("kakehashi: papermill is not installed in this training image: a notebook runs in an "
              "image with pip install 'kakehashi[train,notebook]' (the platform's notebook images)",
              file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="kakehashi-notebook-") as scratch:
        if inline:
            source, cwd = Path(scratch) / Path(name).name, Path.cwd()
            source.write_text(inline)
        else:
            source = Path(name).resolve()
            cwd = source.parent
            if not source.is_file():
                print(f"kakehashi: no notebook {name} in {Path.cwd()}", file=sys.stderr)
                return 2
        try:
            notebook = read_notebook(source.read_text(), name)
            check_parameters(notebook, ctx.hyperparameters, name)
            parameters = typed_like(ctx.hyperparameters, default_values(notebook))
        except ValueError as error:
            print(f"kakehashi: {error}", file=sys.stderr)
            return 2
        executed = Path(scratch) / "executed.ipynb"
        shown = ", ".join(f"{k}={v!r}" for k, v in sorted(parameters.items()))
        print(f"kakehashi: executing notebook {name} with papermill ({shown or 'no parameters'})",
              file=sys.stderr, flush=True)
        failure: PapermillExecutionError | None = None
        try:
            execute(source, executed, parameters, cwd)
        except PapermillExecutionError as error:
            failure = error
        finally:
            # Stored even when a cell failed: the executed notebook shows where and why.
            if executed.exists():
                stored = store(executed, ctx)
                if stored:
                    print(f"kakehashi: executed notebook stored at {stored}", file=sys.stderr, flush=True)
        if failure is not None:
            print(describe_failure(failure, name), file=sys.stderr, flush=True)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
