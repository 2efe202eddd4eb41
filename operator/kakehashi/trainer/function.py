"""A Python function as the training job: `python -m kakehashi.trainer.function NAME`.

The SDK ships the function's source in KAKEHASHI_FUNCTION (`TrainingRun(train_func=...)`,
Kubeflow's `create_job(train_func=...)` habit); this defines it and calls it with the run's
hyperparameters as keyword arguments, typed as the parameters' defaults (`learning_rate=0.1`
receives 5.0 for 5). Inside it, `kakehashi.trainer.context()` and `trainer.save()` work as in a script.
"""

from __future__ import annotations

import inspect
import linecache
import os
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kakehashi import contract
from kakehashi.trainer.context import context, typed_like


def load(source: str, name: str) -> Callable[..., Any]:
    """The function `name` defined by `source`. The source is registered with linecache, so a
    traceback out of it shows its lines as one out of a file would."""
    filename = f"<{name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    namespace: dict[str, Any] = {"__name__": "__kakehashi_function__"}
    exec(compile(source, filename, "exec"), namespace)
    function = namespace.get(name)
    if not callable(function):
        raise ValueError(f"{contract.ENV_FUNCTION} defines no function {name!r}")
    called: Callable[..., Any] = function
    return called


def defaults(function: Callable[..., Any]) -> dict[str, object]:
    """Each parameter's default, or for one without, an instance of its annotation's scalar
    type (`epochs: int` -> 0): what the hyperparameters are typed like."""
    found: dict[str, object] = {}
    for parameter in inspect.signature(function).parameters.values():
        if parameter.default is not parameter.empty:
            found[parameter.name] = parameter.default
        elif parameter.annotation in (bool, int, float, str):
            found[parameter.name] = parameter.annotation()
    return found


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    ctx = context(sys.argv[1:] if argv is None else argv, env)
    source = env.get(contract.ENV_FUNCTION)
    if len(ctx.args) != 1 or not source:
        print(f"usage: {contract.ENV_FUNCTION}=<source> python -m {contract.FUNCTION_MODULE} NAME "
              "[--key=value ...]", file=sys.stderr)
        return 2
    name = ctx.args[0]
    function = load(source, name)
    try:
        arguments = typed_like(ctx.hyperparameters, defaults(function))
    except ValueError as error:
        print(f"kakehashi: {error}", file=sys.stderr)
        return 2
    shown = ", ".join(f"{key}={value!r}" for key, value in sorted(arguments.items()))
    print(f"kakehashi: calling {name}({shown})", file=sys.stderr, flush=True)
    try:
        function(**arguments)
    except Exception:
        # Python's own handler of an uncaught exception reads source lines from files only;
        # this one reads linecache, so the function's lines show.
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
