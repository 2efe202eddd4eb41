"""Pure status logic for a ModelService: what the bake Job and production hold in, status out.

Honest by construction: Ready only when every wanted replica is ready *and* reports serving the
wanted model digest (read from the pods, not assumed from what was applied); pods that crash,
cannot pull or cannot be scheduled make the service Degraded with the reason, and the history
records a deploy only once it actually served.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from kakehashi.api.modelservice import (
    BakeRef,
    ConditionType,
    HistoryEntry,
    ModelService,
    ModelServiceStatus,
    Phase,
    PullRequestRef,
)
from kakehashi.control.conditions import Condition, ConditionStatus, condition, true_condition
from kakehashi.modelformat import now_rfc3339
from kakehashi.serving.render import ANNOTATION_MODEL_DIGEST, Release

MAX_HISTORY: Final = 50
_PULL: Final = {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull"}
_BROKEN: Final = {"CrashLoopBackOff", "CreateContainerConfigError", "CreateContainerError", "RunContainerError"}

Obj = Mapping[str, Any]


@dataclass(frozen=True)
class Problem:
    reason: str
    message: str


@dataclass(frozen=True)
class ResolvedModel:
    uri: str
    digest: str
    training_run: str | None = None
    gate_override: str | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    source: str | None = None  # git URL of the training code (an image label)
    revision: str | None = None  # the commit it trained from
    gate: str | None = None  # the gate's result in the TrainingRun's words (Promotable's message)


@dataclass(frozen=True)
class Observed:
    """What the operator read for one service (learning cluster, registry, production)."""

    refusal: Problem | None = None  # the spec or its model cannot be served: Failed
    waiting: Problem | None = None  # e.g. the TrainingRun has not finished: nothing to do yet
    model: ResolvedModel | None = None
    release: Release | None = None  # the baked (or rolled-back-to) image to serve
    rollback: bool = False
    bake_job: Obj | None = None
    bake_pods: Sequence[Obj] = ()
    applied: bool = False  # the objects are on production as rendered
    delivery_problem: Problem | None = None
    deployment: Obj | None = None
    pods: Sequence[Obj] = ()
    served: Mapping[str, str] = field(default_factory=dict)  # ready pod -> digest it reports
    # The canary track, apart: its one pod must serve the canary's digest too before Ready.
    canary: Release | None = None
    canary_pods: Sequence[Obj] = ()
    canary_served: Mapping[str, str] = field(default_factory=dict)
    desired_replicas: int = 1
    changed_by: str | None = None
    # delivery.mode gitops: the pull request proposing the release (state merged: the base
    # branch holds it). Production is not read in that mode: the bot deploys and watches it.
    pull_request: PullRequestRef | None = None


@dataclass(frozen=True)
class Verdict:
    phase: Phase
    reason: str
    message: str


def pod_problem(pod: Obj) -> Problem | None:
    """Why a pod does not become ready, in words an on-call engineer acts on."""
    name = pod.get("metadata", {}).get("name", "?")
    status = pod.get("status") or {}
    for cstatus in status.get("containerStatuses") or []:
        waiting = (cstatus.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason") or ""
        last = (cstatus.get("lastState") or {}).get("terminated") or {}
        if reason in _PULL:
            return Problem("ImagePullBackOff", f"pod {name} cannot pull {cstatus.get('image', '?')}: "
                           f"{waiting.get('message') or reason}")
        if reason in _BROKEN or (last and cstatus.get("restartCount", 0) > 0 and not cstatus.get("ready")):
            detail = ""
            if last:
                detail = f": exited {last.get('exitCode')} ({last.get('reason') or 'Error'})"
                if last.get("message"):
                    detail += f"; last log lines:\n{last['message'].strip()[-1500:]}"
            return Problem(reason or "CrashLoopBackOff",
                           f"pod {name} keeps crashing ({cstatus.get('restartCount', 0)} restarts){detail}")
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
            return Problem("Unschedulable", f"no node can run pod {name}: {cond.get('message', '')}")
    return None


# `kakehashi bake` exits 3 when the registry failed through all its retries: trying later helps.
BAKE_EXIT_TEMPORARY: Final = 3


def _bake_error(text: str) -> tuple[str, bool | None]:
    """`kakehashi bake` reports failures as {"error": {"reason", "message", "temporary"}}; else
    the log tail. Returns the words and whether the failure was temporary (None: not said)."""
    try:
        error = json.loads(text).get("error") or {}
        return f"{error['reason']}: {error['message']}"[-2000:], error.get("temporary")
    except (ValueError, AttributeError, KeyError, TypeError):
        return text.strip()[-2000:], None


def _last_bake_failure(pods: Sequence[Obj]) -> tuple[str, bool] | None:
    """The newest failed bake container's words, and whether retrying later can help."""
    for pod in sorted(pods, key=lambda p: p.get("metadata", {}).get("creationTimestamp") or "", reverse=True):
        for cstatus in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (cstatus.get("state") or {}).get("terminated") or {}
            code = terminated.get("exitCode")
            if code:
                words, temporary = _bake_error(terminated.get("message") or "")
                return words or f"exit code {code}", bool(temporary) if temporary is not None \
                    else code == BAKE_EXIT_TEMPORARY
    return None


