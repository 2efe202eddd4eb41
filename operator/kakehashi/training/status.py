"""Pure status logic: what the cluster holds in, the TrainingRun's status out.

Level-based, as kubebuilder controllers are: the status is recomputed from the child (Job or
TFJob) and its pods every time, never from a remembered sequence of events, so a missed or
duplicated event cannot leave it wrong. Only three things are carried over from the previous
status, because they are history: lastTransitionTime, phaseHistory and start/completion times.
A terminal phase is final: once a run is Succeeded or Failed, later changes to its children
(a TTL deleting the Job, pods cleaned up) cannot rewrite what happened.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from kakehashi.api.trainingrun import (
    ConditionType,
    JobRef,
    Phase,
    PhaseTransition,
    SourceStatus,
    TrainingRun,
    TrainingRunStatus,
)
from kakehashi.control.conditions import Condition, ConditionStatus, condition, true_condition
from kakehashi.modelformat import ModelArtifact, now_rfc3339
from kakehashi.training.children import (
    ANNOTATION_GENERATION,
    CLONE_CONTAINER,
    child_kind,
    child_name,
)

MAX_HISTORY: Final = 50
LOG_TAIL_LINES: Final = 20
_IMAGE_PULL: Final = {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull"}
_CONFIG_ERRORS: Final = {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
_COMMIT: Final = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")

Obj = Mapping[str, Any]


@dataclass(frozen=True)
class Verdict:
    phase: Phase
    reason: str
    message: str


@dataclass(frozen=True)
class Observed:
    """What the operator read from the cluster (and S3) for one run."""

    child: Obj | None = None
    pods: Sequence[Obj] = ()
    # True when the child is known to be gone (a fresh GET answered 404), not merely missing
    # from a cache that has not caught up yet.
    child_deleted: bool = False
    model: ModelArtifact | None = None
    # A definite answer: no model.json after the pods ended, or a malformed one.
    model_error: str | None = None
    # A temporary failure reading model.json (S3 5xx, SlowDown, timeout): no answer yet.
    model_retrying: str | None = None
    # The run cannot start: the operator or the API server refused its spec (InvalidSpec).
    refusal: Verdict | None = None
    # The child cannot be created yet, for a reason that is not the run's (the API server does
    # not serve its kind): Pending, saying why, while the create is retried.
    not_created: Verdict | None = None
    # Log tails of failed containers read through the API after the fact. Preferred over the
    # termination message: the kubelet's FallbackToLogsOnError snapshot is taken at exit, when
    # the runtime may not have copied the last stderr lines (the traceback) to the log yet.
    logs: Mapping[str, str] = field(default_factory=dict)


def _tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


@dataclass(frozen=True)
class _PodFacts:
    failure: Verdict | None  # the most telling reason a container failed
    waiting: Verdict | None  # why nothing runs yet
    running: bool
    start_time: str | None
    commit: str | None


def _container_failure(pod: Obj, status: Obj, init: bool, logs: Mapping[str, str]) -> Verdict | None:
    terminated = (status.get("state") or {}).get("terminated") or (status.get("lastState") or {}).get("terminated")
    if not terminated:
        return None
    code = int(terminated.get("exitCode", 0))
    reason = terminated.get("reason") or ""
    if code == 0 and reason != "OOMKilled":
        return None
    name = status.get("name", "?")
    pod_name = pod.get("metadata", {}).get("name", "?")
    log = logs.get(f"{pod_name}/{name}") or terminated.get("message") or ""
    tail = f"; last log lines:\n{_tail(log)}" if log.strip() else ""
    if reason == "OOMKilled":
        limit = _memory_limit(pod, name)
        return Verdict(
            Phase.FAILED,
            "OOMKilled",
            f"container {name} in pod {pod_name} ran out of memory (OOMKilled"
            f"{', limit ' + limit if limit else ''}): ask for more memory in spec.resources.memory{tail}",
        )
    if init and name == CLONE_CONTAINER:
        return Verdict(Phase.FAILED, "SourceCloneFailed", f"cloning the source failed (exit code {code}){tail}")
    return Verdict(
        Phase.FAILED, "NonZeroExitCode", f"container {name} in pod {pod_name} exited with code {code}{tail}"
    )


def _memory_limit(pod: Obj, container: str) -> str | None:
    for c in (pod.get("spec") or {}).get("containers") or []:
        if c.get("name") == container:
            limit = ((c.get("resources") or {}).get("limits") or {}).get("memory")
            return str(limit) if limit else None
    return None


def _pod_facts(pods: Sequence[Obj], logs: Mapping[str, str]) -> _PodFacts:
    failure: Verdict | None = None
    waiting: Verdict | None = None
    running = False
    starts: list[str] = []
    commit: str | None = None
    # Oldest first, so the reported failure is the first that happened: later ones are often
    # consequences (a worker failing because the chief died).
    for pod in sorted(pods, key=lambda p: p.get("metadata", {}).get("creationTimestamp") or ""):
        status = pod.get("status") or {}
        pod_name = pod.get("metadata", {}).get("name", "?")
        if status.get("startTime"):
            starts.append(status["startTime"])
        if status.get("phase") == "Running":
            running = True
        for init in status.get("initContainerStatuses") or []:
            term = (init.get("state") or {}).get("terminated") or {}
            if init.get("name") == CLONE_CONTAINER and term.get("exitCode") == 0:
                candidate = (term.get("message") or "").strip()
                if _COMMIT.match(candidate):
                    commit = candidate
        for init_flag, key in ((True, "initContainerStatuses"), (False, "containerStatuses")):
            for cstatus in status.get(key) or []:
                if failure is None:
                    failure = _container_failure(pod, cstatus, init_flag, logs)
                wait = (cstatus.get("state") or {}).get("waiting") or {}
                wreason = wait.get("reason") or ""
                if waiting is None and wreason in _IMAGE_PULL:
                    waiting = Verdict(
                        Phase.PENDING,
                        "ImagePullBackOff",
                        f"image {cstatus.get('image', '?')} cannot be pulled ({wreason}): "
                        f"{wait.get('message') or 'check the image name and the registry credentials'}",
                    )
                elif waiting is None and wreason in _CONFIG_ERRORS:
                    waiting = Verdict(Phase.PENDING, wreason, f"pod {pod_name}: {wait.get('message', '')}")
        if failure is None and status.get("phase") == "Failed" and status.get("reason"):
            # Evicted, DeadlineExceeded, NodeLost: the kubelet or a controller ended the pod.
            failure = Verdict(Phase.FAILED, status["reason"], f"pod {pod_name}: {status.get('message', '')}")
        for cond in status.get("conditions") or []:
            if (
                waiting is None
                and cond.get("type") == "PodScheduled"
                and cond.get("status") == "False"
                and cond.get("reason") == "Unschedulable"
            ):
                waiting = Verdict(
                    Phase.PENDING, "Unschedulable", f"no node can run pod {pod_name}: {cond.get('message', '')}"
                )
    return _PodFacts(failure, waiting, running, min(starts) if starts else None, commit)


def _job_verdict(run: TrainingRun, job: Obj, facts: _PodFacts) -> Verdict:
    if true_condition(job, "Complete", "SuccessCriteriaMet"):
        return Verdict(Phase.SUCCEEDED, "Completed", f"Job {job['metadata']['name']} completed")
    failed = true_condition(job, "Failed", "FailureTarget")
    if failed:
        reason = failed.get("reason") or "Failed"
        message = failed.get("message") or ""
        if reason == "DeadlineExceeded":
            return Verdict(
                Phase.FAILED, "DeadlineExceeded",
                f"the run trained longer than runPolicy.activeDeadlineSeconds="
                f"{run.spec.run_policy.active_deadline_seconds}s and was stopped",
            )
        if facts.failure:
            if reason == "BackoffLimitExceeded":
                tries = run.spec.run_policy.backoff_limit + 1
                head, _, rest = facts.failure.message.partition("\n")
                note = f" (failed {tries} time(s), runPolicy.backoffLimit={run.spec.run_policy.backoff_limit})"
                return Verdict(Phase.FAILED, facts.failure.reason, head + note + ("\n" + rest if rest else ""))
            return facts.failure
        return Verdict(Phase.FAILED, reason, message or f"Job {job['metadata']['name']} failed")
    return _progress(facts, job)


def _tfjob_verdict(run: TrainingRun, tfjob: Obj, facts: _PodFacts) -> Verdict:
    if true_condition(tfjob, "Succeeded"):
        return Verdict(Phase.SUCCEEDED, "Completed", f"TFJob {tfjob['metadata']['name']} succeeded")
    failed = true_condition(tfjob, "Failed")
    if failed:
        message = failed.get("message") or ""
        if "deadline" in message.lower():
            return Verdict(
                Phase.FAILED, "DeadlineExceeded",
                f"the run trained longer than runPolicy.activeDeadlineSeconds="
                f"{run.spec.run_policy.active_deadline_seconds}s and was stopped",
            )
        if facts.failure:
            head, _, rest = facts.failure.message.partition("\n")
            return Verdict(facts.failure.phase, facts.failure.reason, f"{head} ({message})" + ("\n" + rest if rest else ""))
        if "backoff" in message.lower():
            return Verdict(Phase.FAILED, "BackoffLimitExceeded", message)
        return Verdict(Phase.FAILED, failed.get("reason") or "Failed", message)
    # With restartPolicy Never a failed replica is final whatever the TFJob says yet: the run
    # must not be shown Running for hours after one of its replicas died.
    if facts.failure and run.spec.run_policy.backoff_limit == 0:
        return facts.failure
    return _progress(facts, tfjob)


def _progress(facts: _PodFacts, child: Obj) -> Verdict:
    kind, name = child.get("kind", "Job"), child["metadata"]["name"]
    if facts.running and facts.waiting is None:
        retry = ""
        if facts.failure:
            retry = f" (retrying after: {facts.failure.message.splitlines()[0]})"
        return Verdict(Phase.RUNNING, "Training", f"{kind} {name} is running{retry}")
    if facts.waiting:
        return facts.waiting
    if facts.running:
        return Verdict(Phase.RUNNING, "Training", f"{kind} {name} is running")
    return Verdict(Phase.PENDING, "Starting", f"{kind} {name} created; waiting for its pods to start")


def verdict(run: TrainingRun, observed: Observed, facts: _PodFacts | None = None) -> Verdict:
    if observed.refusal is not None:
        return observed.refusal
    if observed.not_created is not None:
        return observed.not_created
    facts = facts or _pod_facts(observed.pods, observed.logs)
    if observed.child is None:
        if observed.child_deleted:
            _, kind = child_kind(run)
            return Verdict(Phase.FAILED, "JobDeleted", f"the {kind} {child_name(run)} was deleted before it finished")
        return Verdict(Phase.PENDING, "Creating", "creating the training job")
    if observed.child.get("kind") == "TFJob":
        return _tfjob_verdict(run, observed.child, facts)
    return _job_verdict(run, observed.child, facts)


def promotable(run: TrainingRun, observed: Observed, phase: Phase) -> tuple[ConditionStatus, str, str]:
    """(status, reason, message) of the Promotable condition."""
    if observed.model_retrying is not None:
        return "Unknown", "ModelReadRetrying", observed.model_retrying
    if phase == Phase.FAILED:
        return "False", "RunFailed", "the run failed"
    if phase != Phase.SUCCEEDED:
        return "Unknown", "NotFinished", "the run has not finished"
    if observed.model is None:
        return "False", "ModelNotFound", observed.model_error or "model.json was not found at the output URI"
    gate = run.spec.gate
    if gate is None:
        return "True", "NoGate", "no gate configured"
    value = observed.model.metrics.get(gate.metric)
    if value is None:
        return "False", "MetricMissing", f"metric {gate.metric!r} is not in the model's metrics ({sorted(observed.model.metrics)})"
    passed = value >= gate.threshold if gate.direction == "higher" else value <= gate.threshold
    op = ">=" if gate.direction == "higher" else "<="
    if passed:
        return "True", "GatePassed", f"{gate.metric}={value:.4g} {op} {gate.threshold:g}"
    return "False", "GateNotMet", f"{gate.metric}={value:.4g} is not {op} {gate.threshold:g}"


def model_recorded(observed: Observed, phase: Phase) -> tuple[ConditionStatus, str, str]:
    """(status, reason, message) of the ModelRecorded condition."""
    if observed.model_retrying is not None:
        return "False", "ModelReadRetrying", observed.model_retrying
    if phase == Phase.FAILED:
        return "False", "RunFailed", "the run failed: no model"
    if phase != Phase.SUCCEEDED:
        return "Unknown", "NotFinished", "the run has not finished"
    if observed.model is None:
        return "False", "ModelNotFound", observed.model_error or "model.json was not found at the output URI"
    return "True", "ModelRecorded", f"model {observed.model.digest} recorded from {observed.model.uri}"


# Phases only move forward; a terminal phase is final (handled before this is consulted).
_RANK: Final = {Phase.PENDING: 0, Phase.RUNNING: 1, Phase.SUCCEEDED: 2, Phase.FAILED: 2}


def _forward(previous: Phase | None, result: Verdict, observed: Observed) -> Verdict:
    """The verdict with its phase never behind the previous one, and never terminal too early.

    A replica restarting makes the pods look Pending again; the run is still Running (the
    reason and message say what is going on). A finished Job whose model.json cannot be read
    yet, because S3 answered with a temporary error, is not a fact to freeze: it stays Running
    until a definite answer.
    """
    if result.phase == Phase.SUCCEEDED and observed.model_retrying is not None:
        return Verdict(
            Phase.RUNNING,
            "ModelReadRetrying",
            f"training finished; reading model.json failed temporarily, retrying: {observed.model_retrying}",
        )
    if previous is not None and _RANK[result.phase] < _RANK[previous]:
        if result.reason == "Starting":  # nothing failed or waits on anything: a new pod
            return Verdict(previous, "ReplicaRestarting", "a replica is restarting: its new pod has not started yet")
        return Verdict(previous, result.reason, result.message)
    return result


def compute_status(
    run: TrainingRun, observed: Observed, *, output_uri: str, now: datetime | None = None
) -> TrainingRunStatus:
    previous = run.status
    if previous.phase is not None and previous.phase.terminal:
        return previous
    stamp = now_rfc3339(now)
    facts = _pod_facts(observed.pods, observed.logs)
    result = _forward(previous.phase, verdict(run, observed, facts), observed)
    phase = result.phase
    gen = run.generation
    prev_conds = previous.conditions
    api_version, kind = child_kind(run)
    created = observed.child is not None or previous.job_ref is not None

    def cond(type_: ConditionType, status: ConditionStatus, reason: str, message: str) -> Condition:
        return condition(prev_conds, type_.value, status, reason, message, generation=gen, now=stamp)

    blocked = observed.refusal or observed.not_created
    if blocked is not None:
        created_cond = cond(ConditionType.CREATED, "False", blocked.reason, blocked.message)
    elif created:
        created_cond = cond(ConditionType.CREATED, "True", f"{kind}Created", f"{kind} {child_name(run)} created")
    else:
        created_cond = cond(ConditionType.CREATED, "False", "Creating", "creating the training job")

    conditions = [
        created_cond,
        cond(
            ConditionType.RUNNING,
            "True" if phase == Phase.RUNNING else "False",
            result.reason,
            result.message,
        ),
        cond(
            ConditionType.SUCCEEDED,
            "True" if phase == Phase.SUCCEEDED else "False",
            result.reason,
            result.message if phase == Phase.SUCCEEDED else "",
        ),
        cond(
            ConditionType.FAILED,
            "True" if phase == Phase.FAILED else "False",
            result.reason if phase == Phase.FAILED else "NotFailed",
            result.message if phase == Phase.FAILED else "",
        ),
        cond(ConditionType.PROMOTABLE, *promotable(run, observed, phase)),
        cond(ConditionType.MODEL_RECORDED, *model_recorded(observed, phase)),
    ]
    child_generation = _child_generation(observed.child)
    if child_generation is not None and child_generation != gen:
        conditions.append(
            cond(
                ConditionType.SPEC_CHANGED,
                "True",
                "SpecChangedAfterStart",
                f"the spec changed (generation {gen}) after the {kind} was created from generation "
                f"{child_generation}: the run goes on with the spec it started with; create a new "
                "TrainingRun to train with the new one",
            )
        )
    history = list(previous.phase_history)
    if not history or history[-1].phase != phase:
        history.append(PhaseTransition(phase=phase, time=stamp, reason=result.reason))
    history = history[-MAX_HISTORY:]
    start_time = previous.start_time
    if start_time is None and phase in (Phase.RUNNING, Phase.SUCCEEDED, Phase.FAILED) and created:
        start_time = facts.start_time or stamp
    job_ref = previous.job_ref
    if observed.child is not None:
        meta = observed.child.get("metadata", {})
        job_ref = JobRef.model_validate(
            {"apiVersion": api_version, "kind": kind, "name": meta.get("name"), "uid": meta.get("uid")}
        )
    commit = facts.commit or (previous.source.commit if previous.source else None)
    return TrainingRunStatus.model_validate(
        {
            "phase": phase,
            "reason": result.reason,
            "message": result.message,
            "conditions": conditions,
            "observedGeneration": gen,
            "startTime": start_time,
            "completionTime": stamp if phase.terminal else None,
            "jobRef": job_ref,
            "phaseHistory": history,
            "outputUri": output_uri,
            "source": SourceStatus(commit=commit) if commit else None,
            "model": observed.model if phase == Phase.SUCCEEDED else None,
            "notifiedAt": previous.notified_at,
        }
    )


def _child_generation(child: Obj | None) -> int | None:
    value = ((child or {}).get("metadata", {}).get("annotations") or {}).get(ANNOTATION_GENERATION)
    return int(value) if value and value.isdigit() else None


def status_patch(status: TrainingRunStatus) -> dict[str, Any]:
    """The JSON merge patch body: every field, with null for the absent so stale ones are cleared."""
    dumped: dict[str, Any] = status.model_dump(mode="json", by_alias=True, exclude_none=False)
    return {"status": dumped}
