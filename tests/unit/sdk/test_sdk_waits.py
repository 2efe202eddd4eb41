"""What wait() concludes from what it watches: a ModelService's status for an older spec is
not an answer, Failed raises at once, Degraded only when the time is up; a failed run without
a log tail in its message gets one from its pod's log. The watch is scripted."""

from __future__ import annotations

import io
from typing import Any

import pytest
from sdk_fakes import FakeConnection

from kakehashi.sdk import ModelService, RunFailed, ServiceFailed, TrainingRun, WaitTimeout


def _service(generation: int, observed: int, phase: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {"metadata": {"name": "digits", "generation": generation, "resourceVersion": str(observed * 10)},
            "status": {"observedGeneration": observed, "phase": phase, "reason": reason, "message": message}}


@pytest.fixture
def versions(monkeypatch: pytest.MonkeyPatch) -> Any:
    """versions([obj, ...]): wait_for_object sees these in order, then the deadline."""

    def install(objects: list[dict[str, Any]]) -> None:
        def fake(api: Any, resource: Any, namespace: str, name: str, done: Any, timeout: Any,
                 on_change: Any = None) -> tuple[dict[str, Any], bool]:
            for obj in objects:
                if on_change:
                    on_change(obj)
                if done(obj):
                    return obj, True
            return objects[-1], False

        monkeypatch.setattr("kakehashi.sdk.serving.wait_for_object", fake)
        monkeypatch.setattr("kakehashi.sdk.training.wait_for_object", fake)

    return install


def _deployed(generation: int) -> ModelService:
    service = ModelService("digits", connection=FakeConnection())  # type: ignore[arg-type]
    service._object = {"metadata": {"name": "digits", "generation": generation}}
    return service


def test_a_status_written_for_the_previous_spec_is_not_taken_for_this_ones(versions: Any) -> None:
    versions([_service(2, 1, "Ready", "Serving"), _service(2, 2, "Baking", "Baking"), _service(2, 2, "Ready", "Serving")])
    out = io.StringIO()
    service = _deployed(2).wait(60, stream=out)
    assert service.status.phase == "Ready"
    assert [line.split(" after ")[0] for line in out.getvalue().splitlines()] == [
        "ModelService digits: Submitted", "ModelService digits: Baking (Baking)", "ModelService digits: Ready (Serving)"]


def test_failed_raises_with_the_reason_at_once(versions: Any) -> None:
    versions([_service(1, 1, "Failed", "NotPromotable", "TrainingRun digits is below its gate"),
              _service(1, 1, "Ready")])
    with pytest.raises(ServiceFailed, match="is Failed: NotPromotable: TrainingRun digits is below its gate"):
        _deployed(1).wait(60, progress=False)


def test_degraded_raises_with_the_reason_when_the_time_is_up(versions: Any) -> None:
    versions([_service(1, 1, "Deploying"), _service(1, 1, "Degraded", "CrashLoopBackOff", "keeps crashing")])
    with pytest.raises(ServiceFailed, match="is Degraded: CrashLoopBackOff: keeps crashing"):
        _deployed(1).wait(60, progress=False)


def test_a_gitops_service_is_waited_for_until_its_pull_request_is_open(versions: Any) -> None:
    versions([_service(1, 1, "Baking"), _service(1, 1, "Proposed", "AwaitingDeploy", "comment /deploy <env> on URL"),
              _service(1, 1, "Delivered")])
    service = _deployed(1).wait(60, progress=False)
    assert service.status.phase == "Proposed" and service.status.reason == "AwaitingDeploy"


def test_still_deploying_when_the_time_is_up_is_a_timeout(versions: Any) -> None:
    versions([_service(1, 1, "Deploying", "RollingOut", "1 of 2 pods ready")])
    with pytest.raises(WaitTimeout, match="still Deploying after 60 s: 1 of 2 pods ready"):
        _deployed(1).wait(60, progress=False)


def test_a_failed_run_without_a_tail_in_its_message_reads_its_pods_log(versions: Any) -> None:
    connection = FakeConnection()
    run = TrainingRun("digits", connection=connection).submit()  # type: ignore[arg-type]
    versions([{"metadata": {"name": "digits"},
               "status": {"phase": "Failed", "reason": "DeadlineExceeded", "message": "ran past 2s"}}])
    connection.kube.objects[("pods", "team", "digits-abc")] = {
        "metadata": {"name": "digits-abc", "namespace": "team"}, "spec": {"containers": [{"name": "trainer"}]}}
    connection.kube.log_tail = lambda namespace, pod, container, lines: f"{pod}/{container}: epoch 7"  # type: ignore[method-assign]
    with pytest.raises(RunFailed) as raised:
        run.wait(10, progress=False)
    assert (raised.value.reason, raised.value.message) == ("DeadlineExceeded", "ran past 2s")
    assert raised.value.log_tail == "digits-abc/trainer: epoch 7"