def bake_failed_temporarily(job: Obj | None, pods: Sequence[Obj]) -> bool:
    """The bake Job gave up, but only because the registry was away: bake again, not Failed."""
    last = _last_bake_failure(pods)
    return bool(true_condition(job, "Failed")) and last is not None and last[1]


def bake_problem(job: Obj | None, pods: Sequence[Obj]) -> Problem | None:
    """Why the bake failed, or is failing and being retried (reason BakeRetrying)."""
    failed = true_condition(job, "Failed")
    for pod in sorted(pods, key=lambda p: p.get("metadata", {}).get("creationTimestamp") or "", reverse=True):
        last = _last_bake_failure([pod])
        if last is not None:
            message, temporary = last
            if failed and temporary:
                return Problem("BakeRetrying", "the registry failed through every retry of the bake Job; "
                               f"a new bake Job resumes the push: {message}")
            if failed:
                return Problem("BakeFailed", f"baking the image failed: {message}")
            return Problem("BakeRetrying", f"baking failed and is retried: {message}")
        problem = pod_problem(pod)
        if problem is not None and not failed:
            return Problem(f"Bake{problem.reason}", problem.message)
    if failed:
        return Problem("BakeFailed", f"baking the image failed: {failed.get('message') or failed.get('reason') or 'failed'}")
    return None


def verdict(observed: Observed) -> Verdict:
    if observed.refusal is not None:
        return Verdict(Phase.FAILED, observed.refusal.reason, observed.refusal.message)
    if observed.waiting is not None:
        return Verdict(Phase.BAKING, observed.waiting.reason, observed.waiting.message)
    if observed.release is None:
        problem = bake_problem(observed.bake_job, observed.bake_pods)
        if problem is not None and problem.reason == "BakeFailed":
            return Verdict(Phase.FAILED, problem.reason, problem.message)
        if problem is not None:
            return Verdict(Phase.BAKING, problem.reason, problem.message)
        digest = observed.model.digest if observed.model else "the model"
        return Verdict(Phase.BAKING, "Baking", f"baking {digest} into the serving image")
    if observed.delivery_problem is not None:
        return Verdict(Phase.DEGRADED, observed.delivery_problem.reason, observed.delivery_problem.message)
    pr = observed.pull_request
    if pr is not None and pr.state == "closed":
        # Declined by a reviewer: a fact about this proposal, not retried; a newer model or a
        # rollbackTo proposes again, and reopening the PR is seen at the next resync.
        return Verdict(Phase.FAILED, "PullRequestClosed", f"pull request #{pr.number} proposing "
                       f"{observed.release.image} was closed without merging ({pr.url}): change the "
                       "spec to propose another deploy, or reopen it")
    if pr is not None and pr.state == "open":
        return Verdict(Phase.PROPOSED, "AwaitingDeploy", f"pull request #{pr.number} proposes "
                       f"{observed.release.image}: comment /deploy <env> on {pr.url}")
    if pr is not None:
        how = f"pull request #{pr.number} was merged after /deploy rolled it out" if pr.number else \
            "committed there outside a pull request of this service"
        return Verdict(Phase.DELIVERED, "Merged", f"the GitOps repository holds {observed.release.image} ({how}); "
                       "production is watched by the GitOps bot, not read by this operator")
    if not observed.applied:
        return Verdict(Phase.DEPLOYING, "Applying", f"applying {observed.release.image} to production")
    wanted = observed.release.model_digest
    new_pods = [p for p in observed.pods
                if (p.get("metadata", {}).get("annotations") or {}).get(ANNOTATION_MODEL_DIGEST) == wanted]
    serving = sum(1 for digest in observed.served.values() if digest == wanted)
    others = sorted({d for d in observed.served.values() if d != wanted})
    for pod in new_pods:
        problem = pod_problem(pod)
        if problem is not None:
            still = f"; the earlier version keeps serving ({len(observed.served) - serving} ready pods)" if others else ""
            return Verdict(Phase.DEGRADED, problem.reason, problem.message + still)
    progressing = next((c for c in (observed.deployment or {}).get("status", {}).get("conditions") or []
                        if c.get("type") == "Progressing"), None)
    if progressing and progressing.get("status") == "False":
        return Verdict(Phase.DEGRADED, progressing.get("reason") or "NotProgressing", progressing.get("message") or "")
    if serving >= observed.desired_replicas and not others:
        canary = _canary_verdict(observed)
        if canary is not None:
            return canary
        also = f"; the canary's pod serves {observed.canary.model_digest}" if observed.canary else ""
        return Verdict(Phase.READY, "Serving", f"{serving} ready pods serve {wanted}{also}")
    return Verdict(
        Phase.DEPLOYING, "RollingOut",
        f"{serving}/{observed.desired_replicas} ready pods serve {wanted}"
        + (f"; still serving {', '.join(others)}" if others else ""),
    )


