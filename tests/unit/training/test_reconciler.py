"""The reconcile loop against an in-memory API: creates nothing twice, writes only changes,
coalesces bursts, lets pods go only once their story is recorded, and sorts failures into
temporary (retried with growing delays, never recorded as facts) and permanent (recorded)."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from botocore.exceptions import ClientError
from kubernetes.client.exceptions import ApiException

from kakehashi.control.backoff import Backoff
from kakehashi.control.client import Secret
from kakehashi.control.controller import Key
from kakehashi.control.resources import Resource
from kakehashi.modelformat import ModelArtifact
from kakehashi.notify import OPT_IN_LABEL
from kakehashi.settings import OperatorSettings
from kakehashi.training.children import POD_FINALIZER
from kakehashi.training.reconciler import Reconciler

NS, NAME, RUN_UID = "team", "digits", "run-uid"
KEY: Key = (NS, NAME)
FAST = Backoff(base_s=0.02, factor=2.0, cap_s=1.0, jitter=0.0)


def api_error(status: int, message: str = "") -> ApiException:
    error = ApiException(status=status, reason="refused")
    error.body = json.dumps({"kind": "Status", "status": "Failure", "message": message, "code": status})
    return error


def s3_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "Please reduce your request rate."},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


class FakeKube:
    """The generic client's calls the reconciler makes, on dictionaries; `fail` injects errors:
    a queue of exceptions per method name, raised (one per call) before the call succeeds."""

    def __init__(self) -> None:
        self.children: dict[tuple[str, str], dict[str, Any]] = {}
        self.creates = 0
        self.create_calls: list[float] = []
        self.patch_calls: list[float] = []
        self.patches: list[dict[str, Any]] = []
        self.released: list[str] = []
        self.secrets: dict[str, Secret] = {}
        self.fail: dict[str, list[Exception]] = {}

    def _maybe_fail(self, method: str) -> None:
        queue = self.fail.get(method)
        if queue:
            raise queue.pop(0)

    def create(self, resource: Resource, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        self.create_calls.append(time.monotonic())
        self._maybe_fail("create")
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        if key in self.children:
            return self.children[key], False
        self.creates += 1
        child = {**body, "metadata": {**body["metadata"], "uid": "child-uid"}, "status": {}}
        self.children[key] = child
        return child, True

    def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        return self.children.get((namespace, name))

    def patch_status(self, resource: Resource, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.patch_calls.append(time.monotonic())
        self._maybe_fail("patch_status")
        self.patches.append(patch)
        return {"metadata": {"uid": RUN_UID, "resourceVersion": str(1000 + len(self.patches))}, "status": patch["status"]}

    def remove_finalizer(self, resource: Resource, namespace: str, name: str, finalizers: list[str], finalizer: str) -> None:
        self.released.append(name)

    def log_tail(self, namespace: str, pod: str, container: str, lines: int) -> str:
        return ""

    def read_secret(self, namespace: str, name: str) -> Secret | None:
        return self.secrets.get(name)


def run_body(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kakehashi.dev/v1alpha1", "kind": "TrainingRun",
        "metadata": {"name": NAME, "namespace": NS, "uid": RUN_UID, "generation": 1, "resourceVersion": "1"},
        "spec": spec,
    }


def pod(phase: str, name: str = "digits-x", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": NS, "finalizers": [POD_FINALIZER],
                     "ownerReferences": [{"uid": "child-uid"}], "creationTimestamp": "2026-11-25T12:00:00Z"},
        "status": {"phase": phase, "startTime": "2026-11-25T12:00:00Z", **status},
    }


Events = list[tuple[str, str, str]]


def make(
    kube: FakeKube,
    *,
    read: Callable[[str], ModelArtifact | None] = lambda uri: None,
    settings: OperatorSettings | None = None,
    **spec: Any,
) -> tuple[Reconciler, Events, dict[str, dict[Key, list[dict[str, Any]]]]]:
    events: Events = []
    rec = Reconciler(kube, settings or OperatorSettings(), read,  # type: ignore[arg-type]
                     threads=2, backoff=FAST,
                     events=lambda body, type_, reason, message: events.append((type_, reason, message)))
    indices: dict[str, dict[Key, list[dict[str, Any]]]] = {"runs": {KEY: [run_body(**spec)]}, "jobs": {}, "tfjobs": {}, "pods": {}}
    rec.bind(**indices)
    return rec, events, indices


def status_of(kube: FakeKube) -> dict[str, Any]:
    status: dict[str, Any] = kube.patches[-1]["status"]
    return status


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def complete(kube: FakeKube, indices: dict[str, dict[Key, list[dict[str, Any]]]]) -> None:
    child = kube.children[KEY]
    child["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    indices["jobs"][KEY] = [child]
    indices["pods"][KEY] = [pod("Succeeded")]


def sync_run_status(kube: FakeKube, indices: dict[str, dict[Key, list[dict[str, Any]]]]) -> None:
    """The watch delivering our last patch back (as the real index would)."""
    indices["runs"][KEY] = [{**run_body(), "status": status_of(kube)}]


async def settle(rec: Reconciler, seconds: float) -> None:
    await asyncio.sleep(seconds)
    await rec.queue.drain()


async def settle_until(rec: Reconciler, done: Callable[[], bool]) -> None:
    """Until `done()`, for at most 10 s (a loaded CI machine stretches every delay: a fixed
    sleep would flake)."""
    for _ in range(1000):
        if done():
            break
        await asyncio.sleep(0.01)
    await rec.queue.drain()


@dataclass(frozen=True)
class RecordingBackoff(Backoff):
    """The delays the queue asked for, to check them exactly (measured gaps only grow)."""

    given: list[float] = field(default_factory=list, compare=False)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        value = super().delay(attempt, rng)
        self.given.append(value)
        return value


# -- the happy path ---------------------------------------------------------------------------


def test_a_lagging_cache_never_creates_a_second_job() -> None:
    kube = FakeKube()
    rec, events, _ = make(kube)
    asyncio.run(rec.reconcile(KEY))
    # The watch has not delivered the Job yet: the next reconcile must not create again.
    asyncio.run(rec.reconcile(KEY))
    assert kube.creates == 1
    assert [e[1] for e in events].count("JobCreated") == 1
    assert kube.patches[0]["status"]["phase"] == "Pending"
    assert kube.patches[0]["status"]["jobRef"]["uid"] == "child-uid"


def test_a_restarted_operator_adopts_the_existing_job() -> None:
    kube = FakeKube()
    kube.children[KEY] = {"kind": "Job", "metadata": {"name": NAME, "namespace": NS, "uid": "child-uid",
                                                      "ownerReferences": [{"uid": RUN_UID}]}, "status": {}}
    rec, events, _ = make(kube)
    asyncio.run(rec.reconcile(KEY))
    assert kube.creates == 0 and not [e for e in events if e[1] == "JobCreated"]
    assert kube.patches[-1]["status"]["jobRef"]["uid"] == "child-uid"


def test_a_409_on_create_is_the_existing_job_not_an_error() -> None:
    kube = FakeKube()
    # Another operator replica (or our own earlier attempt) created it: create answers with it.
    kube.children[KEY] = {"kind": "Job", "metadata": {"name": NAME, "namespace": NS, "uid": "child-uid",
                                                      "ownerReferences": [{"uid": RUN_UID}]}, "status": {}}
    rec, events, indices = make(kube)
    indices["jobs"] = {}  # not in the cache yet and no jobRef: the reconciler creates
    asyncio.run(rec.reconcile(KEY))
    assert kube.creates == 0
    assert status_of(kube)["phase"] == "Pending" and status_of(kube)["jobRef"]["uid"] == "child-uid"
    assert not [e for e in events if e[0] == "Warning"]


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
    complete(kube, indices)
    before = len(kube.patches)
    asyncio.run(rec.reconcile(KEY))
    assert len(kube.patches) == before + 1
    final = status_of(kube)
    assert final["phase"] == "Succeeded" and final["notifiedAt"]
    assert ("Normal", "RunSucceeded") in [(e[0], e[1]) for e in events]
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
        await settle(rec, 0.3)

    asyncio.run(burst())
    assert calls == 1 and kube.creates == 1


def test_a_deleted_run_lets_its_pods_go() -> None:
    kube = FakeKube()
    rec, _, indices = make(kube)
    indices["runs"].pop(KEY)
    indices["pods"][KEY] = [pod("Running")]
    asyncio.run(rec.reconcile(KEY))
    assert kube.released == ["digits-x"] and kube.creates == 0


def test_a_failed_container_log_is_read_once_its_last_stderr_lines_arrived() -> None:
    """The runtime reports the exit before it has copied the last stderr line (the traceback)
    to the log; the tail quoted in the run's message must still end with it."""
    from datetime import UTC, datetime

    exited = time.time()

    class LaggingLog(FakeKube):
        def log_tail(self, namespace: str, pod: str, container: str, lines: int) -> str:
            late = time.time() - exited >= 1.5  # the stderr copy lands a moment after the exit
            return "epoch 29 loss 0.033" + ("\nValueError: labels and images differ" if late else "")

    kube = LaggingLog()
    rec, _, indices = make(kube)
    asyncio.run(rec.reconcile(KEY))
    child = kube.children[KEY]
    child["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}
    indices["jobs"][KEY] = [child]
    finished = datetime.fromtimestamp(exited, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    terminated = {"exitCode": 3, "reason": "Error", "finishedAt": finished}
    indices["pods"][KEY] = [pod("Failed", containerStatuses=[{"name": "trainer", "state": {"terminated": terminated}}])]
    asyncio.run(rec.reconcile(KEY))
    final = status_of(kube)
    assert (final["phase"], final["reason"]) == ("Failed", "NonZeroExitCode")
    assert final["message"].rstrip().endswith("ValueError: labels and images differ")


# -- temporary failures are retried, never recorded as facts ----------------------------------


MODEL = ModelArtifact(uri="s3://kakehashi-models/team/digits/run-uid/", digest="sha256:" + "ab" * 32,
                      metrics={"accuracy": 0.93})


def test_a_transient_s3_error_at_completion_is_retried_not_frozen() -> None:
    kube = FakeKube()
    answers: list[Any] = [s3_error("SlowDown", 503), s3_error("InternalError", 500), MODEL]

    def read(uri: str) -> ModelArtifact | None:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, ModelArtifact)
        return answer

    rec, events, indices = make(kube, read=read, gate={"metric": "accuracy", "threshold": 0.9})

    async def scenario() -> None:
        await rec.reconcile(KEY)
        complete(kube, indices)
        rec.request(KEY)
        # The watch delivers each patch back; the queue's retries carry on with backoff.
        for _ in range(50):
            await asyncio.sleep(0.02)
            sync_run_status(kube, indices)
            if status_of(kube)["phase"] == "Succeeded":
                break
        await rec.queue.drain()

    asyncio.run(scenario())
    statuses = [p["status"] for p in kube.patches]
    retrying = [s for s in statuses if s["reason"] == "ModelReadRetrying"]
    last = statuses[-1]
    # While S3 answers 503, the run is not final and says why; nothing terminal is written
    # before the model is read.
    assert retrying and all(s["phase"] == "Running" for s in retrying)
    first = retrying[0]
    assert first["completionTime"] is None and first["model"] is None
    assert condition(first, "ModelRecorded")["status"] == "False"
    assert condition(first, "ModelRecorded")["reason"] == "ModelReadRetrying"
    assert "SlowDown" in condition(first, "ModelRecorded")["message"]
    assert condition(first, "Promotable")["status"] == "Unknown"
    assert [s["phase"] for s in statuses].count("Succeeded") == 1
    # When S3 recovers: the model is recorded and the gate decided, once.
    assert last["phase"] == "Succeeded" and last["model"]["digest"] == MODEL.digest
    assert condition(last, "ModelRecorded")["status"] == "True"
    assert condition(last, "Promotable")["status"] == "True"
    assert [e[1] for e in events].count("RunSucceeded") == 1
    assert answers == []


def test_a_missing_model_json_after_the_pods_ended_is_final() -> None:
    kube = FakeKube()
    rec, _, indices = make(kube)
    asyncio.run(rec.reconcile(KEY))
    complete(kube, indices)
    asyncio.run(rec.reconcile(KEY))
    final = status_of(kube)
    assert final["phase"] == "Succeeded"
    assert condition(final, "ModelRecorded")["reason"] == "ModelNotFound"
    assert condition(final, "Promotable")["status"] == "False"


def test_a_malformed_model_json_is_final() -> None:
    kube = FakeKube()

    def read(uri: str) -> ModelArtifact | None:
        return ModelArtifact.model_validate_json(b'{"uri": 3}')

    rec, _, indices = make(kube, read=read)
    asyncio.run(rec.reconcile(KEY))
    complete(kube, indices)
    asyncio.run(rec.reconcile(KEY))
    final = status_of(kube)
    assert final["phase"] == "Succeeded" and final["model"] is None
    assert "not a valid model manifest" in condition(final, "ModelRecorded")["message"]


def test_5xx_on_create_is_retried_with_growing_delays_until_it_works() -> None:
    kube = FakeKube()
    kube.fail["create"] = [api_error(503, "etcd leader changed"), api_error(500), api_error(429)]
    rec, _, _ = make(kube)
    backoff = RecordingBackoff(base_s=0.1, factor=2.0, cap_s=10.0, jitter=0.0)
    rec.queue.backoff = backoff

    async def scenario() -> None:
        rec.request(KEY)
        await settle_until(rec, lambda: kube.creates == 1)

    asyncio.run(scenario())
    assert kube.creates == 1 and len(kube.create_calls) == 4
    # 0.1 s, 0.2 s, 0.4 s: growing, never a fixed fast loop (a busy machine only adds to a gap).
    assert backoff.given == [0.1, 0.2, 0.4]
    gaps = [b - a for a, b in itertools.pairwise(kube.create_calls)]
    assert all(gap >= delay - 0.01 for gap, delay in zip(gaps, backoff.given, strict=True)), gaps
    assert status_of(kube)["phase"] == "Pending"
    assert rec.queue.attempts(KEY) == 0  # a success resets the backoff


def test_5xx_on_the_status_patch_is_retried_until_it_works() -> None:
    kube = FakeKube()
    kube.fail["patch_status"] = [api_error(500), api_error(504)]
    rec, _, _ = make(kube)

    async def scenario() -> None:
        rec.request(KEY)
        await settle_until(rec, lambda: len(kube.patches) == 1)

    asyncio.run(scenario())
    assert len(kube.patch_calls) == 3 and len(kube.patches) == 1
    assert status_of(kube)["phase"] == "Pending"
    assert kube.creates == 1  # the retries found the Job they had created


def test_a_job_the_api_server_refuses_fails_the_run_naming_the_field_without_a_retry_storm() -> None:
    kube = FakeKube()
    message = ('Job.batch "digits" is invalid: spec.template.spec.tolerations[0].key: Invalid value: '
               '"bad key!": name part must consist of alphanumeric characters')
    kube.fail["create"] = [api_error(422, message)] * 20
    rec, events, _ = make(kube)

    async def scenario() -> None:
        rec.request(KEY)
        await settle(rec, 0.5)
        for _ in range(5):  # the resync asking again changes nothing once the run is Failed
            rec.request(KEY)

    asyncio.run(scenario())
    assert len(kube.create_calls) <= 2
    final = status_of(kube)
    assert final["phase"] == "Failed" and final["reason"] == "InvalidSpec"
    assert "spec.template.spec.tolerations[0].key" in final["message"]
    assert condition(final, "Created")["status"] == "False"
    assert condition(final, "Failed")["status"] == "True"
    assert [e[1] for e in events].count("RunFailed") == 1


def test_a_kind_the_api_server_does_not_serve_keeps_the_run_pending_and_retries() -> None:
    kube = FakeKube()
    # No TFJob CRD (the Kubeflow training operator is not installed yet): the create is a 404.
    missing = "the server could not find the requested resource"
    kube.fail["create"] = [api_error(404, missing), api_error(404, missing)]
    rec, events, _ = make(kube, replicas={"chief": 1, "worker": 2})

    async def scenario() -> None:
        rec.request(KEY)
        await settle_until(rec, lambda: kube.creates == 1)

    asyncio.run(scenario())
    waiting = kube.patches[0]["status"]
    assert waiting["phase"] == "Pending" and waiting["reason"] == "TFJobNotServed"
    assert "kubeflow.org/v1 tfjobs" in waiting["message"] and "training operator" in waiting["message"]
    assert condition(waiting, "Created")["status"] == "False"
    # Installed: created on a retry, and the run was never failed.
    assert len(kube.create_calls) == 3 and kube.creates == 1
    assert status_of(kube)["phase"] == "Pending" and status_of(kube)["jobRef"]["kind"] == "TFJob"
    assert all(p["status"]["phase"] == "Pending" for p in kube.patches)
    assert not [e for e in events if e[0] == "Warning"]


def test_a_spec_the_operator_cannot_run_fails_through_the_same_status_function() -> None:
    kube = FakeKube()
    rec, _, _ = make(kube, hyperparameters={"layers": {"nested": 1}})
    asyncio.run(rec.reconcile(KEY))
    final = status_of(kube)
    assert final["phase"] == "Failed" and final["reason"] == "InvalidSpec"
    assert "spec.hyperparameters.layers" in final["message"]
    # The same shape as every other status: every condition, history, observedGeneration.
    assert {c["type"] for c in final["conditions"]} >= {"Created", "Running", "Succeeded", "Failed", "Promotable"}
    assert final["phaseHistory"][-1]["phase"] == "Failed" and final["observedGeneration"] == 1
    assert final["notifiedAt"] and kube.creates == 0


# -- phases only move forward -----------------------------------------------------------------


def test_the_phase_never_goes_backwards_over_a_replayed_tfjob_history() -> None:
    kube = FakeKube()
    rec, events, indices = make(kube, replicas={"chief": 1, "worker": 3, "ps": 2})
    asyncio.run(rec.reconcile(KEY))
    tfjob = kube.children[KEY]
    indices["tfjobs"][KEY] = [tfjob]
    names = ["digits-chief-0", *(f"digits-worker-{i}" for i in range(3)), "digits-ps-0", "digits-ps-1"]
    running = [pod("Running", n) for n in names]
    restarting = [pod("Pending", n) if n == "digits-worker-1" else pod("Succeeded" if "worker" in n else "Running", n)
                  for n in names]
    restarting[2]["status"].pop("startTime")
    sequence: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]] = [
        ([pod("Pending", n) for n in names], []),
        (running, [{"type": "Running", "status": "True"}]),
        # A worker restarts: its new pod is Pending, the others finished or wait.
        ([pod("Pending", "digits-worker-1"), *[pod("Succeeded", n) for n in names if n != "digits-worker-1"]],
         [{"type": "Restarting", "status": "True"}]),
        (running, [{"type": "Running", "status": "True"}]),
        ([pod("Succeeded", n) for n in names], [{"type": "Succeeded", "status": "True"}]),
    ]
    phases = []
    for pods, conditions in sequence:
        tfjob["status"] = {"conditions": conditions}
        indices["pods"][KEY] = pods
        sync_run_status(kube, indices)
        asyncio.run(rec.reconcile(KEY))
        phases.append(status_of(kube)["phase"])
        if conditions and conditions[0]["type"] == "Restarting":
            # The restart is said in the Running condition, not by a phase going back.
            restarting = condition(status_of(kube), "Running")
            assert (restarting["status"], restarting["reason"]) == ("True", "ReplicaRestarting")
            assert "restarting" in restarting["message"]
    order = {"Pending": 0, "Running": 1, "Succeeded": 2, "Failed": 2}
    assert phases[-1] == "Succeeded"
    assert all(order[a] <= order[b] for a, b in itertools.pairwise(phases)), phases
    transitions = [e[1] for e in events if e[1].startswith("Run")]
    assert transitions == ["RunRunning", "RunSucceeded"], transitions
    assert [h["phase"] for h in status_of(kube)["phaseHistory"]] == ["Pending", "Running", "Succeeded"]


