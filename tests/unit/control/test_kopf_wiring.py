"""kopf reaches each controller through the memo `kakehashi operator run` hands it, never a
module global: startup configures kopf, the first event starts the resync (in the context
where kopf's Event poster is reachable), cleanup stops it and the worker threads, and two operators in one process (two memos) never reach each other's controllers."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest
from kopf._core.engines import posting

from kakehashi.control.controller import Key
from kakehashi.serving import handlers as serving_handlers
from kakehashi.serving.reconciler import ServiceReconciler
from kakehashi.settings import OperatorSettings
from kakehashi.training import handlers as training_handlers
from kakehashi.training.children import LABEL_RUN
from kakehashi.training.reconciler import Reconciler, kopf_events

SETTINGS = OperatorSettings(resync_seconds=0.05)
KEY: Key = ("team", "digits")
UNFINISHED = {"metadata": {"name": "digits", "namespace": "team"}, "status": {"phase": "Running"}}


def _controllers() -> tuple[Reconciler, ServiceReconciler, list[tuple[str, Key]]]:
    reconciled: list[tuple[str, Key]] = []
    runs = Reconciler(object(), SETTINGS, lambda uri: None, threads=2,  # type: ignore[arg-type]
                      events=lambda *args: None)
    services = ServiceReconciler(object(), SETTINGS, events=lambda *args: None, threads=2)  # type: ignore[arg-type]

    async def run_reconciled(key: Key) -> None:
        reconciled.append(("run", key))

    async def service_reconciled(key: Key) -> None:
        reconciled.append(("service", key))

    # The queue looks `reconcile` up at call time: these record instead of calling an API.
    runs.reconcile = run_reconciled  # type: ignore[method-assign]
    services.reconcile = service_reconciled  # type: ignore[method-assign]
    return runs, services, reconciled


def _indices() -> dict[str, Any]:
    return {"runs": {KEY: [UNFINISHED]}, "jobs": {}, "tfjobs": {}, "pods": {}}


def test_the_resync_starts_with_the_first_event_posts_events_and_cleanup_stops_it() -> None:
    runs, services, reconciled = _controllers()
    memo = kopf.Memo(trainingruns=runs, modelservices=services)
    settings = kopf.OperatorSettings()
    posted: asyncio.Queue[Any] = asyncio.Queue()

    async def post_while_reconciling(kind: str, key: Key) -> None:
        reconciled.append((kind, key))
        # What a reconcile does on a phase change; it needs kopf's poster in its context.
        kopf_events({"apiVersion": "v1", "kind": "Thing", "metadata": {"name": key[1], "namespace": key[0]}},
                    "Normal", f"{kind}-reconciled", "")

    runs.reconcile = lambda key: post_while_reconciling("run", key)  # type: ignore[method-assign]
    services.reconcile = lambda key: post_while_reconciling("service", key)  # type: ignore[method-assign]

    async def handle_one_object() -> None:
        # As kopf does in the task handling one object's events (kopf/_core/reactor/processing.py),
        # and only there: its startup handlers never see these.
        posting.event_queue_loop_var.set(asyncio.get_running_loop())
        posting.event_queue_var.set(posted)
        await training_handlers.run_event(event={"type": "ADDED"}, namespace="team", name="digits",
                                          memo=memo, **_indices())
        await serving_handlers.service_event(event={"type": "ADDED"}, namespace="team", name="digits", memo=memo,
                                             services={KEY: [UNFINISHED]}, bakejobs={}, bakepods={}, runs={})

    async def scenario() -> None:
        posting.settings_var.set(settings)  # kopf sets it operator-wide
        await training_handlers.configure(settings=settings, memo=memo)
        assert getattr(memo, "trainingruns_resync", None) is None, "no resync before the first event"
        await asyncio.create_task(handle_one_object())
        await runs.queue.drain()
        await services.queue.drain()
        reconciled.clear()
        while not posted.empty():
            posted.get_nowait()
        # The resync, kept in the memo, asks again for every unfinished object, and those
        # reconciles post their Events through kopf's poster.
        for _ in range(1000):  # at most 10 s
            if {kind for kind, _ in reconciled} == {"run", "service"}:
                break
            await asyncio.sleep(0.01)
        await runs.queue.drain()
        await services.queue.drain()
        reasons = set()
        while not posted.empty():
            reasons.add(posted.get_nowait().reason)
        assert reasons == {"run-reconciled", "service-reconciled"}
        await training_handlers.cleanup(memo=memo)
        await serving_handlers.stop(memo=memo)
        await asyncio.sleep(0)
        assert memo.trainingruns_resync.cancelled() and memo.modelservices_resync.cancelled()

    asyncio.run(scenario())
    assert settings.persistence.finalizer == "kakehashi.dev/finalizer"
    assert settings.watching.client_timeout and settings.watching.server_timeout
    # kopf's cleanup stopped every worker thread pool: nothing new can start on them.
    for executor in (runs.executor, runs.create_executor, services.executor):
        with pytest.raises(RuntimeError, match="shutdown"):
            executor.submit(print)


def test_two_memos_reach_only_their_own_controllers() -> None:
    first_runs, first_services, first = _controllers()
    second_runs, _, second = _controllers()
    first_services.bind(services={KEY: [{"spec": {"model": {"trainingRun": "digits"}}}]},
                        bakejobs={}, bakepods={}, runs={})
    memos = [kopf.Memo(trainingruns=first_runs, modelservices=first_services), kopf.Memo(trainingruns=second_runs)]

    async def scenario() -> None:
        await training_handlers.run_event(event={"type": "MODIFIED"}, namespace="team", name="digits",
                                          memo=memos[0], **_indices())
        await training_handlers.child_event(namespace="team", labels={LABEL_RUN: "other"},
                                            memo=memos[1], **_indices())
        await first_runs.queue.drain()
        await first_services.queue.drain()
        await second_runs.queue.drain()

    asyncio.run(scenario())
    # The run's event reached its own reconciler and the services (same memo) serving it.
    assert sorted(first) == [("run", KEY), ("service", KEY)]
    assert second == [("run", ("team", "other"))]


def test_an_operator_started_without_its_controllers_says_how_to_start_it() -> None:
    with pytest.raises(RuntimeError, match="kakehashi operator run"):
        asyncio.run(training_handlers.cleanup(memo=kopf.Memo()))
    with pytest.raises(RuntimeError, match="kakehashi operator run"):
        asyncio.run(serving_handlers.stop(memo=kopf.Memo()))
