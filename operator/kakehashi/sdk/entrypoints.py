"""Training code from the notebook itself: a Python function, or a notebook file.

    def train(epochs=5, learning_rate=0.01):
        from kakehashi import trainer          # imports inside: the function runs elsewhere
        ...
        trainer.save(model, labels=..., metrics={"accuracy": acc})

    TrainingRun("digits", train_func=train, hyperparameters={"epochs": 20}).submit()
    TrainingRun("digits", notebook="train.ipynb", hyperparameters={"epochs": 20}).submit()

A function travels as its source (inspect.getsource), as Kubeflow's
`TrainingClient.create_job(train_func=...)` sends it, never pickled: the run's spec records
the code that trained, readable with `kubectl get -o yaml`, and what runs does not depend on
the notebook's Python matching the image's. So the function must stand alone: no closure, no
lambda, nothing from the notebook's globals (import inside it, pass values as hyperparameters,
which arrive as its keyword arguments). Both are checked here, before anything is submitted.

A notebook travels as its JSON with outputs cleared, or stays in the run's git source; it runs
with papermill (`kakehashi.trainer.notebook`), the hyperparameters injected after its cell
tagged `parameters`.
"""

from __future__ import annotations

import ast
import dis
import inspect
import json
import textwrap
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Final

from kakehashi import contract
from kakehashi.trainer.notebook import check_parameters, read_notebook, without_outputs

# An environment variable's longest value in the TrainingRun CRD (EnvVar.value): what a spec
# can carry; a longer notebook belongs in git.
MAX_INLINE: Final = 32768
PYTHON: Final = "python"


@dataclass(frozen=True)
class Entrypoint:
    """The container's command and the variables that carry the code."""

    command: list[str]
    env: dict[str, str] = field(default_factory=dict)


# -- a function --------------------------------------------------------------------------------

def _code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            yield from _code_objects(constant)


def _globals_used(func: types.FunctionType) -> list[str]:
    """Names the function (and any function or comprehension inside it) reads from its
    module's globals: what the training container, which runs the source alone, lacks.
    Read from the bytecode, so `keras.layers` is not taken for a global named `layers`."""
    used: set[str] = set()
    for code in _code_objects(func.__code__):
        for instruction in dis.get_instructions(code):
            if instruction.opname in ("LOAD_GLOBAL", "LOAD_NAME") and isinstance(instruction.argval, str):
                used.add(instruction.argval)
    module_globals = func.__globals__
    return sorted(name for name in used
                  if name in module_globals and module_globals[name] is not func)


def _source(func: types.FunctionType) -> str:
    """The function's own source, dedented, its decorators left out (they would need the
    notebook's globals, and what they return is not what is shipped)."""
    name = func.__name__
    try:
        text = textwrap.dedent(inspect.getsource(func))
    except (OSError, TypeError) as error:
        raise ValueError(f"train_func: the source of {name} is not available ({error}); define it "
                         "in a notebook cell or a .py file") from None
    try:
        tree = ast.parse(text)
    except SyntaxError as error:
        raise ValueError(f"train_func: the source of {name} does not parse on its own: {error}") from None
    node = tree.body[0] if tree.body else None
    if not isinstance(node, ast.FunctionDef) or node.name != name:
        raise ValueError(f"train_func: {name}'s source is not a plain `def {name}(...)`")
    return "\n".join(text.splitlines()[node.lineno - 1:]) + "\n"


def _check_signature(func: types.FunctionType, hyperparameters: Mapping[str, Any]) -> None:
    """The hyperparameters are the function's keyword arguments: each must be one of its
    parameters, and every parameter without a default must be given."""
    name = func.__name__
    parameters = inspect.signature(func).parameters.values()
    keyword = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if not any(p.kind == p.VAR_KEYWORD for p in parameters):
        unknown = sorted(set(hyperparameters) - keyword)
        if unknown:
            raise ValueError(f"hyperparameters.{unknown[0]}: {name}() has no parameter {unknown[0]!r} "
                             f"(its parameters: {', '.join(sorted(keyword)) or 'none'})")
    for parameter in parameters:
        required = parameter.default is parameter.empty
        if parameter.kind == parameter.POSITIONAL_ONLY and required:
            raise ValueError(f"train_func: {name}() takes {parameter.name!r} by position only; "
                             "hyperparameters arrive by keyword: drop the `/` or give it a default")
        if parameter.name in keyword and required and parameter.name not in hyperparameters:
            raise ValueError(f"hyperparameters.{parameter.name}: {name}() needs it (no default)")


