"""The TrainingRun reconcile loop: read what the cluster holds, compute the status, close the gap.

kopf delivers the events; this module decides. Every event about a run, its Job/TFJob or its
pods only *requests* a reconcile of that run through the shared `ReconcileQueue` (coalesced,
one at a time per run, retried with backoff). What the reconcile reads comes from kopf's
in-memory indices (fed by the watches), not from API reads, which is what lets one operator keep
up with hundreds of runs.

Errors have two kinds (`kakehashi.control.errors`): a refusal by the API server (4xx) is an
answer and fails the run with the server's words; anything temporary (5xx, 429, timeouts, S3's
SlowDown) is retried with backoff and never written down as a final fact.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Final, TypeVar, cast

import kopf
from pydantic import ValidationError

from kakehashi import metrics, notify
from kakehashi.addresses import Allowlist
from kakehashi.api.trainingrun import RESOURCE, Phase, TrainingRun, TrainingRunStatus
from kakehashi.control.backoff import Backoff
from kakehashi.control.client import Kube
from kakehashi.control.controller import Controller, Key, items
from kakehashi.control.errors import (
    PermanentError,
    TemporaryError,
    api_message,
    classify,
    http_status,
)
from kakehashi.control.resources import PODS
from kakehashi.modelformat import ModelArtifact, now_rfc3339
from kakehashi.settings import OperatorSettings
from kakehashi.training import children
from kakehashi.training.status import (
    LOG_TAIL_LINES,
    Observed,
    Verdict,
    compute_status,
    status_patch,
    verdict,
)

ArtifactReader = Callable[[str], ModelArtifact | None]
# (object, type, reason, message): kopf.event in the operator, a recorder in tests.
EventSink = Callable[[dict[str, Any], str, str, str], None]
T = TypeVar("T")
METRIC_RESOURCE: Final = "trainingrun"
# How long after a container's exit its log is complete enough to quote (see _logs_settled).
LOG_SETTLE_S: Final = 2.0

logger = logging.getLogger("kakehashi.training")


def kopf_events(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
    """Post a Kubernetes Event through kopf's poster (batched, retried, off the loop)."""
    kopf.event(kopf.Body(cast(kopf.RawBody, body)), type=type_, reason=reason, message=message)


def _owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj.get("metadata", {}).get("ownerReferences") or [])


def _problems(error: ValidationError) -> str:
    return "; ".join(
        f"spec.{'.'.join(str(p) for p in err['loc'][1:])}: {err['msg']}" if err["loc"][:1] == ("spec",)
        else f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
        for err in error.errors(include_url=False)
    )


async def _logs_settled(finished_at: str | None) -> None:
    """Wait until LOG_SETTLE_S after a container's exit before reading its log. The runtime
    copies stdout and stderr to the log on their own, and reports the exit without waiting
    for the copies: a log read at once can miss the last stderr lines (the traceback, which
    is the point of the tail). finishedAt has whole seconds, so the wait counts from its end."""
    if not finished_at:
        return
    finished = datetime.fromisoformat(finished_at.replace("Z", "+00:00"))
    remaining = LOG_SETTLE_S + 1 - (datetime.now(UTC) - finished).total_seconds()
    if remaining > 0:
        await asyncio.sleep(min(remaining, LOG_SETTLE_S + 1))


