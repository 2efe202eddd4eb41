"""The ModelService reconcile loop: resolve the model, bake it once, deliver, read production back.

The shape is TrainingRun's (`kakehashi.control`): events only request a reconcile, requests are
coalesced per service, temporary failures back off and are never recorded as facts, refusals
are. Production is another cluster whose events this operator does not watch, so a service that
is rolling out or degraded is looked at again after a short delay until it settles.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from pydantic import ValidationError

from kakehashi import GROUP, metrics
from kakehashi.api.modelservice import (
    RESOURCE,
    ConditionType,
    ModelRef,
    ModelService,
    ModelServiceStatus,
    Phase,
)
from kakehashi.api.trainingrun import RESOURCE as TRAININGRUNS
from kakehashi.control.backoff import Backoff
from kakehashi.control.client import Kube
from kakehashi.control.controller import Controller, Key, items
from kakehashi.control.errors import PermanentError, TemporaryError, api_message, classify
from kakehashi.control.resources import JOBS
from kakehashi.delivery.direct import Production
from kakehashi.serving import bakejob, render
from kakehashi.serving.gitops import GitOpsDelivery
from kakehashi.serving.render import Release
from kakehashi.serving.status import (
    Observed,
    Problem,
    ResolvedModel,
    bake_failed_temporarily,
    compute_status,
    status_patch,
)
from kakehashi.settings import OperatorSettings

T = TypeVar("T")
EventSink = Callable[[dict[str, Any], str, str, str], None]
ProductionFactory = Callable[[str], Production]
FINALIZER: Final = f"{GROUP}/production-cleanup"
ANNOTATION_CHANGED_BY: Final = f"{GROUP}/changed-by"
METRIC_RESOURCE: Final = "modelservice"
ROLLOUT_POLL_S: Final = 2.0

logger = logging.getLogger("kakehashi.serving")


def _changed_by(body: dict[str, Any]) -> str | None:
    """Who changed the spec: the annotation the CLI, SDK and bot set, else the field manager."""
    meta = body.get("metadata", {})
    annotated = (meta.get("annotations") or {}).get(ANNOTATION_CHANGED_BY)
    if annotated:
        return str(annotated)
    spec_writers = [m for m in meta.get("managedFields") or [] if "f:spec" in (m.get("fieldsV1") or {})]
    latest = max(spec_writers, key=lambda m: m.get("time") or "", default=None)
    return f"{latest.get('manager')} ({latest.get('operation')})" if latest else None


def default_production(kubeconfig: str) -> Production:
    return Production.from_kubeconfig(kubeconfig, owner_label=render.LABEL_SERVICE, port=render.PORT)


_STATUSES: Final = ("True", "False", "Unknown")


def export_status_metrics(key: Key, status: ModelServiceStatus) -> None:
    """Set the service's condition and phase gauges from the status just computed (every
    reconcile, so a restarted operator exports them for services whose status did not change)."""
    namespace, name = key
    have = {c.type: c.status for c in status.conditions}
    for kind in ConditionType:
        for value in _STATUSES:
            metrics.MODELSERVICE_CONDITION.labels(namespace, name, kind.value, value).set(
                1 if have.get(kind.value, "Unknown") == value else 0)
    for phase in Phase:
        metrics.MODELSERVICE_PHASE.labels(namespace, name, phase.value).set(1 if status.phase == phase else 0)


def forget_status_metrics(key: Key) -> None:
    """The service is gone: its series go too (a deleted service must not stay "not Ready")."""
    namespace, name = key
    # remove() of a label set never exported is a no-op.
    for kind in ConditionType:
        for value in _STATUSES:
            metrics.MODELSERVICE_CONDITION.remove(namespace, name, kind.value, value)
    for phase in Phase:
        metrics.MODELSERVICE_PHASE.remove(namespace, name, phase.value)


class ServiceReconciler(Controller):
    def __init__(
        self,
        kube: Kube,
        settings: OperatorSettings,
        *,
        events: EventSink,
        production: ProductionFactory = default_production,
        gitops: GitOpsDelivery | None = None,
        threads: int = 8,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(METRIC_RESOURCE, threads=threads, backoff=backoff)
        self.kube = kube
        self.settings = settings
        self.event = events
        self.production_factory = production
        self.gitops = gitops or GitOpsDelivery(settings)
        self._productions: dict[str, Production] = {}
        self._applied: dict[Key, str] = {}  # what was last applied per service (its JSON)

    def forget(self, key: Key) -> None:
        super().forget(key)
        self._applied.pop(key, None)
        forget_status_metrics(key)

    def pending_keys(self) -> list[Key]:
        return list(self.indices.get("services") or {})

    def training_run_changed(self, namespace: str, run: str) -> None:
        """A TrainingRun changed: the services that serve it may have something to do."""
        for key in list(self.indices.get("services") or {}):
            for body in items(self.indices.get("services"), key):
                if key[0] == namespace and (body.get("spec", {}).get("model") or {}).get("trainingRun") == run:
                    self.request(key)

    # -- the reconcile ----------------------------------------------------------------------

    async def reconcile(self, key: Key) -> None:
        body = self.current("services", key)
        if body is None:
            return
        meta = body["metadata"]
        if meta.get("deletionTimestamp"):
            await self._delete(key, body)
            return
        if FINALIZER not in (meta.get("finalizers") or []):
            await self.io(self.kube.patch, RESOURCE, key[0], key[1],
                          {"metadata": {"finalizers": [*(meta.get("finalizers") or []), FINALIZER]}})
        try:
            ms = ModelService.model_validate(body)
        except ValidationError as error:
            shell = ModelService.model_construct(metadata=meta, status=ModelServiceStatus.model_validate(body.get("status") or {}))
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors(include_url=False))
            await self._conclude(key, body, shell, Observed(refusal=Problem("InvalidSpec", problems)))
            return
        observed = await self._observe(key, body, ms)
        status = await self._conclude(key, body, ms, observed)
        if status.phase in (Phase.BAKING, Phase.DEPLOYING, Phase.DEGRADED):
            # Bake Jobs send events; production does not (not watched): look again soon.
            self.queue.request_later(key, ROLLOUT_POLL_S)

    async def _observe(self, key: Key, body: dict[str, Any], ms: ModelService) -> Observed:
        changed_by = _changed_by(body)
        delivery = ms.spec.delivery
        if getattr(delivery, delivery.mode) is None:  # the CRD's CEL rule refuses this first
            return Observed(refusal=Problem(
                "InvalidSpec", f"delivery.mode {delivery.mode} needs delivery.{delivery.mode}",
            ), changed_by=changed_by)
        release: Release | None = None
        rollback = False
        model: ResolvedModel | None = None
        if ms.spec.rollback_to:
            entry = next((h for h in reversed(ms.status.history)
                          if ms.spec.rollback_to in (str(h.id), h.image, h.image.rpartition("@")[2], h.model_digest)),
                         None)
            if entry is None:
                return Observed(refusal=Problem(
                    "RollbackTargetNotFound",
                    f"spec.rollbackTo {ms.spec.rollback_to!r} is not a status.history id, image or digest",
                ), changed_by=changed_by)
            release, rollback = Release(entry.image, entry.model_digest), True
        else:
            resolved = await self._resolve(ms, ms.spec.model, ms.spec.gate_override.reason if ms.spec.gate_override else None)
            if isinstance(resolved, Observed):
                return resolved
            model = resolved
        bake_job: dict[str, Any] | None = None
        bake_pods: list[dict[str, Any]] = []
        if release is None and model is not None:
            release, bake_job, bake_pods = await self._baked(key, body, ms, model)
            if release is None:
                return Observed(model=model, bake_job=bake_job, bake_pods=bake_pods, changed_by=changed_by)
        assert release is not None
        canary_release: Release | None = None
        if ms.spec.canary is not None:
            canary_model = await self._resolve(ms, ms.spec.canary.model, None)
            if isinstance(canary_model, Observed):
                return canary_model
            canary_release, _, _ = await self._baked(key, body, ms, canary_model)
            if canary_release is None:
                return Observed(model=model, waiting=Problem("BakingCanary", "baking the canary's image"),
                                changed_by=changed_by)
        return await self._deliver(key, ms, release, canary_release, model, rollback, bake_job, bake_pods, changed_by)

    async def _resolve(self, ms: ModelService, ref: ModelRef, override: str | None) -> ResolvedModel | Observed:
        if ref.uri is not None and ref.digest is not None:
            return ResolvedModel(uri=ref.uri, digest=ref.digest, gate_override=override)
        name = ref.training_run or ""
        runs = items(self.indices.get("runs"), (ms.namespace, name))
        run = runs[0] if runs else await self.io(self.kube.get, TRAININGRUNS, ms.namespace, name)
        if run is None:
            return Observed(waiting=Problem("TrainingRunNotFound", f"TrainingRun {name} does not exist (yet)"))
        status = run.get("status") or {}
        phase = status.get("phase")
        if phase == "Failed":
            return Observed(refusal=Problem("TrainingRunFailed", f"TrainingRun {name} failed: {status.get('message', '')[:500]}"))
        if phase != "Succeeded":
            return Observed(waiting=Problem("TrainingRunNotFinished", f"waiting for TrainingRun {name} ({phase or 'new'})"))
        if not status.get("model"):
            return Observed(refusal=Problem("NoModel", f"TrainingRun {name} recorded no model: {status.get('message', '')[:500]}"))
        promotable: dict[str, Any] = next(
            (c for c in status.get("conditions") or [] if c.get("type") == "Promotable"), {}
        )
        if promotable.get("status") != "True" and override is None:
            return Observed(refusal=Problem(
                "NotPromotable",
                f"TrainingRun {name} is not Promotable ({promotable.get('reason', '?')}: "
                f"{promotable.get('message', '')}); set spec.gateOverride.reason to serve it anyway",
            ))
        model = status["model"]
        git = (model.get("lineage") or {}).get("git") or {}
        return ResolvedModel(
            uri=model["uri"], digest=model["digest"], training_run=name,
            gate_override=override if promotable.get("status") != "True" else None,
            metrics=dict(model.get("metrics") or {}), source=git.get("url"),
            revision=git.get("commit") or (status.get("source") or {}).get("commit"),
            gate=promotable.get("message") or promotable.get("reason"),
        )

    async def _baked(
        self, key: Key, body: dict[str, Any], ms: ModelService, model: ResolvedModel
    ) -> tuple[Release | None, dict[str, Any] | None, list[dict[str, Any]]]:
        """The image for this model (baked once), or the bake Job still at work."""
        for entry in reversed(ms.status.history):
            if entry.model_digest == model.digest:
                return Release(entry.image, model.digest), None, []
        bake = ms.status.bake
        if bake is not None and bake.image and bake.model_digest == model.digest:
            return Release(bake.image, model.digest), None, []
        name = bakejob.job_name(ms, model.digest, ms.spec.serving_image)
        job = next((j for j in items(self.indices.get("bakejobs"), key) if j["metadata"]["name"] == name), None)
        if job is None:
            job = await self.io(self.kube.get, JOBS, ms.namespace, name)
        if job is None:
            rendered = bakejob.render_job(ms, model, self.settings)
            try:
                job, _ = await self.io(self.kube.create, JOBS, rendered)
            except Exception as error:
                if isinstance(classify(error), PermanentError):
                    raise PermanentError(f"the bake Job was refused: {api_message(error)}") from error
                raise
            self.event(body, "Normal", "BakeStarted", f"baking {model.digest} onto {ms.spec.serving_image} (Job {name})")
        assert job is not None
        uid = job["metadata"].get("uid")
        pods = [p for p in items(self.indices.get("bakepods"), key)
                if any(r.get("uid") == uid for r in p["metadata"].get("ownerReferences") or [])]
        outcome = bakejob.outcome(pods)
        if outcome is not None:
            if outcome.model_digest != model.digest:
                raise PermanentError(f"the bake Job reported model {outcome.model_digest}, expected {model.digest}")
            return Release(outcome.image, model.digest), job, pods
        if bake_failed_temporarily(job, pods):
            # The registry stayed away through the Job's own retries: no final answer about the
            # model. The Job goes and the next look creates it again under the same name; the
            # new one skips every blob the registry already has, so nothing is pushed twice.
            if await self.io(self.kube.delete, JOBS, ms.namespace, name):
                self.event(body, "Warning", "BakeRetrying",
                           f"the registry {ms.spec.registry.partition('/')[0]} failed through every retry of "
                           f"Job {name}: baking again")
        return None, job, pods

    async def _deliver(
        self, key: Key, ms: ModelService, release: Release, canary: Release | None, model: ResolvedModel | None,
        rollback: bool, bake_job: dict[str, Any] | None, bake_pods: list[dict[str, Any]], changed_by: str | None,
    ) -> Observed:
        desired = ms.spec.autoscaling.min if ms.spec.autoscaling else ms.spec.replicas
        base = Observed(model=model, release=release, rollback=rollback, bake_job=bake_job, bake_pods=bake_pods,
                        changed_by=changed_by, desired_replicas=desired)
        if ms.spec.delivery.mode == "gitops":
            return await self.gitops.deliver(self.io, self.kube, ms, release, canary, model, rollback, base)
        direct = ms.spec.delivery.direct
        assert direct is not None
        secret = await self.io(self.kube.read_secret, ms.namespace, direct.kubeconfig_secret.name)
        kubeconfig = (secret.data if secret else {}).get(direct.kubeconfig_secret.key)
        if not kubeconfig:
            # The Secret may be created next: not a final fact, but say so and come back.
            problem = Problem("KubeconfigMissing", f"Secret {direct.kubeconfig_secret.name} with key "
                              f"{direct.kubeconfig_secret.key} (the production kubeconfig) does not exist")
            return replace(base, delivery_problem=problem)
        production = self._productions.get(kubeconfig)
        if production is None:
            production = await self.io(self.production_factory, kubeconfig)
            self._productions = {kubeconfig: production}  # one kubeconfig at a time per operator is the norm
        objects = render.render(ms, release, direct.namespace, canary)
        fingerprint = repr(objects)
        if self._applied.get(key) != fingerprint:
            try:
                await self.io(production.apply, objects)
                await self.io(production.prune, direct.namespace, ms.name, objects)
            except Exception as error:
                kind = classify(error)
                if isinstance(kind, PermanentError):
                    problem = Problem("ApplyRefused", f"production refused the objects: {kind}")
                    return replace(base, delivery_problem=problem)
                raise TemporaryError(f"applying to production: {kind or error}") from error
            self._applied[key] = fingerprint
        state = await self.io(production.read, direct.namespace, ms.name)

        def track(name: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
            pods = [p for p in state.pods if (p["metadata"].get("labels") or {}).get(render.LABEL_TRACK) == name]
            names = {p["metadata"]["name"] for p in pods}
            return pods, {pod: digest for pod, digest in state.served.items() if pod in names}

        pods, served = track("stable")
        canary_pods, canary_served = track("canary") if canary is not None else ([], {})
        return replace(base, applied=True, deployment=state.deployments.get(ms.name), pods=pods, served=served,
                       canary=canary, canary_pods=canary_pods, canary_served=canary_served)

    async def _conclude(self, key: Key, body: dict[str, Any], ms: ModelService, observed: Observed) -> ModelServiceStatus:
        previous = ms.status
        status = compute_status(ms, observed, now=datetime.now(UTC))
        if status != previous:
            self.written(key, await self.io(self.kube.patch_status, RESOURCE, key[0], key[1], status_patch(status)))
        # After the write: the gauges say what the object's status says (a refused write retries).
        export_status_metrics(key, status)
        if status.phase != previous.phase:
            kind = "Warning" if status.phase in (Phase.FAILED, Phase.DEGRADED) else "Normal"
            self.event(body, kind, f"Service{status.phase}", f"{previous.phase or 'New'} -> {status.phase}: "
                       f"{status.reason}: {(status.message or '')[:900]}")
            logger.info("ModelService changed phase", extra={"namespace": key[0], "modelservice": key[1],
                                                              "phase": str(status.phase), "reason": status.reason})
        if len(status.history) > len(previous.history):
            entry = status.history[-1]
            self.event(body, "Normal", "Deployed", f"#{entry.id}: {entry.image} serves {entry.model_digest}"
                       + (" (rollback)" if entry.rollback else ""))
        return status

    async def _delete(self, key: Key, body: dict[str, Any]) -> None:
        finalizers = list(body["metadata"].get("finalizers") or [])
        if FINALIZER not in finalizers:
            return
        try:
            ms = ModelService.model_validate(body)
            direct = ms.spec.delivery.direct
            if ms.spec.delivery.mode == "gitops":
                withdrawal = await self.gitops.withdraw(self.io, self.kube, ms)
                if withdrawal is not None:
                    self.event(body, "Warning" if withdrawal.warning else "Normal", withdrawal.reason,
                               withdrawal.message)
        except ValidationError:
            direct = None
        if direct is not None:
            secret = await self.io(self.kube.read_secret, key[0], direct.kubeconfig_secret.name)
            kubeconfig = (secret.data if secret else {}).get(direct.kubeconfig_secret.key)
            if kubeconfig:
                production = await self.io(self.production_factory, kubeconfig)
                deleted = await self.io(production.delete_all, direct.namespace, key[1])
                logger.info("Removed from production", extra={"namespace": key[0], "modelservice": key[1],
                                                              "deleted": deleted})
        finalizers.remove(FINALIZER)
        await self.io(self.kube.patch, RESOURCE, key[0], key[1], {"metadata": {"finalizers": finalizers}})
        self.forget(key)
