"""The kopf wiring for TrainingRuns: only decorators here, each delegating to the Reconciler.

Only event handlers and indices are used, never kopf's create/update/timer handlers: those
persist per-object bookkeeping (annotations, finalizers) with a patch each, while a level-based
reconcile needs none of it, and a run must stay deletable while the operator is down.
"""

from __future__ import annotations

from typing import Any

import kopf

from kakehashi import GROUP, VERSION
from kakehashi.api.trainingrun import PLURAL
from kakehashi.control import kopfsetup
from kakehashi.control.controller import Key
from kakehashi.training.children import LABEL_RUN
from kakehashi.training.reconciler import Reconciler

_OWNED = {LABEL_RUN: kopf.PRESENT}


def _get(memo: kopf.Memo) -> Reconciler:
    reconciler: Reconciler | None = getattr(memo, "trainingruns", None)
    if reconciler is None:
        raise RuntimeError("the TrainingRun reconciler is not configured (use `kakehashi operator run`)")
    return reconciler


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    kopfsetup.configure(settings)
    _get(memo)  # fail at startup, not at the first event, when the operator lacks its controller


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    kopfsetup.stop(memo, "trainingruns", _get(memo))


@kopf.index(GROUP, VERSION, PLURAL)
def runs(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    return {(namespace or "", name): dict(body)}


@kopf.index("batch", "v1", "jobs", labels=_OWNED)
def jobs(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    return {(namespace or "", labels[LABEL_RUN]): dict(body)}


@kopf.index("kubeflow.org", "v1", "tfjobs", labels=_OWNED)
def tfjobs(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    return {(namespace or "", labels[LABEL_RUN]): dict(body)}


@kopf.index("", "v1", "pods", labels=_OWNED)
def pods(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    return {(namespace or "", labels[LABEL_RUN]): dict(body)}


def _bind(kwargs: dict[str, Any]) -> Reconciler:
    rec = _get(kwargs["memo"])
    if not rec.indices:
        rec.bind(runs=kwargs["runs"], jobs=kwargs["jobs"], tfjobs=kwargs["tfjobs"], pods=kwargs["pods"])
        # Here, in a handler's context, not at startup: see kopfsetup.start.
        kopfsetup.start(kwargs["memo"], "trainingruns", rec, rec.settings.resync_seconds)
    return rec


@kopf.on.event(GROUP, VERSION, PLURAL)
async def run_event(event: kopf.RawEvent, namespace: str | None, name: str, **kwargs: Any) -> None:
    rec = _bind(kwargs)
    key = (namespace or "", name)
    services = getattr(kwargs["memo"], "modelservices", None)
    if services is not None:  # a run finishing is what lets the services serving it bake
        services.training_run_changed(*key)
    if event["type"] == "DELETED":
        rec.forget(key)
        return
    rec.request(key)


@kopf.on.event("batch", "v1", "jobs", labels=_OWNED)
@kopf.on.event("kubeflow.org", "v1", "tfjobs", labels=_OWNED)
@kopf.on.event("", "v1", "pods", labels=_OWNED)
async def child_event(namespace: str | None, labels: kopf.Labels, **kwargs: Any) -> None:
    _bind(kwargs).request((namespace or "", labels[LABEL_RUN]))