class Reconciler(Controller):
    def __init__(
        self,
        kube: Kube,
        settings: OperatorSettings,
        read_artifact: ArtifactReader,
        *,
        threads: int = 16,
        events: EventSink = kopf_events,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(METRIC_RESOURCE, threads=threads, backoff=backoff)
        self.kube = kube
        self.event = events
        self.settings = settings
        self.read_artifact = read_artifact
        self.webhook_allowlist = Allowlist(settings.webhook_allowlist)
        # Creating children has its own threads: a burst of status patches for running runs
        # must not queue ahead of the Job a new run is waiting for.
        self.create_executor = ThreadPoolExecutor(max_workers=max(2, threads // 2), thread_name_prefix="kakehashi-create")
        self._phases: dict[Key, Phase] = {}

    def close(self) -> None:
        super().close()
        self.create_executor.shutdown(wait=False, cancel_futures=True)

    def forget(self, key: Key) -> None:
        super().forget(key)
        self._phases.pop(key, None)
        self._update_phase_gauge()

    def pending_keys(self) -> list[Key]:
        runs = self.indices.get("runs") or {}
        keys = []
        for key in list(runs):
            for body in items(runs, key):
                if (body.get("status") or {}).get("phase") not in (Phase.SUCCEEDED, Phase.FAILED):
                    keys.append(key)
        return keys

    # -- the reconcile ----------------------------------------------------------------------

    async def reconcile(self, key: Key) -> None:
        namespace, name = key
        body = self.current("runs", key)
        pods = items(self.indices.get("pods"), key)
        if body is None:
            # The run is gone (its children are being garbage-collected): let its pods go.
            await self._release_pods(pods, lambda pod: True)
            return
        try:
            run = TrainingRun.model_validate(body)
        except ValidationError as exc:
            # A spec the API server let through but the operator cannot run (CEL cannot look
            # inside the hyperparameters map): fail it, naming the field, through the same
            # status function as every other path, on a run with the spec left at its defaults.
            shell = TrainingRun.model_validate({**body, "spec": {}, "status": body.get("status") or {}})
            refusal = Verdict(Phase.FAILED, "InvalidSpec", f"invalid TrainingRun: {_problems(exc)}")
            await self._conclude(key, body, shell, Observed(refusal=refusal), [])
            return
        previous = run.status
        if previous.phase is not None and previous.phase.terminal:
            self._set_phase(key, previous.phase)
            if previous.notified_at is None:
                # Written terminal by an operator that stopped before the end-of-run effects.
                await self._write(key, await self._finish(body, run, previous))
            await self._release_pods(pods, lambda pod: True)
            return

        resource = children.child_resource(run)
        kind = resource.kind
        child = next(
            (c for c in items(self.indices.get("tfjobs" if kind == "TFJob" else "jobs"), key) if _owned_by(c, run.uid)),
            None,
        )
        child_deleted = False
        if child is None and previous.job_ref is not None and previous.job_ref.uid:
            # Missing from the cache is not gone: only a fresh read can say it was deleted.
            child = await self.io(self.kube.get, resource, namespace, children.child_name(run))
            child_deleted = child is None
        elif child is None:
            rendered = children.render_child(run, self.settings)
            try:
                child, created = await asyncio.get_running_loop().run_in_executor(
                    self.create_executor, self.kube.create, resource, rendered
                )
            except Exception as error:
                refused = classify(error)
                if http_status(error) == 404:
                    # The API server does not serve the kind (TFJob without the Kubeflow
                    # training operator): not a fact about this run. Pending, saying why, and
                    # the create is retried with backoff until the kind is installed.
                    hint = ": is the Kubeflow training operator installed?" if kind == "TFJob" else ""
                    waiting = Verdict(
                        Phase.PENDING, f"{kind}NotServed",
                        f"the API server does not serve {kind} ({resource.api_version} {resource.plural})"
                        f"{hint} ({api_message(error)}); retrying",
                    )
                    await self._conclude(key, body, run, Observed(not_created=waiting), pods)
                    raise TemporaryError(f"creating the {kind}: HTTP 404") from None
                if not isinstance(refused, PermanentError):
                    raise  # temporary: the queue retries with backoff
                refusal = Verdict(
                    Phase.FAILED,
                    "InvalidSpec",
                    f"the API server refused the {kind} for this run ({refused.reason}): {api_message(error)}",
                )
                await self._conclude(key, body, run, Observed(refusal=refusal), pods)
                return
            if created:
                metrics.CHILDREN_CREATED.labels(kind).inc()
                logger.info("Created %s for TrainingRun", kind, extra={"namespace": namespace, "trainingrun": name})
                self.event(body, "Normal", f"{kind}Created", f"Created {kind} {children.child_name(run)}")
            elif not _owned_by(child or {}, run.uid):
                self.event(
                    body, "Warning", "NameConflict",
                    f"a {kind} named {children.child_name(run)} exists and is not owned by this run",
                )
                return
        child_uid = (child or {}).get("metadata", {}).get("uid")
        pods = [p for p in pods if child_uid and _owned_by(p, child_uid)]
        observed = Observed(child=child, pods=pods, child_deleted=child_deleted)
        outcome = verdict(run, observed)
        output_uri = children.output_uri(run, self.settings)
        if outcome.phase == Phase.SUCCEEDED:
            model, definite, retrying = await self._read_model(output_uri)
            observed = Observed(child=child, pods=pods, model=model, model_error=definite, model_retrying=retrying)
        elif outcome.phase == Phase.FAILED and outcome.reason != "InvalidSpec":
            logs = await self._log_tails(pods)
            if logs:
                observed = Observed(child=child, pods=pods, child_deleted=child_deleted, logs=logs)
        await self._conclude(key, body, run, observed, pods)
        if observed.model_retrying is not None:
            # Recorded as "retrying", not as a fact; the queue comes back with a growing delay.
            raise TemporaryError(f"model.json at {output_uri}: {observed.model_retrying}")

    async def _conclude(
        self,
        key: Key,
        body: dict[str, Any],
        run: TrainingRun,
        observed: Observed,
        pods: list[dict[str, Any]],
    ) -> None:
        """Compute the status, run the end-of-run effects, write what changed, announce it."""
        previous = run.status
        output_uri = children.output_uri(run, self.settings)
        status = compute_status(run, observed, output_uri=output_uri, now=datetime.now(UTC))
        terminal = status.phase is not None and status.phase.terminal
        if terminal:
            # Side effects first, then one write that records both the end and that they ran.
            status = await self._finish(body, run, status)
        if status != previous:
            await self._write(key, status)
        if status.phase != previous.phase:
            self._announce(body, run, previous, status)
        self._set_phase(key, status.phase)
        if terminal:
            await self._release_pods(pods, lambda pod: True)
        else:
            # A pod being deleted before the end (deadline, eviction): its facts are in the
            # status now, so it may go.
            await self._release_pods(pods, lambda pod: bool(pod["metadata"].get("deletionTimestamp")))

    async def _write(self, key: Key, status: TrainingRunStatus) -> None:
        self.written(key, await self.io(self.kube.patch_status, RESOURCE, key[0], key[1], status_patch(status)))

    async def _read_model(self, output_uri: str) -> tuple[ModelArtifact | None, str | None, str | None]:
        """(model, definite error, temporary error): only a definite answer may end the run."""
        try:
            model = await self.io(self.read_artifact, output_uri)
        except ValueError as exc:  # malformed model.json (pydantic's ValidationError is one)
            return None, f"model.json at {output_uri} is not a valid model manifest: {str(exc)[:1000]}", None
        except Exception as exc:
            kind = classify(exc)
            what = str(kind) if kind is not None else f"{type(exc).__name__}: {exc}"
            # Access denied or a missing bucket is not an answer about the model either: a
            # fixed IAM policy or bucket must let the run finish, so those retry too.
            return None, None, f"reading model.json failed ({what[:500]})"
        if model is None:
            return None, f"no model.json at {output_uri}: the training code did not save a model", None
        return model, None, None

    async def _log_tails(self, pods: list[dict[str, Any]]) -> dict[str, str]:
        logs: dict[str, str] = {}
        for pod in pods:
            pod_name = pod["metadata"]["name"]
            status = pod.get("status") or {}
            for cstatus in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
                term = (cstatus.get("state") or {}).get("terminated") or {}
                if term.get("exitCode") or term.get("reason") == "OOMKilled":
                    await _logs_settled(term.get("finishedAt"))
                    text = await self.io(
                        self.kube.log_tail, pod["metadata"]["namespace"], pod_name, cstatus["name"], LOG_TAIL_LINES
                    )
                    if text:
                        logs[f"{pod_name}/{cstatus['name']}"] = text
        return logs

    async def _release_pods(self, pods: list[dict[str, Any]], which: Callable[[dict[str, Any]], bool]) -> None:
        for pod in pods:
            finalizers = list(pod["metadata"].get("finalizers") or [])
            if children.POD_FINALIZER in finalizers and which(pod):
                await self.io(
                    self.kube.remove_finalizer,
                    PODS,
                    pod["metadata"]["namespace"],
                    pod["metadata"]["name"],
                    finalizers,
                    children.POD_FINALIZER,
                )

    def _announce(
        self, body: dict[str, Any], run: TrainingRun, previous: TrainingRunStatus, status: TrainingRunStatus
    ) -> None:
        if previous.phase is None and status.phase == Phase.PENDING:
            return  # the JobCreated event already says it; one Event fewer per run under load
        message = f"{previous.phase or 'New'} -> {status.phase}: {status.reason}: {(status.message or '')[:900]}"
        if status.phase == Phase.FAILED:
            self.event(body, "Warning", f"Run{status.phase}", message)
        else:
            self.event(body, "Normal", f"Run{status.phase}", message)
        logger.info(
            "TrainingRun changed phase",
            extra={"namespace": run.namespace, "trainingrun": run.name, "phase": str(status.phase), "reason": status.reason},
        )

    async def _finish(self, body: dict[str, Any], run: TrainingRun, status: TrainingRunStatus) -> TrainingRunStatus:
        """End-of-run effects (duration metric, webhook); the status to write, marked done."""
        if status.notified_at is not None:
            return status
        if status.start_time and status.completion_time:
            started = datetime.fromisoformat(status.start_time.replace("Z", "+00:00"))
            ended = datetime.fromisoformat(status.completion_time.replace("Z", "+00:00"))
            metrics.TRAINING_SECONDS.labels(str(status.phase)).observe(max(0.0, (ended - started).total_seconds()))
        notification = run.spec.notification
        if notification is not None:
            try:
                secret = await self.io(self.kube.read_secret, run.namespace, notification.webhook_secret)
                url = notify.webhook_url(secret, notification.webhook_secret, notification.key)
                await notify.send(
                    url,
                    notify.run_ended_message(run, status),
                    allowlist=self.webhook_allowlist,
                    allow_http=self.settings.webhook_allow_http,
                )
                metrics.NOTIFICATIONS.labels("sent").inc()
            except notify.NotificationError as exc:
                # Safe by construction: names the Secret and the problem, never the URL.
                metrics.NOTIFICATIONS.labels("failed").inc()
                self.event(body, "Warning", "NotificationFailed", str(exc)[:500])
            except Exception as exc:
                # Reading the Secret failed: the API's message names only the Secret.
                metrics.NOTIFICATIONS.labels("failed").inc()
                self.event(
                    body, "Warning", "NotificationFailed",
                    f"reading Secret {notification.webhook_secret} failed ({type(exc).__name__})",
                )
        # Recorded even without a webhook: it marks the end-of-run effects as done, so a
        # restarted operator does not repeat them (a crash before the write repeats the
        # webhook once: at-least-once, as webhooks are everywhere).
        return status.model_copy(update={"notified_at": now_rfc3339()})

    def _set_phase(self, key: Key, phase: Phase | None) -> None:
        if phase is None:
            return
        self._phases[key] = phase
        self._update_phase_gauge()

    def _update_phase_gauge(self) -> None:
        counts = dict.fromkeys(Phase, 0)
        for phase in self._phases.values():
            counts[phase] += 1
        for phase, count in counts.items():
            metrics.RUNS.labels(phase.value).set(count)