def function_entrypoint(func: Callable[..., Any], hyperparameters: Mapping[str, Any]) -> Entrypoint:
    """The command and variables that run `func(**hyperparameters)` in the training container.
    ValueError, naming the argument, for a function that cannot run there."""
    if inspect.ismethod(func):
        raise ValueError(f"train_func: {func.__qualname__} is a method, which needs its instance; "
                         "use a function defined at the top of a cell or module")
    if not isinstance(func, types.FunctionType):
        raise ValueError(f"train_func: expected a function (def ...), got {type(func).__name__} {func!r}")
    name = func.__name__
    if name == "<lambda>":
        raise ValueError("train_func: a lambda has no source of its own to ship; define the "
                         "function with def")
    if inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func) or inspect.isgeneratorfunction(func):
        raise ValueError(f"train_func: {name} is async or a generator; the training container calls "
                         "a plain function once")
    if func.__code__.co_freevars:
        raise ValueError(
            f"train_func: {name} is a closure over {', '.join(func.__code__.co_freevars)} (variables of "
            "the function it is defined in), which do not travel with its source: define it at the "
            "top level and pass values as hyperparameters")
    used = _globals_used(func)
    if used:
        raise ValueError(
            f"train_func: {name} uses {', '.join(used)} from the notebook's globals, which the "
            "training container does not have (only the function's source travels): import "
            "modules inside the function and pass values as hyperparameters")
    _check_signature(func, hyperparameters)
    source = _source(func)
    if len(source) > MAX_INLINE:
        raise ValueError(f"train_func: {name}'s source is {len(source)} characters, more than a run "
                         f"carries ({MAX_INLINE}): put the code in a git repository (git=...)")
    return Entrypoint([PYTHON, "-m", contract.FUNCTION_MODULE, name], {contract.ENV_FUNCTION: source})


# -- a notebook --------------------------------------------------------------------------------

def notebook_entrypoint(notebook: str | Path, hyperparameters: Mapping[str, Any], *,
                        in_repository: bool) -> Entrypoint:
    """The command and variables that execute `notebook` with papermill in the training
    container: a path inside the run's git source (`in_repository`), else a local file whose
    content the run carries. ValueError, naming the argument, for one that cannot run."""
    if in_repository:
        path = PurePosixPath(str(notebook))
        if path.is_absolute() or ".." in path.parts or path.suffix != ".ipynb":
            raise ValueError(f"notebook: {notebook!r} must be a relative path to an .ipynb file "
                             "inside the git repository")
        return Entrypoint([PYTHON, "-m", contract.NOTEBOOK_MODULE, str(path)])
    local = Path(notebook).expanduser()
    try:
        text = local.read_text(encoding="utf-8")
    except OSError as error:
        raise ValueError(f"notebook: cannot read {notebook}: {error.strerror or error}") from None
    parsed = read_notebook(text, local.name)
    check_parameters(parsed, hyperparameters, local.name)
    # Compact: the run carries the notebook's code, not its outputs or layout.
    inline = json.dumps(without_outputs(parsed), ensure_ascii=False, separators=(",", ":"))
    if len(inline) > MAX_INLINE:
        raise ValueError(f"notebook: {local.name} is {len(inline)} characters without its outputs, more "
                         f"than a run carries ({MAX_INLINE}): commit it to git and pass git=... "
                         "with notebook= its path in the repository")
    return Entrypoint([PYTHON, "-m", contract.NOTEBOOK_MODULE, local.name], {contract.ENV_NOTEBOOK: inline})


def is_notebook_run(command: list[str]) -> bool:
    return command[:3] == [PYTHON, "-m", contract.NOTEBOOK_MODULE]
