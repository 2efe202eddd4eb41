"""What a training container knows about its run: hyperparameters, URIs, lineage, its role.

Everything here is read from the environment the operator injects (see `kakehashi.contract`)
and from the command line, and nothing imports TensorFlow, so it is cheap to call and to test.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

from kakehashi import contract
from kakehashi.modelformat import GitLineage

HyperparameterValue: TypeAlias = str | int | float | bool
Hyperparameters: TypeAlias = dict[str, HyperparameterValue]
T = TypeVar("T", str, int, float, bool)

ENV_TF_CONFIG = "TF_CONFIG"
# Task types that are the coordinator in TensorFlow's distribution strategies ("master" is the
# pre-TF2 name some launchers still emit).
_CHIEF_TYPES = ("chief", "master")


def coerce(raw: str) -> HyperparameterValue:
    """Give a command-line value the type it most plausibly has: bool, int, float or str."""
    lowered = raw.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        number = float(raw)
    except ValueError:
        return raw
    # "nan" and "inf" are more likely names than numbers in a hyperparameter.
    return number if math.isfinite(number) else raw


def convert(key: str, value: HyperparameterValue, kind: type[T]) -> T:
    """`value` as `kind`, or a ValueError that names the hyperparameter."""
    if isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)):
        return value
    try:
        if kind is bool:
            if isinstance(value, str) and value.strip().lower() in ("true", "false"):
                return kind(value.strip().lower() == "true")
            raise ValueError
        if kind is int and isinstance(value, float):
            if not value.is_integer():
                raise ValueError
            return kind(value)
        if isinstance(value, bool):
            raise ValueError  # True as a learning rate is a mistake, not 1.0
        return kind(value)
    except ValueError:
        raise ValueError(
            f"hyperparameter {key}={value!r} is not a valid {kind.__name__}"
        ) from None


def typed_like(hyperparameters: Mapping[str, HyperparameterValue],
               defaults: Mapping[str, object]) -> Hyperparameters:
    """The hyperparameters, each typed as the default it replaces (a function's parameter
    default, a notebook's parameters cell): JSON through the API server turns 5.0 into 5, so a
    `learning_rate=0.1` parameter would otherwise receive the int 5. A value that cannot take
    the default's type raises a ValueError naming the hyperparameter."""
    typed: Hyperparameters = dict(hyperparameters)
    for key, value in hyperparameters.items():
        default = defaults.get(key)
        if isinstance(default, bool):  # before int: bool is a subclass of int
            typed[key] = convert(key, value, bool)
        elif isinstance(default, int):
            typed[key] = convert(key, value, int)
        elif isinstance(default, float):
            typed[key] = convert(key, value, float)
        elif isinstance(default, str):
            typed[key] = convert(key, value, str)
    return typed


def _convert_like(key: str, raw: str, like: HyperparameterValue) -> HyperparameterValue:
    # bool before int: bool is a subclass of int.
    if isinstance(like, bool):
        return convert(key, raw, bool)
    if isinstance(like, int):
        return convert(key, raw, int)
    if isinstance(like, float):
        return convert(key, raw, float)
    return raw


def _parse_json(text: str) -> Hyperparameters:
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{contract.ENV_HYPERPARAMETERS} is not valid JSON: {error}") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{contract.ENV_HYPERPARAMETERS} must be a JSON object, got {text!r}")
    result: Hyperparameters = {}
    for key, value in loaded.items():
        if not isinstance(value, str | int | float | bool):
            raise ValueError(
                f"hyperparameter {key} must be a string, number or boolean, got {value!r}"
            )
        result[key] = value
    return result


def parse_hyperparameters(
    json_text: str | None, argv: Sequence[str] = ()
) -> tuple[Hyperparameters, list[str]]:
    """Merge the JSON hyperparameters with `--key=value` arguments; return them and the rest.

    The operator passes the same values both ways; someone running the script by hand passes
    only arguments, which then override. Where the JSON holds a key, its type wins: `--lr=1`
    stays the float 1.0 and `--tag=007` stays the string "007". Other keys get the type their
    text suggests (see `coerce`). Arguments of any other shape are returned untouched, in order,
    for the training code's own parser.
    """
    hyperparameters = _parse_json(json_text) if json_text and json_text.strip() else {}
    rest: list[str] = []
    for arg in argv:
        key, sep, raw = arg[2:].partition("=")
        if not (arg.startswith("--") and sep and key):
            rest.append(arg)
            continue
        if key in hyperparameters:
            hyperparameters[key] = _convert_like(key, raw, hyperparameters[key])
        else:
            hyperparameters[key] = coerce(raw)
    return hyperparameters, rest


