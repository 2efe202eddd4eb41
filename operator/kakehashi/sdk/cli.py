"""The `kakehashi` verbs for runs and services: thin wrappers over the SDK, one per verb.

Each verb parses its options, calls the SDK and prints: a table by default, the resources
themselves with `-o json|yaml`. The SDK is imported inside each verb, so `kakehashi --help`
works in images without the Kubernetes client.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import yaml

from kakehashi.sdk import output

if TYPE_CHECKING:
    from kakehashi.sdk.connection import Connection
    from kakehashi.sdk.serving import ModelService
    from kakehashi.sdk.training import TrainingRun

F = TypeVar("F", bound=Callable[..., Any])

RUN_COLUMNS = ("name", "phase", "reason", "promotable", "metrics", "age")
SERVICE_COLUMNS = ("name", "phase", "reason", "ready", "model", "image", "age")


# -- shared options and helpers ---------------------------------------------------------------

def common(func: F) -> F:
    """--kubeconfig, -n/--namespace and -o/--output, on every verb."""
    func = click.option("-o", "--output", "fmt", type=click.Choice(output.FORMATS), default="table",
                        show_default=True, help="Output format.")(func)
    func = click.option("-n", "--namespace", default=None,
                        help="Namespace (default: the pod's, else the kubeconfig context's).")(func)
    func = click.option("--kubeconfig", type=click.Path(dir_okay=False), default=None,
                        help="The learning cluster's kubeconfig (default: in-cluster, else $KUBECONFIG).")(func)
    return func


def errors(func: F) -> F:
    """SDK errors become one-line messages and exit code 1, not tracebacks."""
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from kakehashi.sdk.errors import KakehashiError

        try:
            return func(*args, **kwargs)
        except (KakehashiError, ValueError) as error:
            raise click.ClickException(str(error)) from None
        except ModuleNotFoundError as error:  # an image without the SDK's extra
            raise click.ClickException(
                f"{error.name} is not installed: this verb needs pip install 'kakehashi[sdk]'") from None
    return wrapper  # type: ignore[return-value]


def _connect(kubeconfig: str | None, namespace: str | None) -> Connection:
    from kakehashi.sdk.connection import connect

    connection = connect(kubeconfig, namespace)
    connection.via = "kakehashi cli"
    return connection


def _pairs(values: Iterable[str], what: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r}: expected KEY=VALUE", param_hint=what)
        pairs[key] = rest
    return pairs


def _scalar(value: str) -> Any:
    """A hyperparameter's value as YAML reads it: 5, 0.01, true, adam."""
    parsed = yaml.safe_load(value) if value else ""
    return parsed if isinstance(parsed, str | int | float | bool) else value


def _gate(value: str | None) -> dict[str, Any] | None:
    """accuracy>=0.9 (higher passes) or loss<=0.2 (lower passes)."""
    if value is None:
        return None
    for op, direction in ((">=", "higher"), ("<=", "lower")):
        metric, sep, threshold = value.partition(op)
        if sep:
            try:
                return {"metric": metric.strip(), "threshold": float(threshold), "direction": direction}
            except ValueError:
                break
    raise click.BadParameter(f"{value!r}: expected METRIC>=THRESHOLD or METRIC<=THRESHOLD", param_hint="--gate")


def _tolerations(values: Sequence[str]) -> list[dict[str, str]]:
    """kubectl taint's syntax: KEY=VALUE:EFFECT, or KEY:EFFECT (operator Exists)."""
    result = []
    for value in values:
        spec, _, effect = value.rpartition(":")
        if not spec:
            raise click.BadParameter(f"{value!r}: expected KEY=VALUE:EFFECT", param_hint="--toleration")
        key, sep, val = spec.partition("=")
        toleration = {"key": key, "effect": effect}
        toleration.update({"operator": "Equal", "value": val} if sep else {"operator": "Exists"})
        result.append(toleration)
    return result


def _emit(fmt: str, objects: list[dict[str, Any]], rows: list[dict[str, Any]], columns: Sequence[str],
          single: bool = False) -> None:
    if fmt == "table":
        click.echo(output.table(rows, columns))
    else:
        click.echo(output.dump(objects[0] if single else objects, fmt))


def run_row(run: TrainingRun) -> dict[str, Any]:
    status = run.status
    model = status.model
    promotable = next((c.status for c in status.conditions if c.type == "Promotable"), None)
    return {"name": run.name, "phase": status.phase and status.phase.value, "reason": status.reason,
            "promotable": promotable, "metrics": output.metrics(model.metrics) if model else "",
            "age": output.age(run.created)}


