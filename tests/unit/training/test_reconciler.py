"""The reconcile loop against an in-memory API: creates nothing twice, writes only changes,
coalesces bursts, lets pods go only once their story is recorded."""

from __future__ import annotations

import asyncio
from typing import Any

from kakehashi.settings import OperatorSettings
from kakehashi.training.children import POD_FINALIZER
from kakehashi.training.reconciler import Key, Reconciler

NS, NAME, RUN_UID = "team", "digits", "run-uid"
KEY: Key = (NS, NAME)


class FakeKube:
    """The few API calls the reconciler makes, on dictionaries."""

    def __init__(self) -> None:
        self.children: dict[tuple[str, str], dict[str, Any]] = {}
        self.creates = 0
        self.patches: list[dict[str, Any]] = []
        self.released: list[str] = []

    def create_child(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        if key in self.children:
            return self.children[key], False
        self.creates += 1
        child = {**body, "metadata": {**body["metadata"], "uid": "child-uid"}, "status": {}}
        self.children[key] = child
        return child, True

    def get_child(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.children.get((namespace, name))

    def patch_run_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.patches.append(patch)
        return {"metadata": {"uid": RUN_UID, "resourceVersion": str(1000 + len(self.patches))}, "status": patch["status"]}

    def remove_pod_finalizer(self, namespace: str, name: str, finalizers: list[str], finalizer: str) -> None:
        self.released.append(name)

    def log_tail(self, namespace: str, pod: str, container: str, lines: int) -> str:
        return ""

    def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        return None


def run_body(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kakehashi.dev/v1alpha1", "kind": "TrainingRun",
        "metadata": {"name": NAME, "namespace": NS, "uid": RUN_UID, "generation": 1, "resourceVersion": "1"},
        "spec": spec,
    }


def pod(phase: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "digits-x", "namespace": NS, "finalizers": [POD_FINALIZER],
                     "ownerReferences": [{"uid": "child-uid"}]},
        "status": {"phase": phase, "startTime": "2026-11-25T12:00:00Z"},
    }


def make(kube: FakeKube) -> tuple[Reconciler, list[tuple[str, str]], dict[str, dict[Key, list[dict[str, Any]]]]]:
    events: list[tuple[str, str]] = []
    rec = Reconciler(kube, OperatorSettings(), lambda uri: None,  # type: ignore[arg-type]
                     threads=2, events=lambda body, type_, reason, message: events.append((type_, reason)))
    indices: dict[str, dict[Key, list[dict[str, Any]]]] = {"runs": {KEY: [run_body()]}, "jobs": {}, "tfjobs": {}, "pods": {}}
    rec.bind(**indices)
    return rec, events, indices


def test_a_lagging_cache_never_creates_a_second_job() -> None:
    kube = FakeKube()
    rec, events, _ = make(kube)
    asyncio.run(rec.reconcile(KEY))
    # The watch has not delivered the Job yet: the next reconcile must not create again.
    asyncio.run(rec.reconcile(KEY))
    assert kube.creates == 1
    assert events.count(("Normal", "JobCreated")) == 1
    assert kube.patches[0]["status"]["phase"] == "Pending"
    assert kube.patches[0]["status"]["jobRef"]["uid"] == "child-uid"


def test_a_restarted_operator_adopts_the_existing_job() -> None:
    kube = FakeKube()
    kube.children[KEY] = {"kind": "Job", "metadata": {"name": NAME, "namespace": NS, "uid": "child-uid",
                                                      "ownerReferences": [{"uid": RUN_UID}]}, "status": {}}
    rec, events, _ = make(kube)
    asyncio.run(rec.reconcile(KEY))
    assert kube.creates == 0 and ("Normal", "JobCreated") not in events
    assert kube.patches[-1]["status"]["jobRef"]["uid"] == "child-uid"


def test_an_unchanged_status_is_not_written_again() -> None:
    kube = FakeKube()
    rec, _, indices = make(kube)
    asyncio.run(rec.reconcile(KEY))
    indices["jobs"][KEY] = [kube.children[KEY]]
    indices["pods"][KEY] = [pod("Running")]
    asyncio.run(rec.reconcile(KEY))
    writes = len(kube.patches)
    asyncio.run(rec.reconcile(KEY))
    assert len(kube.patches) == writes
    assert kube.patches[-1]["status"]["phase"] == "Running"
    assert kube.released == []  # still running: the pod keeps its finalizer


def test_the_end_is_one_write_then_the_pods_are_released() -> None:
    kube = FakeKube()
    rec, events, indices = make(kube)
    asyncio.run(rec.reconcile(KEY))
    child = kube.children[KEY]
    child["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    indices["jobs"][KEY] = [child]
    indices["pods"][KEY] = [pod("Succeeded")]
    before = len(kube.patches)
    asyncio.run(rec.reconcile(KEY))
    assert len(kube.patches) == before + 1
    final = kube.patches[-1]["status"]
    assert final["phase"] == "Succeeded" and final["notifiedAt"]
    assert ("Normal", "RunSucceeded") in events
    assert kube.released == ["digits-x"]


def test_a_burst_of_requests_costs_few_reconciles() -> None:
    kube = FakeKube()
    rec, _, _ = make(kube)
    calls = 0
    original = rec.reconcile

    async def counting(key: Key) -> None:
        nonlocal calls
        calls += 1
        await original(key)

    rec.reconcile = counting  # type: ignore[method-assign]

    async def burst() -> None:
        for _ in range(100):
            rec.request(KEY)
        await asyncio.sleep(0.5)

    asyncio.run(burst())
    assert calls == 1 and kube.creates == 1


def test_a_deleted_run_lets_its_pods_go() -> None:
    kube = FakeKube()
    rec, _, indices = make(kube)
    indices["runs"].pop(KEY)
    indices["pods"][KEY] = [pod("Running")]
    asyncio.run(rec.reconcile(KEY))
    assert kube.released == ["digits-x"] and kube.creates == 0