@dataclass(frozen=True)
class Task:
    """This replica's place in a distributed job, from `TF_CONFIG`."""

    type: str | None = None
    """"chief", "worker", "ps" or "evaluator"; None when not distributed (no TF_CONFIG)."""
    index: int = 0
    cluster: dict[str, list[str]] = field(default_factory=dict)
    """Replica type to addresses, as in TF_CONFIG's "cluster"."""

    @property
    def is_chief(self) -> bool:
        """Whether this replica is the one that writes the model (and anything else shared).

        In MultiWorkerMirroredStrategy every worker holds the same model; the chief (or, with
        no chief in the cluster, worker 0) is the one whose copy is kept.
        """
        if self.type is None or self.type in _CHIEF_TYPES:
            return True
        has_chief = any(self.cluster.get(kind) for kind in _CHIEF_TYPES)
        return self.type == "worker" and self.index == 0 and not has_chief

    @property
    def num_replicas(self) -> int:
        """Replicas that train (chief and workers); 1 when not distributed."""
        return max(1, sum(len(self.cluster.get(kind, [])) for kind in (*_CHIEF_TYPES, "worker")))


def parse_tf_config(text: str | None) -> Task:
    """The `Task` described by a TF_CONFIG value (absent or empty: a lone, chief replica)."""
    if not text or not text.strip():
        return Task()
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{ENV_TF_CONFIG} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{ENV_TF_CONFIG} must be a JSON object, got {text!r}")
    cluster = {str(kind): list(map(str, addresses))
               for kind, addresses in (config.get("cluster") or {}).items()}
    task: dict[str, Any] = config.get("task") or {}
    kind = task.get("type")
    return Task(
        type=str(kind).lower() if kind else None,
        index=int(task.get("index", 0)),
        cluster=cluster,
    )


@dataclass(frozen=True)
class TrainingContext:
    """Everything the platform tells a training container about its run."""

    hyperparameters: Hyperparameters = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    """Command-line arguments that are not `--key=value` hyperparameters."""
    data_uri: str | None = None
    output_uri: str | None = None
    """Where `trainer.save` writes the model: s3://bucket/prefix/, file:// or a local path."""
    run_id: str | None = None
    run_name: str | None = None
    namespace: str | None = None
    git: GitLineage = field(default_factory=GitLineage)
    workspace: Path | None = None
    """Where the init container cloned the code, if the run names a git source."""
    task: Task = field(default_factory=Task)

    @property
    def is_chief(self) -> bool:
        """Whether this replica saves the model; see `Task.is_chief`."""
        return self.task.is_chief

    def get(self, key: str, default: T) -> T:
        """A hyperparameter converted to the type of `default`, or `default` when unset.

        `epochs = ctx.get("epochs", 10)` is an int whether the value came from JSON or from
        `--epochs=20`; a value that cannot be converted raises a ValueError naming the key.
        """
        if key not in self.hyperparameters:
            return default
        return convert(key, self.hyperparameters[key], type(default))


def _read_commit(path: str | None) -> str | None:
    if not path:
        return None
    try:
        commit = Path(path).read_text().strip()
    except FileNotFoundError:
        return None  # no git source, or the clone did not record one: lineage says unknown
    return commit or None


def _run_argv() -> list[str]:
    """The run's arguments: sys.argv[1:], except inside a Jupyter kernel (a notebook run, or
    a notebook server), whose sys.argv is the kernel's own command line: papermill starts it
    with `--HistoryManager.hist_file=:memory:`, which would read as a hyperparameter."""
    kernelapp = sys.modules.get("ipykernel.kernelapp")
    if kernelapp is not None and kernelapp.IPKernelApp.initialized():
        return []
    return sys.argv[1:]


def context(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> TrainingContext:
    """Read the run's context from `environ` (default `os.environ`) and `argv` (default: the
    run's arguments, sys.argv[1:] outside a Jupyter kernel)."""
    env = os.environ if environ is None else environ
    args = (_run_argv() if argv is None else argv)
    hyperparameters, rest = parse_hyperparameters(env.get(contract.ENV_HYPERPARAMETERS), args)
    workspace = env.get(contract.ENV_WORKSPACE)
    return TrainingContext(
        hyperparameters=hyperparameters,
        args=rest,
        data_uri=env.get(contract.ENV_DATA_URI) or None,
        output_uri=env.get(contract.ENV_OUTPUT_URI) or None,
        run_id=env.get(contract.ENV_RUN_ID) or None,
        run_name=env.get(contract.ENV_RUN_NAME) or None,
        namespace=env.get(contract.ENV_NAMESPACE) or None,
        git=GitLineage(
            url=env.get(contract.ENV_SOURCE_GIT_URL) or None,
            revision=env.get(contract.ENV_SOURCE_GIT_REVISION) or None,
            commit=_read_commit(env.get(contract.ENV_SOURCE_COMMIT_FILE)),
        ),
        workspace=Path(workspace) if workspace else None,
        task=parse_tf_config(env.get(ENV_TF_CONFIG)),
    )
