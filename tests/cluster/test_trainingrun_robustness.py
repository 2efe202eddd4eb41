"""The operator survives what production throws at it, and creates nothing twice."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from trainingruns import Runs, wait_for

from kakehashi.dev import stack


@pytest.fixture
def runs(learning: Any, namespace: str, operator: Any) -> Runs:
    return Runs(learning, namespace)


def test_operator_killed_mid_run_resumes_without_a_second_job(runs: Runs, operator: Any) -> None:
    runs.create("survivor", {}, pod_annotations={"kwok.kakehashi.dev/run-duration": "6s"})
    running = runs.wait_phase("survivor", "Running")
    job_uid = running["jobRef"]["uid"]
    operator.kill()
    try:
        # While the operator is down the pod finishes; nobody is watching.
        wait_for(lambda: all(p.status.phase == "Succeeded" for p in runs.pods("survivor")), 30, "pod done")
        assert runs.status("survivor")["phase"] == "Running"
    finally:
        operator.start()
    status = runs.wait_phase("survivor", "Succeeded", "Failed")
    assert status["phase"] == "Succeeded"
    [job] = runs.jobs("survivor")
    assert job.metadata.uid == job_uid == status["jobRef"]["uid"]
    phases = [h["phase"] for h in status["phaseHistory"]]
    assert phases.count("Running") == 1 and phases[-1] == "Succeeded"


def test_run_created_while_the_operator_is_down_is_picked_up(runs: Runs, operator: Any) -> None:
    operator.stop()
    try:
        runs.create("latecomer", {}, pod_annotations={"kwok.kakehashi.dev/run-duration": "1s"})
    finally:
        operator.start()
    assert runs.wait_phase("latecomer", "Succeeded", "Failed")["phase"] == "Succeeded"
    assert len(runs.jobs("latecomer")) == 1


def test_api_server_restart_mid_run_is_survived(runs: Runs) -> None:
    runs.create("steady", {}, pod_annotations={"kwok.kakehashi.dev/run-duration": "8s"})
    runs.wait_phase("steady", "Running")
    stack.restart_component("learning", "kube-apiserver")
    wait_for(lambda: _api_ok(runs), 60, "kube-apiserver back, serving TrainingRuns")
    # A run created after the restart proves the operator's watches came back, not just polling.
    runs.create("after-restart", {}, pod_annotations={"kwok.kakehashi.dev/run-duration": "1s"})
    assert runs.wait_phase("steady", "Succeeded", "Failed", timeout=90)["phase"] == "Succeeded"
    assert runs.wait_phase("after-restart", "Succeeded", "Failed", timeout=90)["phase"] == "Succeeded"
    assert len(runs.jobs("steady")) == 1


def _api_ok(runs: Runs) -> bool:
    try:
        runs.custom.list_namespaced_custom_object("kakehashi.dev", "v1alpha1", runs.namespace, "trainingruns")
        return True
    except Exception:
        return False


def test_two_hundred_runs_at_once_all_succeed(runs: Runs) -> None:
    names = [f"bulk-{i:03d}" for i in range(200)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: runs.create(n, {"hyperparameters": {"seed": n}}), names))

    def succeeded() -> int:
        items = runs.custom.list_namespaced_custom_object("kakehashi.dev", "v1alpha1", runs.namespace, "trainingruns")["items"]
        return sum(1 for r in items if (r.get("status") or {}).get("phase") == "Succeeded") == len(names)

    wait_for(succeeded, 300, "200 runs Succeeded")
    jobs = runs.batch.list_namespaced_job(runs.namespace).items
    assert len(jobs) == 200 and len({j.metadata.name for j in jobs}) == 200
