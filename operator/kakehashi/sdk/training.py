"""`TrainingRun` for notebooks: describe a run in Python, submit it, wait, read logs and metrics.

The spec is the resource's own pydantic model (`kakehashi.api.trainingrun.TrainingRunSpec`):
arguments are turned into it, never into a dict of our own, so what the SDK submits is what
the CRD (generated from the same model) accepts.

    run = TrainingRun("digits", command=["python", "train.py"], hyperparameters={"epochs": 5},
                      data="s3://data/digits/", gate=("accuracy", 0.9)).submit()
    run.wait(timeout=1800)       # watches; raises RunFailed with the reason and log tail
    run.metrics                  # {"accuracy": 0.97, ...}
    predictor = run.deploy("digits", registry=..., production_namespace="inference")

The code can also be a function of the notebook (`train_func=train`) or a notebook itself
(`notebook="train.ipynb"`, executed with papermill; `run.executed_notebook()` fetches the
result): see `kakehashi.sdk.entrypoints`.
"""

from __future__ import annotations

import builtins
import shlex
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TextIO

from kakehashi import GROUP
from kakehashi.api import trainingrun as api
from kakehashi.api.trainingrun import (
    Gate,
    Phase,
    Replicas,
    Scalar,
    Toleration,
    TrainingRunSpec,
    TrainingRunStatus,
)
from kakehashi.control.resources import PODS
from kakehashi.modelformat import EXECUTED_NOTEBOOK, ModelArtifact
from kakehashi.sdk.connection import Connection, connect
from kakehashi.sdk.entrypoints import (
    Entrypoint,
    function_entrypoint,
    is_notebook_run,
    notebook_entrypoint,
)
from kakehashi.sdk.errors import NotFound, RunFailed, SpecConflict, WaitTimeout
from kakehashi.sdk.progress import Mode, Progress
from kakehashi.sdk.watching import wait_for_object

# The label the operator puts on a run's pods (kakehashi.training.children.LABEL_RUN, a unit
# test keeps them equal): that module needs kubeflow-training, which a notebook need not have.
LABEL_RUN: Final = f"{GROUP}/trainingrun"
# The operator ends the first line of a failed run's status.message with this (a note may
# follow) and puts the failed container's log tail on the lines after.
LOG_TAIL_MARKER: Final = "; last log lines:"
LOG_TAIL_LINES: Final = 20
# How long wait(logs=True) lets the log stream finish after the run ended.
LOG_DRAIN_S: Final = 10.0
# A list of API objects (named here because the class's own `list` shadows the builtin).
Objects = list[dict[str, Any]]
PHASES: Final = [Phase.PENDING.value, Phase.RUNNING.value, Phase.SUCCEEDED.value]


