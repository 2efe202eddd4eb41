"""The kopf wiring for ModelServices: indices and events, each delegating to the reconciler.

A TrainingRun's events also reach the services that serve it (a run finishing is what lets a
service bake), through the TrainingRun handlers calling `training_run_changed`.
"""

from __future__ import annotations

from typing import Any

import kopf

from kakehashi import GROUP, VERSION
from kakehashi.api.modelservice import PLURAL
from kakehashi.control import kopfsetup
from kakehashi.control.controller import Key
from kakehashi.serving.bakejob import LABEL_COMPONENT
from kakehashi.serving.reconciler import ServiceReconciler
from kakehashi.serving.render import LABEL_SERVICE

_BAKE: dict[str, Any] = {LABEL_SERVICE: kopf.PRESENT, LABEL_COMPONENT: "bake"}


def get(memo: kopf.Memo) -> ServiceReconciler | None:
    reconciler: ServiceReconciler | None = getattr(memo, "modelservices", None)
    return reconciler


def _get(memo: kopf.Memo) -> ServiceReconciler:
    reconciler = get(memo)
    if reconciler is None:
        raise RuntimeError("the ModelService reconciler is not configured (use `kakehashi operator run`)")
    return reconciler


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    kopfsetup.stop(memo, "modelservices", _get(memo))


@kopf.index(GROUP, VERSION, PLURAL)
def services(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    return {(namespace or "", name): dict(body)}


@kopf.index("batch", "v1", "jobs", labels=_BAKE)
def bakejobs(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    return {(namespace or "", labels[LABEL_SERVICE]): dict(body)}


@kopf.index("", "v1", "pods", labels=_BAKE)
def bakepods(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    return {(namespace or "", labels[LABEL_SERVICE]): dict(body)}


def _bind(kwargs: dict[str, Any]) -> ServiceReconciler:
    rec = _get(kwargs["memo"])
    if not rec.indices:
        rec.bind(services=kwargs["services"], bakejobs=kwargs["bakejobs"], bakepods=kwargs["bakepods"],
                 runs=kwargs["runs"])
        # Here, in a handler's context, not at startup: see kopfsetup.start.
        kopfsetup.start(kwargs["memo"], "modelservices", rec, rec.settings.resync_seconds)
    return rec


@kopf.on.event(GROUP, VERSION, PLURAL)
async def service_event(event: kopf.RawEvent, namespace: str | None, name: str, **kwargs: Any) -> None:
    rec = _bind(kwargs)
    key = (namespace or "", name)
    if event["type"] == "DELETED":
        rec.forget(key)
        return
    rec.request(key)


@kopf.on.event("batch", "v1", "jobs", labels=_BAKE)
@kopf.on.event("", "v1", "pods", labels=_BAKE)
async def bake_event(namespace: str | None, labels: kopf.Labels, **kwargs: Any) -> None:
    _bind(kwargs).request((namespace or "", labels[LABEL_SERVICE]))