def service_row(service: ModelService) -> dict[str, Any]:
    status = service.status
    return {"name": service.name, "phase": status.phase and status.phase.value, "reason": status.reason,
            "ready": f"{status.ready_replicas}/{status.replicas}",
            "model": (status.model_digest or "")[:19], "image": status.image,
            "age": output.age(service.object["metadata"].get("creationTimestamp"))}


def _message(message: str | None) -> None:
    if message:
        click.echo(f"\nMessage: {message}")


# -- training ---------------------------------------------------------------------------------

@click.command("train", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--image", help="Training image (default: the platform's notebook image).")
@click.option("--notebook", type=click.Path(dir_okay=False),
              help="Run this notebook with papermill instead of COMMAND: a local .ipynb (sent with the "
                   "run), or with --git its path in the repository; -p values replace its parameters cell.")
@click.option("-p", "--hyperparameter", "hyperparameters", multiple=True, metavar="KEY=VALUE",
              help="A hyperparameter (repeatable); values read as YAML scalars: 5, 0.01, true, adam.")
@click.option("--data", help="Training data URI (s3://...).")
@click.option("--output-uri", help="Where the model goes (default: a per-run prefix of the model bucket).")
@click.option("--replicas", type=int, default=1, show_default=True, help="Workers: 1 is a Job, more a TFJob.")
@click.option("--gpu", type=int, default=0, show_default=True, help="GPUs per replica.")
@click.option("--cpu", help="CPU per replica, e.g. 2 or 500m.")
@click.option("--memory", help="Memory per replica, e.g. 4Gi.")
@click.option("--git", help="Git repository with the training code (cloned before training).")
@click.option("--revision", help="Its branch, tag or commit.")
@click.option("--gate", help="Quality bar: METRIC>=THRESHOLD or METRIC<=THRESHOLD.")
@click.option("--env", multiple=True, metavar="KEY=VALUE", help="Environment variable (repeatable).")
@click.option("--pod-annotation", multiple=True, metavar="KEY=VALUE", help="Annotation on the training pods.")
@click.option("--backoff-limit", type=int, default=0, show_default=True, help="Retries of a failed replica.")
@click.option("--deadline", type=int, help="Fail the run if it trains longer than this many seconds.")
@click.option("--wait/--no-wait", default=False, show_default=True, help="Wait until the run ends.")
@click.option("--timeout", type=float, help="With --wait: give up after this many seconds.")
@click.option("--logs", "follow_logs", is_flag=True, help="With --wait: stream the training log meanwhile.")
@common
@errors
def train(name: str, command: tuple[str, ...], image: str | None, notebook: str | None, hyperparameters: tuple[str, ...],
          data: str | None, output_uri: str | None, replicas: int, gpu: int, cpu: str | None,
          memory: str | None, git: str | None, revision: str | None, gate: str | None,
          env: tuple[str, ...], pod_annotation: tuple[str, ...], backoff_limit: int, deadline: int | None,
          wait: bool, timeout: float | None, follow_logs: bool, kubeconfig: str | None, namespace: str | None,
          fmt: str) -> None:
    """Submit the TrainingRun NAME running COMMAND (after `--`).

    Submitting the same NAME and spec again attaches to the existing run; another spec under
    the same NAME is refused.

    \b
    kakehashi train digits -p epochs=5 --data s3://data/digits/ --gate 'accuracy>=0.9' \\
        -- python examples/digits/train.py
    kakehashi train digits-nb --notebook train.ipynb -p epochs=5 --wait
    """
    from kakehashi.sdk.training import TrainingRun

    connection = _connect(kubeconfig, namespace)
    run = TrainingRun(
        name, connection=connection, namespace=connection.namespace, image=image, command=list(command),
        notebook=notebook,
        hyperparameters={k: _scalar(v) for k, v in _pairs(hyperparameters, "--hyperparameter").items()},
        data=data, output=output_uri, replicas=replicas, gpu=gpu, cpu=cpu, memory=memory, git=git,
        revision=revision, gate=_gate(gate), env=_pairs(env, "--env"),
        pod_annotations=_pairs(pod_annotation, "--pod-annotation"), backoff_limit=backoff_limit,
        deadline_seconds=deadline,
    ).submit()
    if wait:
        # The log goes to stderr with the progress: stdout stays the table (or -o json|yaml).
        run.wait(timeout, stream=sys.stderr, logs=follow_logs, log_stream=sys.stderr)
    _emit(fmt, [run.object], [run_row(run)], RUN_COLUMNS, single=True)


@click.command("runs")
@common
@errors
def runs(kubeconfig: str | None, namespace: str | None, fmt: str) -> None:
    """List the TrainingRuns: phase, reason, promotable, metrics, age."""
    from kakehashi.sdk.training import TrainingRun

    found = TrainingRun.list(connection=_connect(kubeconfig, namespace))
    _emit(fmt, [r.object for r in found], [run_row(r) for r in found], RUN_COLUMNS)


@click.command("status")
@click.argument("name")
@common
@errors
def status(name: str, kubeconfig: str | None, namespace: str | None, fmt: str) -> None:
    """Show the TrainingRun NAME: phase, why, its conditions and its model."""
    from kakehashi.sdk.training import TrainingRun

    run = TrainingRun.attach(name, connection=_connect(kubeconfig, namespace))
    if fmt != "table":
        _emit(fmt, [run.object], [], RUN_COLUMNS, single=True)
        return
    click.echo(output.table([run_row(run)], RUN_COLUMNS))
    state = run.status
    _message(state.message)
    if state.model is not None:
        click.echo(f"\nModel: {state.model.uri} {state.model.digest}")
    if run.executed_notebook_uri:
        click.echo(f"Executed notebook: {run.executed_notebook_uri}")
    if state.conditions:
        click.echo("\n" + output.table(
            [{"condition": c.type, "status": c.status, "reason": c.reason, "since": output.age(c.last_transition_time)}
             for c in state.conditions], ("condition", "status", "reason", "since")))


@click.command("logs")
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Stream the log until the training containers end.")
@click.option("--tail", type=int, help="Only the last N lines.")
@click.option("--kubeconfig", type=click.Path(dir_okay=False), default=None,
              help="The learning cluster's kubeconfig (default: in-cluster, else $KUBECONFIG).")
@click.option("-n", "--namespace", default=None, help="Namespace.")
@errors
def logs(name: str, follow: bool, tail: int | None, kubeconfig: str | None, namespace: str | None) -> None:
    """Print the training log of the TrainingRun NAME (every replica's, prefixed by pod)."""
    from kakehashi.sdk.training import TrainingRun

    run = TrainingRun.attach(name, connection=_connect(kubeconfig, namespace))
    run.logs(follow=follow, tail=tail, stream=sys.stdout)


# -- serving ----------------------------------------------------------------------------------

@click.command("deploy")
@click.argument("name")
@click.option("--run", "training_run", help="Serve this TrainingRun's model.")
@click.option("--model-uri", help="Or serve the model at this s3:// prefix...")
@click.option("--model-digest", help="...whose model.json digest is this (sha256:...).")
@click.option("--registry", required=True, help="Repository the baked image is pushed to.")
@click.option("--production-namespace", required=True, help="Namespace on the production cluster.")
@click.option("--kubeconfig-secret", default="production", show_default=True,
              help="Secret (in this namespace) with the production cluster's kubeconfig.")
@click.option("--serving-image", help="Base inference image (default: the platform's).")
@click.option("--replicas", type=int, default=1, show_default=True)
@click.option("--cpu", help="CPU per serving pod.")
@click.option("--memory", help="Memory per serving pod.")
@click.option("--node-selector", multiple=True, metavar="KEY=VALUE", help="Node label the pods need.")
@click.option("--toleration", multiple=True, metavar="KEY=VALUE:EFFECT", help="A taint the pods tolerate.")
@click.option("--gate-override", metavar="REASON", help="Serve a model that is not Promotable, saying why.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until Ready.")
@click.option("--timeout", type=float, default=900, show_default=True, help="Seconds to wait.")
@common
@errors
def deploy(name: str, training_run: str | None, model_uri: str | None, model_digest: str | None, registry: str,
           production_namespace: str, kubeconfig_secret: str, serving_image: str | None, replicas: int,
           cpu: str | None, memory: str | None, node_selector: tuple[str, ...], toleration: tuple[str, ...],
           gate_override: str | None, wait: bool, timeout: float, kubeconfig: str | None,
           namespace: str | None, fmt: str) -> None:
    """Create or update the ModelService NAME and wait until it is Ready (baked, rolled out)."""
    from kakehashi.sdk.serving import ModelService, render_spec

    if (training_run is None) == (model_uri is None):
        raise click.UsageError("give --run, or --model-uri with --model-digest")
    spec = render_spec(
        training_run=training_run, model_uri=model_uri, model_digest=model_digest, registry=registry,
        production_namespace=production_namespace, kubeconfig_secret=kubeconfig_secret,
        serving_image=serving_image, replicas=replicas, cpu=cpu, memory=memory,
        node_selector=_pairs(node_selector, "--node-selector"), tolerations=_tolerations(toleration),
        gate_override=gate_override)
    service = ModelService(name, connection=_connect(kubeconfig, namespace)).apply(spec)
    if wait:
        service.wait(timeout, stream=sys.stderr)
    _emit(fmt, [service.object], [service_row(service)], SERVICE_COLUMNS, single=True)


@click.command("services")
@click.argument("name", required=False)
@common
@errors
def services(name: str | None, kubeconfig: str | None, namespace: str | None, fmt: str) -> None:
    """List the ModelServices, or show the one NAME (with its history)."""
    from kakehashi.sdk.serving import ModelService

    connection = _connect(kubeconfig, namespace)
    if name is None:
        found = ModelService.list(connection=connection)
        _emit(fmt, [s.object for s in found], [service_row(s) for s in found], SERVICE_COLUMNS)
        return
    service = ModelService(name, connection=connection).refresh()
    _emit(fmt, [service.object], [service_row(service)], SERVICE_COLUMNS, single=True)
    if fmt == "table":
        _message(service.status.message)
        if service.status.history:
            click.echo("\n" + output.table(
                [{"id": h.id, "model": h.model_digest[:19], "image": h.image, "run": h.training_run,
                  "rollback": "yes" if h.rollback else "", "age": output.age(h.time)} for h in service.status.history],
                ("id", "model", "image", "run", "rollback", "age")))


@click.command("rollback")
@click.argument("name")
@click.argument("to", required=False)
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until Ready.")
@click.option("--timeout", type=float, default=300, show_default=True, help="Seconds to wait.")
@common
@errors
def rollback(name: str, to: str | None, wait: bool, timeout: float, kubeconfig: str | None,
             namespace: str | None, fmt: str) -> None:
    """Roll the ModelService NAME back to TO (a history id, image or digest; default: the
    deploy before the current one), without baking."""
    from kakehashi.sdk.serving import ModelService

    service = ModelService(name, connection=_connect(kubeconfig, namespace)).rollback(to)
    if wait:
        service.wait(timeout, stream=sys.stderr)
    _emit(fmt, [service.object], [service_row(service)], SERVICE_COLUMNS, single=True)


@click.command("predict")
@click.argument("name")
@click.option("--json", "json_data", metavar="DATA", help="Inputs as JSON: a (nested) list, or {input: list}.")
@click.option("--csv", "csv_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A CSV file with a header row: its rows are one batch.")
@click.option("--image", "images", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="An image to classify (repeatable).")
@click.option("--top-k", type=int, help="Images: also list the k best classes.")
@click.option("--production-kubeconfig", type=click.Path(dir_okay=False),
              help="The production cluster's kubeconfig (default: the service's delivery Secret).")
@common
@errors
def predict(name: str, json_data: str | None, csv_file: Path | None, images: tuple[Path, ...], top_k: int | None,
            production_kubeconfig: str | None, kubeconfig: str | None, namespace: str | None, fmt: str) -> None:
    """Send inputs to the ModelService NAME and print its predictions."""
    from kakehashi.sdk.serving import ModelService

    if sum(x is not None and x != () for x in (json_data, csv_file, images)) != 1:
        raise click.UsageError("give one of --json, --csv, --image")
    predictor = ModelService(name, connection=_connect(kubeconfig, namespace)).predictor(production_kubeconfig)
    if images:
        results = predictor.classify(list(images), top_k=top_k)
        rows = [{"image": str(path), **result} for path, result in zip(images, results, strict=True)]
        if fmt == "table":
            click.echo(output.table(rows, ("image", "name", "category", "score")))
        else:
            click.echo(output.dump(rows, fmt))
        return
    if csv_file is not None:
        answer = predictor.predict_csv(csv_file.read_text())
    else:
        assert json_data is not None
        data = json.loads(json_data)
        answer = predictor.infer(data if isinstance(data, dict) else {None: data})
    # A prediction is data, not a list of resources: the table view is one compact JSON line.
    click.echo(json.dumps(answer) if fmt == "table" else output.dump(answer, fmt))