def render_spec(
    *,
    image: str | None = None,
    command: str | Sequence[str] | None = None,
    args: Sequence[str] = (),
    train_func: Callable[..., Any] | None = None,
    notebook: str | Path | None = None,
    hyperparameters: Mapping[str, Scalar] | None = None,
    data: str | None = None,
    output: str | None = None,
    replicas: int | Mapping[str, int] | Replicas = 1,
    gpu: int = 0,
    cpu: int | str | None = None,
    memory: int | str | None = None,
    git: str | Mapping[str, str] | None = None,
    revision: str | None = None,
    env: Mapping[str, str] | None = None,
    node_selector: Mapping[str, str] | None = None,
    tolerations: Sequence[Mapping[str, Any] | Toleration] = (),
    gate: tuple[str, float] | Mapping[str, Any] | Gate | None = None,
    backoff_limit: int = 0,
    deadline_seconds: int | None = None,
    ttl_seconds: int | None = None,
    pod_labels: Mapping[str, str] | None = None,
    pod_annotations: Mapping[str, str] | None = None,
) -> TrainingRunSpec:
    """The TrainingRun spec these arguments describe (validated by the resource's own model).

    The code is one of: `command` (a list, or a string split as a shell would), `train_func`
    (a self-contained function, called with the hyperparameters as keyword arguments) or
    `notebook` (a local .ipynb, or with `git` its path in the repository, executed with
    papermill, the hyperparameters injected after its `parameters` cell). `replicas` an int
    (1: a Job; n: n TFJob workers) or the `{chief, worker, ps, evaluator}` map; `git` a URL or
    `{url, revision, path}`; `gate` `(metric, threshold)` or `{metric, threshold, direction}`.
    """
    # Everything is validated once, by the spec model, so an error names its field's path
    # (data.uri, replicas.worker) as the API server would.
    if isinstance(command, str):
        command = shlex.split(command)
    env = dict(env or {})
    code = _entrypoint(command, args, train_func, notebook, hyperparameters or {}, in_repository=git is not None)
    if code is not None:
        clash = sorted(set(env) & set(code.env))
        if clash:
            raise ValueError(f"env.{clash[0]}: set by the SDK to carry the training code")
        command, env = code.command, {**env, **code.env}
    if isinstance(replicas, int):
        replicas = {"worker": replicas}
    source = None
    if git is not None:
        repository = {"url": git} if isinstance(git, str) else dict(git)
        if revision is not None:
            repository["revision"] = revision
        source = {"git": repository}
    if isinstance(gate, tuple):
        gate = {"metric": gate[0], "threshold": gate[1]}
    resources = None
    if gpu or cpu is not None or memory is not None:
        resources = {"cpu": cpu, "memory": memory, "gpu": gpu}
    pod_metadata = None
    if pod_labels or pod_annotations:
        pod_metadata = {"labels": dict(pod_labels or {}), "annotations": dict(pod_annotations or {})}
    fields: dict[str, Any] = {
        "command": list(command or []),
        "args": list(args),
        "env": [{"name": key, "value": value} for key, value in env.items()],
        "source": source,
        "hyperparameters": dict(hyperparameters or {}),
        "data": {"uri": data} if data else None,
        "output": {"uri": output} if output else None,
        "replicas": replicas,
        "resources": resources,
        "nodeSelector": dict(node_selector or {}),
        "tolerations": list(tolerations),
        "runPolicy": {"backoffLimit": backoff_limit, "activeDeadlineSeconds": deadline_seconds,
                      "ttlSecondsAfterFinished": ttl_seconds},
        "podMetadata": pod_metadata,
        "gate": gate,
    }
    if image is not None:  # else the CRD's default (the notebook image), applied by the API server
        fields["image"] = image
    return TrainingRunSpec.model_validate(fields)


def _entrypoint(command: Sequence[str] | None, args: Sequence[str], train_func: Callable[..., Any] | None,
                notebook: str | Path | None, hyperparameters: Mapping[str, Scalar], *,
                in_repository: bool) -> Entrypoint | None:
    given = [what for what, value in (("command", command), ("train_func", train_func), ("notebook", notebook))
             if value]
    if len(given) > 1:
        raise ValueError(f"{given[1]}: give one of command, train_func or notebook, not {' and '.join(given)}")
    if train_func is None and notebook is None:
        return None
    if args:
        raise ValueError(f"args: {given[0]} takes its inputs as hyperparameters, not arguments")
    if train_func is not None:
        return function_entrypoint(train_func, hyperparameters)
    assert notebook is not None
    return notebook_entrypoint(notebook, hyperparameters, in_repository=in_repository)


def body(name: str, namespace: str, spec: TrainingRunSpec) -> dict[str, Any]:
    """The object to create: only what differs from the defaults, which the API server fills in
    (so a run submitted by the SDK reads like one written by hand)."""
    return {
        "apiVersion": api.RESOURCE.api_version,
        "kind": api.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_defaults=True),
    }


def spec_differences(existing: TrainingRunSpec, wanted: TrainingRunSpec) -> dict[str, tuple[object, object]]:
    """Top-level spec fields that differ, by their YAML names: (existing, wanted). Both sides
    pass through the model, so defaults the API server filled in compare equal to omissions."""
    there = existing.model_dump(mode="json", by_alias=True)
    here = wanted.model_dump(mode="json", by_alias=True)
    return {key: (there.get(key), here.get(key)) for key in sorted(set(there) | set(here))
            if there.get(key) != here.get(key)}


def split_failure(message: str) -> tuple[str, str]:
    """(what happened, the log tail) from a failed run's status.message. The operator writes
    "<what>; last log lines:" on the first line (a note such as the retries may follow it)
    and the tail on the lines after."""
    head, _, rest = message.partition("\n")
    if LOG_TAIL_MARKER not in head:
        return message, ""
    return head.replace(LOG_TAIL_MARKER, "", 1), rest


