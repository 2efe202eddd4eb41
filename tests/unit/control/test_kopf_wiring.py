"""kopf reaches each controller through the memo `kakehashi operator run` hands it, never a
module global: startup configures kopf and starts the resync, cleanup stops it and the worker
threads, and two operators in one process (two memos) never reach each other's controllers."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest

from kakehashi.control.controller import Key
from kakehashi.serving import handlers as serving_handlers
from kakehashi.serving.reconciler import ServiceReconciler
from kakehashi.settings import OperatorSettings
from kakehashi.training import handlers as training_handlers
from kakehashi.training.children import LABEL_RUN
from kakehashi.training.reconciler import Reconciler

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


def test_startup_and_cleanup_go_through_the_memo_and_stop_the_threads() -> None:
    runs, services, reconciled = _controllers()
    memo = kopf.Memo(trainingruns=runs, modelservices=services)
    settings = kopf.OperatorSettings()

    async def scenario() -> None:
        await training_handlers.configure(settings=settings, memo=memo)
        await serving_handlers.start_resync(memo=memo)
        runs.bind(**_indices())
        services.bind(services={KEY: [UNFINISHED]}, bakejobs={}, bakepods={}, runs={})
        # The resync, kept in the memo, asks for every unfinished object.
        for _ in range(1000):  # at most 10 s
            if {kind for kind, _ in reconciled} == {"run", "service"}:
                break
            await asyncio.sleep(0.01)
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