def _canary_verdict(observed: Observed) -> Verdict | None:
    """Why the canary keeps the service from Ready (its route already sends it traffic)."""
    if observed.canary is None:
        return None
    wanted = observed.canary.model_digest
    for pod in observed.canary_pods:
        problem = pod_problem(pod)
        if problem is not None:
            return Verdict(Phase.DEGRADED, f"Canary{problem.reason}", f"the canary: {problem.message}")
    if not any(digest == wanted for digest in observed.canary_served.values()):
        return Verdict(Phase.DEPLOYING, "CanaryRollingOut", f"the stable pods serve; the canary's pod does not serve "
                       f"{wanted} yet")
    return None


def compute_status(ms: ModelService, observed: Observed, *, now: datetime | None = None) -> ModelServiceStatus:
    previous = ms.status
    stamp = now_rfc3339(now)
    result = verdict(observed)
    gen = ms.generation

    def cond(type_: ConditionType, status: ConditionStatus, reason: str, message: str) -> Condition:
        return condition(previous.conditions, type_.value, status, reason, message, generation=gen, now=stamp)

    if observed.refusal is not None:
        resolved = cond(ConditionType.MODEL_RESOLVED, "False", result.reason, result.message)
    elif observed.model is None and not observed.rollback:
        resolved = cond(ConditionType.MODEL_RESOLVED, "Unknown", result.reason, result.message)
    else:
        override = observed.model.gate_override if observed.model else None
        resolved = cond(
            ConditionType.MODEL_RESOLVED, "True", "GateOverridden" if override else "Resolved",
            f"gate overridden: {override}" if override else
            (f"model {observed.model.digest}" if observed.model else "rolling back to an earlier deploy"),
        )
    if observed.release is not None:
        baked = cond(ConditionType.BAKED, "True", "RolledBack" if observed.rollback else "Baked", observed.release.image)
    elif result.phase in (Phase.BAKING, Phase.FAILED) and result.reason.startswith("Bake"):
        baked = cond(ConditionType.BAKED, "False", result.reason, result.message)
    else:
        baked = cond(ConditionType.BAKED, "Unknown", "NotBaked", "")
    merged = observed.pull_request is not None and observed.pull_request.state == "merged"
    deployed = cond(
        ConditionType.DEPLOYED, "True", "Merged", observed.release.image if observed.release else "",
    ) if merged else cond(
        ConditionType.DEPLOYED, "False", result.reason, result.message,
    ) if result.phase == Phase.PROPOSED or result.reason == "PullRequestClosed" else cond(
        ConditionType.DEPLOYED,
        "True" if observed.applied else "False",
        "Applied" if observed.applied else (observed.delivery_problem.reason if observed.delivery_problem else "NotApplied"),
        observed.release.image if observed.applied and observed.release else
        (observed.delivery_problem.message if observed.delivery_problem else ""),
    )
    # Delivered: the bot saw it ready before merging, but this operator does not read
    # production in gitops mode, so it does not claim Ready either way.
    ready = cond(ConditionType.READY, "Unknown" if result.phase == Phase.DELIVERED else
                 "True" if result.phase == Phase.READY else "False", result.reason, result.message)
    wanted = observed.release.model_digest if observed.release else None
    history = list(previous.history)
    if result.phase in (Phase.READY, Phase.DELIVERED) and observed.release is not None and (
        not history or history[-1].image != observed.release.image
    ):
        history.append(HistoryEntry(
            id=(history[-1].id + 1) if history else 1,
            modelDigest=observed.release.model_digest,
            image=observed.release.image,
            trainingRun=observed.model.training_run if observed.model else None,
            time=stamp,
            changedBy=observed.changed_by,
            gateOverride=observed.model.gate_override if observed.model else None,
            rollback=observed.rollback,
        ))
    bake = previous.bake
    if observed.bake_job is not None and observed.model is not None:
        meta = observed.bake_job.get("metadata", {})
        done = observed.release is not None and observed.release.model_digest == observed.model.digest
        bake = BakeRef(name=meta.get("name", ""), uid=meta.get("uid"), modelDigest=observed.model.digest,
                       image=observed.release.image if done and observed.release else None)
    return ModelServiceStatus.model_validate({
        "phase": result.phase,
        "reason": result.reason,
        "message": result.message,
        "conditions": [resolved, baked, deployed, ready],
        "observedGeneration": gen,
        "modelDigest": wanted or (observed.model.digest if observed.model else previous.model_digest),
        "image": observed.release.image if observed.release else previous.image,
        "servedDigests": sorted(set(observed.served.values())),
        "readyReplicas": sum(1 for d in observed.served.values() if d == wanted),
        "replicas": observed.desired_replicas,
        "url": previous.url,
        "bake": bake,
        "history": history[-MAX_HISTORY:],
        "pullRequest": observed.pull_request or previous.pull_request,
    })


def status_patch(status: ModelServiceStatus) -> dict[str, Any]:
    dumped: dict[str, Any] = status.model_dump(mode="json", by_alias=True, exclude_none=False)
    return {"status": dumped}