class TrainingRun:
    """One TrainingRun: built from arguments (`TrainingRun(name, ...)`, then `.submit()`) or
    attached to by name (`TrainingRun.attach(name)`)."""

    def __init__(self, name: str, *, namespace: str | None = None, connection: Connection | None = None,
                 spec: TrainingRunSpec | None = None, **arguments: Any) -> None:
        self.name = name
        self._connection = connection
        self._namespace = namespace
        self.spec = spec if spec is not None else render_spec(**arguments)
        self._object: dict[str, Any] | None = None

    # -- where ------------------------------------------------------------------------------

    @property
    def connection(self) -> Connection:
        if self._connection is None:
            self._connection = connect(namespace=self._namespace)
        return self._connection

    @property
    def namespace(self) -> str:
        return self._namespace or self.connection.namespace

    def __repr__(self) -> str:
        phase = self.status.phase if self._object is not None else None
        return f"TrainingRun({self.name!r}, namespace={self.namespace!r}, phase={phase and phase.value!r})"

    # -- create or attach -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The resource as it would be submitted (what `kubectl apply` would take)."""
        return body(self.name, self.namespace, self.spec)

    def submit(self) -> TrainingRun:
        """Create the run; if it exists with the same spec, attach to it (never a second run).

        Raises SpecConflict if a run of this name exists with another spec."""
        obj, created = self.connection.kube.create(api.RESOURCE, self.to_dict())
        if not created:
            existing = TrainingRunSpec.model_validate(obj.get("spec") or {})
            differences = spec_differences(existing, self.spec)
            if differences:
                raise SpecConflict(api.KIND, self.name, differences)
        self._object = obj
        return self

    @classmethod
    def attach(cls, name: str, *, namespace: str | None = None,
               connection: Connection | None = None) -> TrainingRun:
        """The existing run `name` (NotFound if there is none)."""
        connection = connection or connect(namespace=namespace)
        namespace = namespace or connection.namespace
        obj = connection.kube.get(api.RESOURCE, namespace, name)
        if obj is None:
            raise NotFound(f"TrainingRun {namespace}/{name} does not exist")
        run = cls(name, namespace=namespace, connection=connection,
                  spec=TrainingRunSpec.model_validate(obj.get("spec") or {}))
        run._object = obj
        return run

    @classmethod
    def list(cls, *, namespace: str | None = None, connection: Connection | None = None) -> builtins.list[TrainingRun]:
        """Every run in the namespace, oldest first."""
        connection = connection or connect(namespace=namespace)
        namespace = namespace or connection.namespace
        runs = []
        for obj in connection.kube.list_objects(api.RESOURCE, namespace):
            run = cls(obj["metadata"]["name"], namespace=namespace, connection=connection,
                      spec=TrainingRunSpec.model_validate(obj.get("spec") or {}))
            run._object = obj
            runs.append(run)
        return sorted(runs, key=lambda r: (r.created or "", r.name))

    # -- what it is now ---------------------------------------------------------------------

    def refresh(self) -> TrainingRun:
        obj = self.connection.kube.get(api.RESOURCE, self.namespace, self.name)
        if obj is None:
            raise NotFound(f"TrainingRun {self.namespace}/{self.name} does not exist (submit() it first)")
        self._object = obj
        return self

    @property
    def object(self) -> dict[str, Any]:
        """The resource as last read (read now if never read)."""
        if self._object is None:
            self.refresh()
        assert self._object is not None
        return self._object

    @property
    def status(self) -> TrainingRunStatus:
        return TrainingRunStatus.model_validate(self.object.get("status") or {})

    @property
    def created(self) -> str | None:
        created = self.object.get("metadata", {}).get("creationTimestamp")
        return None if created is None else str(created)

    @property
    def phase(self) -> str | None:
        phase = self.refresh().status.phase
        return None if phase is None else phase.value

    @property
    def model(self) -> ModelArtifact | None:
        """The trained model (uri, digest, metrics, lineage) once the run Succeeded."""
        return self.refresh().status.model

    @property
    def metrics(self) -> dict[str, float]:
        """The model's metrics (metrics.json), empty until the run has recorded a model."""
        model = self.model
        return dict(model.metrics) if model else {}

    @property
    def executed_notebook_uri(self) -> str | None:
        """Where a notebook run stores its executed notebook (`<output>/run/notebook.ipynb`,
        beside model.json); None for a run of other code, or before the operator saw it."""
        output = self.status.output_uri
        if not is_notebook_run(self.spec.command) or not output:
            return None
        return (output if output.endswith("/") else output + "/") + EXECUTED_NOTEBOOK

    def executed_notebook(self, path: str | Path | None = None, *, s3_client: Any = None) -> Path:
        """Download the executed notebook (parameters injected, every cell's output, the
        failing cell's error) to `path` (default `<run name>.executed.ipynb`); return the path.

        Reads S3 with boto3 (kakehashi[train], which the notebook images have), with the
        endpoint and credentials of the environment unless `s3_client` is given. NotFound
        before the notebook ran, or for a run that is not a notebook run."""
        uri = self.refresh().executed_notebook_uri
        if uri is None:
            what = "is not a notebook run" if not is_notebook_run(self.spec.command) else "has no output URI yet"
            raise NotFound(f"TrainingRun {self.namespace}/{self.name} {what}: no executed notebook")
        from kakehashi.artifacts import is_not_found, parse_s3_uri

        if s3_client is None:
            import boto3

            s3_client = boto3.client("s3")
        bucket, key = parse_s3_uri(uri)
        target = Path(path) if path is not None else Path(f"{self.name}.executed.ipynb")
        try:
            s3_client.download_file(bucket, key.rstrip("/"), str(target))
        except Exception as error:
            if is_not_found(error):
                raise NotFound(f"no executed notebook at {uri} yet (phase {self.phase})") from None
            raise
        return target

    @property
    def promotable(self) -> bool | None:
        for condition in self.refresh().status.conditions:
            if condition.type == api.ConditionType.PROMOTABLE:
                return condition.status == "True"
        return None

    # -- waiting ----------------------------------------------------------------------------

    def wait(self, timeout: float | None = None, *, progress: Mode | bool = "auto",
             stream: TextIO | None = None, logs: bool = False, log_stream: TextIO | None = None) -> TrainingRun:
        """Watch the run until it ends. Raises RunFailed (reason, message, log tail) if it
        fails, WaitTimeout if `timeout` seconds pass first (the run goes on).

        logs=True also streams the training log to `log_stream` (stdout) while waiting, as
        the managed services' `fit(wait=True, logs=True)` does."""
        display = Progress(f"TrainingRun {self.name}", PHASES, progress, stream)
        follower = self._follow_in_background(log_stream or sys.stdout, timeout) if logs else None

        def show(obj: dict[str, Any]) -> None:
            status = TrainingRunStatus.model_validate(obj.get("status") or {})
            display.update(status.phase.value if status.phase else "Submitted", status.reason or "")

        def done(obj: dict[str, Any]) -> bool:
            phase = (obj.get("status") or {}).get("phase")
            return phase is not None and Phase(phase).terminal

        try:
            obj, finished = wait_for_object(self.connection.api, api.RESOURCE, self.namespace, self.name,
                                            done, timeout, show)
        finally:
            display.close()
            if follower is not None:  # the last lines arrive just after the container ends
                follower.join(LOG_DRAIN_S)
        self._object = obj
        status = self.status
        if not finished:
            raise WaitTimeout(api.KIND, self.name, status.phase and status.phase.value, timeout or 0,
                              status.message or "")
        if status.phase == Phase.FAILED:
            reason, message = status.reason or "Failed", status.message or ""
            what, tail = split_failure(message)
            raise RunFailed(self.name, reason, what, tail or self._read_log_tail())
        return self

    def _follow_in_background(self, out: TextIO, timeout: float | None) -> threading.Thread:
        def follow() -> None:
            try:
                self.logs(follow=True, stream=out, timeout=timeout)
            except Exception as error:  # the log is a courtesy: the wait is what reports
                print(f"(log of {self.name} unavailable: {error})", file=out, flush=True)

        thread = threading.Thread(target=follow, name=f"logs-{self.name}", daemon=True)
        thread.start()
        return thread

    # -- logs -------------------------------------------------------------------------------

    def pods(self) -> Objects:
        """The run's pods, oldest first."""
        pods = self.connection.kube.list_objects(PODS, self.namespace, f"{LABEL_RUN}={self.name}")
        return sorted(pods, key=lambda p: (p["metadata"].get("creationTimestamp", ""), p["metadata"]["name"]))

    def _read_log_tail(self) -> str:
        for pod in reversed(self.pods()):
            container = pod["spec"]["containers"][0]["name"]
            text = self.connection.kube.log_tail(self.namespace, pod["metadata"]["name"], container, LOG_TAIL_LINES)
            if text.strip():
                return text
        return ""

    def logs(self, follow: bool = False, *, tail: int | None = None, stream: TextIO | None = None,
             timeout: float | None = None) -> str:
        """The training container's log (every replica's, each line prefixed with its pod
        when there are several). follow=True writes lines to `stream` (stdout) as they come,
        until the containers end, and returns all of them."""
        out = sys.stdout if stream is None and follow else stream
        lines: list[str] = []
        for line in self.stream_logs(follow=follow, tail=tail, timeout=timeout):
            lines.append(line)
            if out is not None:
                print(line, file=out, flush=True)
        return "\n".join(lines) + ("\n" if lines else "")

    def stream_logs(self, follow: bool = True, *, tail: int | None = None,
                    timeout: float | None = None) -> Iterator[str]:
        """The log's lines as they come (follow) or as they are (not)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pods = self.pods()
        if follow:
            # A just-submitted run has no pod yet, or one whose container has not started.
            while not any(_started(p) for p in pods):
                if self.refresh().status.phase in (Phase.SUCCEEDED, Phase.FAILED) and not pods:
                    return
                if deadline is not None and time.monotonic() > deadline:
                    raise WaitTimeout(api.KIND, self.name, self.status.phase, timeout or 0,
                                      "no training container started")
                time.sleep(1)
                pods = self.pods()
        if not pods:
            return
        several = len(pods) > 1
        if not follow or not several:
            for pod in pods:
                name = pod["metadata"]["name"]
                for line in self._pod_log(pod, follow, tail):
                    yield f"[{name}] {line}" if several else line
            return
        yield from _merge([(p["metadata"]["name"], self._pod_log(p, True, tail)) for p in pods])

    def _pod_log(self, pod: dict[str, Any], follow: bool, tail: int | None) -> Iterator[str]:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        core = client.CoreV1Api(self.connection.api)
        kwargs: dict[str, Any] = {"container": pod["spec"]["containers"][0]["name"], "follow": follow,
                                  "_preload_content": False}
        if tail is not None:
            kwargs["tail_lines"] = tail
        try:
            response = core.read_namespaced_pod_log(pod["metadata"]["name"], self.namespace, **kwargs)
        except ApiException as error:
            if error.status in (400, 404):  # not started yet, or gone: no log to show
                return
            raise
        buffer = b""
        try:
            for chunk in response.stream(4096):
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                for line in complete:
                    yield line.decode(errors="replace")
        finally:
            response.release_conn()
        if buffer:
            yield buffer.decode(errors="replace")

    # -- serving ----------------------------------------------------------------------------

    def deploy(self, name: str | None = None, **options: Any) -> Any:
        """Serve this run's model as the ModelService `name` (default: the run's name) and wait
        until it is Ready; returns a Predictor. Options: see `kakehashi.sdk.deploy`."""
        from kakehashi.sdk.serving import deploy

        options.setdefault("namespace", self.namespace)
        options.setdefault("connection", self.connection)
        return deploy(name or self.name, training_run=self.name, **options)


def _started(pod: dict[str, Any]) -> bool:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        state = status.get("state") or {}
        if "running" in state or "terminated" in state:
            return True
    return False


def _merge(sources: list[tuple[str, Iterator[str]]]) -> Iterator[str]:
    """Several followed logs as one stream, each line prefixed with its pod (threads: the
    client's log streams block)."""
    import queue

    lines: queue.Queue[tuple[str, str] | None] = queue.Queue()

    def pump(name: str, source: Iterator[str]) -> None:
        try:
            for line in source:
                lines.put((name, line))
        finally:
            lines.put(None)

    for name, source in sources:
        threading.Thread(target=pump, args=(name, source), daemon=True).start()
    open_sources = len(sources)
    while open_sources:
        item = lines.get()
        if item is None:
            open_sources -= 1
            continue
        yield f"[{item[0]}] {item[1]}"

