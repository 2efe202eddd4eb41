"""Status that tells the truth: the phase and reason a data scientist sees for what the cluster holds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from kakehashi.api.trainingrun import Phase, TrainingRun
from kakehashi.modelformat import ModelArtifact
from kakehashi.training.children import CLONE_CONTAINER
from kakehashi.training.status import Observed, compute_status, verdict

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
URI = "s3://models/ns/r/uid/"


def run(status: dict[str, Any] | None = None, **spec: Any) -> TrainingRun:
    return TrainingRun.model_validate(
        {"metadata": {"name": "r", "namespace": "ns", "uid": "uid", "generation": 1}, "spec": spec, "status": status or {}}
    )


def job(*conditions: tuple[str, str, str], kind: str = "Job") -> dict[str, Any]:
    return {
        "kind": kind,
        "metadata": {"name": "r", "uid": "job-uid"},
        "status": {"conditions": [{"type": t, "status": "True", "reason": r, "message": m} for t, r, m in conditions]},
    }


def pod(phase: str = "Running", *, containers: list[dict[str, Any]] | None = None, init: list[dict[str, Any]] | None = None,
        conditions: list[dict[str, Any]] | None = None, name: str = "r-abc", memory: str | None = None) -> dict[str, Any]:
    spec_container: dict[str, Any] = {"name": "trainer"}
    if memory:
        spec_container["resources"] = {"limits": {"memory": memory}}
    return {
        "metadata": {"name": name, "creationTimestamp": "2026-11-25T12:00:00Z"},
        "spec": {"containers": [spec_container]},
        "status": {
            "phase": phase,
            "startTime": "2026-11-25T12:00:01Z",
            "containerStatuses": containers or [],
            "initContainerStatuses": init or [],
            "conditions": conditions or [],
        },
    }


def terminated(code: int, reason: str = "Error", message: str = "", name: str = "trainer") -> dict[str, Any]:
    return {"name": name, "image": "img", "state": {"terminated": {"exitCode": code, "reason": reason, "message": message}}}


def test_no_child_yet_is_pending() -> None:
    status = compute_status(run(), Observed(), output_uri=URI, now=T0)
    assert status.phase == Phase.PENDING
    created = next(c for c in status.conditions if c.type == "Created")
    assert (created.status, created.reason) == ("False", "Creating")


def test_running_pod_is_running_with_history_and_start_time() -> None:
    status = compute_status(run(), Observed(child=job(), pods=[pod()]), output_uri=URI, now=T0)
    assert status.phase == Phase.RUNNING
    assert status.start_time == "2026-11-25T12:00:01Z"
    assert status.job_ref is not None and status.job_ref.kind == "Job" and status.job_ref.uid == "job-uid"
    assert [h.phase for h in status.phase_history] == [Phase.RUNNING]
    assert {c.type: c.status for c in status.conditions} == {
        "Created": "True", "Running": "True", "Succeeded": "False", "Failed": "False", "Promotable": "Unknown",
        "ModelRecorded": "Unknown",
    }
    assert all(c.observed_generation == 1 for c in status.conditions)


def test_last_transition_time_moves_only_on_flips() -> None:
    first = compute_status(run(), Observed(child=job(), pods=[pod()]), output_uri=URI, now=T0)
    again = compute_status(run(first.model_dump(by_alias=True)), Observed(child=job(), pods=[pod()]),
                           output_uri=URI, now=T0 + timedelta(minutes=5))
    assert again == first
    done = compute_status(run(first.model_dump(by_alias=True)),
                          Observed(child=job(("Complete", "", "")), pods=[pod("Succeeded")],
                                   model=ModelArtifact(uri=URI, digest="sha256:" + "0" * 64, metrics={"accuracy": 0.97})),
                          output_uri=URI, now=T0 + timedelta(minutes=9))
    times = {c.type: c.last_transition_time for c in done.conditions}
    assert times["Created"] == "2026-11-25T12:00:00Z"
    assert times["Succeeded"] == times["Running"] == "2026-11-25T12:09:00Z"
    assert [h.phase for h in done.phase_history] == [Phase.RUNNING, Phase.SUCCEEDED]
    assert done.completion_time == "2026-11-25T12:09:00Z"


def test_success_reads_the_model_and_applies_the_gate() -> None:
    model = ModelArtifact(uri=URI, digest="sha256:" + "a" * 64, metrics={"accuracy": 0.91})
    passing = compute_status(run(gate={"metric": "accuracy", "threshold": 0.9}),
                             Observed(child=job(("Complete", "", "")), model=model), output_uri=URI, now=T0)
    assert passing.phase == Phase.SUCCEEDED and passing.model == model
    promotable = next(c for c in passing.conditions if c.type == "Promotable")
    assert (promotable.status, promotable.reason) == ("True", "GatePassed")
    failing = compute_status(run(gate={"metric": "accuracy", "threshold": 0.95}),
                             Observed(child=job(("Complete", "", "")), model=model), output_uri=URI, now=T0)
    promotable = next(c for c in failing.conditions if c.type == "Promotable")
    assert failing.phase == Phase.SUCCEEDED
    assert (promotable.status, promotable.reason) == ("False", "GateNotMet")
    assert "accuracy=0.91 is not >= 0.95" in promotable.message
    lower = compute_status(run(gate={"metric": "loss", "threshold": 0.2, "direction": "lower"}),
                           Observed(child=job(("Complete", "", "")), model=model), output_uri=URI, now=T0)
    assert next(c for c in lower.conditions if c.type == "Promotable").reason == "MetricMissing"


def test_success_without_model_is_not_promotable() -> None:
    status = compute_status(run(), Observed(child=job(("Complete", "", "")), model_error="no model.json at s3://x/"),
                            output_uri=URI, now=T0)
    promotable = next(c for c in status.conditions if c.type == "Promotable")
    assert (status.phase, promotable.status, promotable.reason) == (Phase.SUCCEEDED, "False", "ModelNotFound")


def test_oom_is_named_with_the_memory_limit() -> None:
    observed = Observed(child=job(("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")),
                        pods=[pod("Failed", containers=[terminated(137, "OOMKilled")], memory="2Gi")])
    v = verdict(run(), observed)
    assert (v.phase, v.reason) == (Phase.FAILED, "OOMKilled")
    assert "limit 2Gi" in v.message and "spec.resources.memory" in v.message


def test_non_zero_exit_carries_the_log_tail() -> None:
    log = "\n".join(f"line {i}" for i in range(100)) + "\nValueError: bad shape"
    observed = Observed(child=job(("Failed", "BackoffLimitExceeded", "")),
                        pods=[pod("Failed", containers=[terminated(3, message=log)])])
    status = compute_status(run(), observed, output_uri=URI, now=T0)
    assert (status.phase, status.reason) == (Phase.FAILED, "NonZeroExitCode")
    assert "exited with code 3" in (status.message or "")
    assert (status.message or "").endswith("ValueError: bad shape")
    assert "line 79" not in (status.message or "") and "line 99" in (status.message or "")
    failed = next(c for c in status.conditions if c.type == "Failed")
    assert failed.status == "True" and failed.reason == "NonZeroExitCode"


def test_log_tail_from_the_api_when_no_termination_message() -> None:
    observed = Observed(child=job(("Failed", "BackoffLimitExceeded", "")),
                        pods=[pod("Failed", containers=[terminated(1)])], logs={"r-abc/trainer": "boom"})
    assert verdict(run(), observed).message.endswith("boom")


def test_the_complete_log_read_after_exit_wins_over_the_kubelets_snapshot() -> None:
    # FallbackToLogsOnError is read at exit; the last stderr line can still be in flight.
    snapshot = "epoch 28\nepoch 29"
    observed = Observed(child=job(("Failed", "BackoffLimitExceeded", "")),
                        pods=[pod("Failed", containers=[terminated(3, message=snapshot)])],
                        logs={"r-abc/trainer": "epoch 28\nepoch 29\nValueError: bad shape"})
    assert verdict(run(), observed).message.endswith("epoch 29\nValueError: bad shape")


def test_deadline_exceeded() -> None:
    observed = Observed(child=job(("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")),
                        pods=[pod()])
    v = verdict(run(runPolicy={"activeDeadlineSeconds": 60}), observed)
    assert (v.phase, v.reason) == (Phase.FAILED, "DeadlineExceeded")
    assert "activeDeadlineSeconds=60s" in v.message


def test_backoff_limit_without_pod_facts() -> None:
    v = verdict(run(), Observed(child=job(("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"))))
    assert (v.phase, v.reason) == (Phase.FAILED, "BackoffLimitExceeded")


def test_unschedulable_and_image_pull_are_pending_with_a_reason() -> None:
    unschedulable = pod("Pending", conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                                "message": "0/6 nodes are available: 6 Insufficient nvidia.com/gpu."}])
    v = verdict(run(), Observed(child=job(), pods=[unschedulable]))
    assert (v.phase, v.reason) == (Phase.PENDING, "Unschedulable")
    assert "Insufficient nvidia.com/gpu" in v.message
    pulling = pod("Pending", containers=[{"name": "trainer", "image": "nope:1", "state": {"waiting": {
        "reason": "ImagePullBackOff", "message": "Back-off pulling image \"nope:1\""}}}])
    v = verdict(run(), Observed(child=job(), pods=[pulling]))
    assert (v.phase, v.reason) == (Phase.PENDING, "ImagePullBackOff")
    assert "nope:1" in v.message


def test_failed_clone_is_named() -> None:
    init = [terminated(128, message="fatal: repository not found", name=CLONE_CONTAINER)]
    v = verdict(run(), Observed(child=job(("Failed", "BackoffLimitExceeded", "")), pods=[pod("Failed", init=init)]))
    assert (v.reason, v.message.splitlines()[-1]) == ("SourceCloneFailed", "fatal: repository not found")


def test_resolved_commit_is_recorded() -> None:
    sha = "0123456789abcdef0123456789abcdef01234567"
    init = [{"name": CLONE_CONTAINER, "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": sha + "\n"}}}]
    status = compute_status(run(), Observed(child=job(), pods=[pod(init=init)]), output_uri=URI, now=T0)
    assert status.source is not None and status.source.commit == sha


def test_a_failed_replica_fails_a_tfjob_at_once() -> None:
    """The classic lie: a TFJob still shown Running after one of its workers died."""
    tfjob = job(("Created", "TFJobCreated", ""), ("Running", "TFJobRunning", ""), kind="TFJob")
    pods = [pod(name="r-worker-0"), pod("Failed", name="r-worker-1", containers=[terminated(1, message="NaN loss")])]
    v = verdict(run(replicas={"worker": 2}), Observed(child=tfjob, pods=pods))
    assert (v.phase, v.reason) == (Phase.FAILED, "NonZeroExitCode")
    assert "r-worker-1" in v.message and "NaN loss" in v.message


def test_tfjob_success_and_deadline() -> None:
    r = run(replicas={"worker": 2}, runPolicy={"activeDeadlineSeconds": 5})
    assert verdict(r, Observed(child=job(("Succeeded", "TFJobSucceeded", ""), kind="TFJob"))).phase == Phase.SUCCEEDED
    failed = job(("Failed", "TFJobFailed", "TFJob r has failed because it was active longer than specified deadline"),
                 kind="TFJob")
    assert verdict(r, Observed(child=failed)).reason == "DeadlineExceeded"


def test_a_child_deleted_mid_run_fails_the_run() -> None:
    prev = compute_status(run(), Observed(child=job(), pods=[pod()]), output_uri=URI, now=T0)
    status = compute_status(run(prev.model_dump(by_alias=True)), Observed(child_deleted=True), output_uri=URI, now=T0)
    assert (status.phase, status.reason) == (Phase.FAILED, "JobDeleted")


def test_terminal_phase_is_final() -> None:
    done = compute_status(run(), Observed(child=job(("Failed", "BackoffLimitExceeded", ""))), output_uri=URI, now=T0)
    later = compute_status(run(done.model_dump(by_alias=True)), Observed(child=None), output_uri=URI,
                           now=T0 + timedelta(hours=1))
    assert later == done


def test_a_spec_changed_after_the_job_was_created_is_recorded() -> None:
    child = job()
    child["metadata"]["annotations"] = {"kakehashi.dev/spec-generation": "1"}
    r = run()
    r.metadata["generation"] = 2
    status = compute_status(r, Observed(child=child, pods=[pod()]), output_uri=URI, now=T0)
    changed = next(c for c in status.conditions if c.type == "SpecChanged")
    assert changed.status == "True" and "generation 2" in changed.message
    unchanged = compute_status(run(), Observed(child=child, pods=[pod()]), output_uri=URI, now=T0)
    assert all(c.type != "SpecChanged" for c in unchanged.conditions)