# -- notifications: opt-in Secrets, checked addresses, nothing secret in Events ---------------


SECRET_URL = "https://hooks.example.com/services/T000/B000/XXXXSECRETXXXX"


def _finish_with_notification(kube: FakeKube, settings: OperatorSettings | None = None) -> Events:
    rec, events, indices = make(kube, settings=settings, notification={"webhookSecret": "slack"})
    asyncio.run(rec.reconcile(KEY))
    complete(kube, indices)
    asyncio.run(rec.reconcile(KEY))
    assert status_of(kube)["phase"] == "Succeeded"
    return events


def _assert_no_secret(events: Events, kube: FakeKube, *secrets: str) -> None:
    written = json.dumps(kube.patches) + json.dumps(events)
    for secret in secrets:
        assert secret not in written


def test_a_secret_that_did_not_opt_in_is_not_read_and_its_value_is_never_shown() -> None:
    kube = FakeKube()
    kube.secrets["slack"] = Secret(labels={}, data={"url": SECRET_URL})
    events = _finish_with_notification(kube)
    failed = [e for e in events if e[1] == "NotificationFailed"]
    assert len(failed) == 1
    assert "Secret slack" in failed[0][2] and OPT_IN_LABEL in failed[0][2]
    _assert_no_secret(events, kube, SECRET_URL, "hooks.example.com", "XXXXSECRETXXXX")


@pytest.mark.parametrize("url", [
    "https://10.0.0.8/hook", "https://169.254.169.254/latest/meta-data/", "https://127.0.0.1:9/x",
    "https://[64:ff9b::a9fe:a9fe]/x", "http://93.184.215.14/hook",
])
def test_a_webhook_to_a_non_public_address_or_over_http_is_refused(url: str) -> None:
    kube = FakeKube()
    kube.secrets["slack"] = Secret(labels={OPT_IN_LABEL: "true"}, data={"url": url})
    events = _finish_with_notification(kube)
    failed = [e for e in events if e[1] == "NotificationFailed"]
    assert len(failed) == 1, events
    assert "https" in failed[0][2] or "does not call" in failed[0][2]
    host = url.split("//", 1)[1].split("/", 1)[0]
    _assert_no_secret(events, kube, url, host)
