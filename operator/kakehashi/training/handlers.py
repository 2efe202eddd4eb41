"""The kopf wiring for TrainingRuns: only decorators here, each delegating to the Reconciler.

Only event handlers and indices are used, never kopf's create/update/timer handlers: those
persist per-object bookkeeping (annotations, finalizers) with a patch each, while a level-based
reconcile needs none of it, and a run must stay deletable while the operator is down.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from kakehashi import GROUP, VERSION
from kakehashi.api.trainingrun import PLURAL
from kakehashi.training.children import LABEL_RUN
from kakehashi.training.reconciler import Key, Reconciler

# Set by the runner before kopf starts; module-level because kopf handlers are module-level.
reconciler: Reconciler | None = None
_OWNED = {LABEL_RUN: kopf.PRESENT}
_background: set[asyncio.Task[None]] = set()


def _get() -> Reconciler:
    if reconciler is None:
        raise RuntimeError("the TrainingRun reconciler is not configured (use `kakehashi operator run`)")
    return reconciler


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    # Only our explicit Events are posted; handler logs stay in the operator's log.
    settings.posting.level = logging.WARNING
    # Watches can freeze silently behind proxies: have both ends time them out and restart.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    settings.batching.batch_window = 0.05
    # Kept referenced: the event loop holds tasks only weakly.
    _background.add(asyncio.get_running_loop().create_task(_resync_loop()))


async def _resync_loop() -> None:
    # The safety net of level-based control: every unfinished run is recomputed periodically,
    # so even an event lost by a broken watch cannot leave a status wrong for long.
    rec = _get()
    while True:
        await asyncio.sleep(rec.settings.resync_seconds)
        for key in rec.pending_keys():
            rec.request(key)


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
    rec = _get()
    if not rec.indices:
        rec.bind(runs=kwargs["runs"], jobs=kwargs["jobs"], tfjobs=kwargs["tfjobs"], pods=kwargs["pods"])
    return rec


@kopf.on.event(GROUP, VERSION, PLURAL)
async def run_event(event: kopf.RawEvent, namespace: str | None, name: str, **kwargs: Any) -> None:
    rec = _bind(kwargs)
    key = (namespace or "", name)
    if event["type"] == "DELETED":
        rec.forget(key)
        return
    rec.request(key)


@kopf.on.event("batch", "v1", "jobs", labels=_OWNED)
@kopf.on.event("kubeflow.org", "v1", "tfjobs", labels=_OWNED)
@kopf.on.event("", "v1", "pods", labels=_OWNED)
async def child_event(namespace: str | None, labels: kopf.Labels, **kwargs: Any) -> None:
    _bind(kwargs).request((namespace or "", labels[LABEL_RUN]))
