"""The operator turns TrainingRuns into Jobs and TFJobs and reports the truth about them."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import httpx
import pytest
from kubernetes import client
from trainingruns import Runs, wait_for

from kakehashi.notify import OPT_IN_LABEL

FAST = {"kwok.kakehashi.dev/run-duration": "1s"}
SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def runs(learning: Any, namespace: str, operator: Any) -> Runs:
    return Runs(learning, namespace)


def test_one_replica_run_becomes_a_job_and_succeeds(runs: Runs, kubectl: Any) -> None:
    created = runs.create(
        "digits",
        {"hyperparameters": {"epochs": 2}, "data": {"uri": "s3://data/digits/"}, "gate": {"metric": "accuracy", "threshold": 0.9}},
        pod_annotations=FAST,
    )
    status = runs.wait_phase("digits", "Succeeded", "Failed")
    assert status["phase"] == "Succeeded", status
    [job] = runs.jobs("digits")
    owner = job.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.uid, owner.controller) == ("TrainingRun", "digits", created["metadata"]["uid"], True)
    assert job.metadata.labels["app.kubernetes.io/instance"] == "digits"
    env = {e.name: e.value for e in job.spec.template.spec.containers[0].env}
    assert env["KAKEHASHI_OUTPUT_URI"].endswith(f"/{runs.namespace}/digits/{created['metadata']['uid']}/")
    assert job.spec.template.spec.containers[0].args == ["--epochs=2"]
    assert status["jobRef"] == {"apiVersion": "batch/v1", "kind": "Job", "name": "digits", "uid": job.metadata.uid}
    assert [h["phase"] for h in status["phaseHistory"]][-1] == "Succeeded"
    assert "Running" in [h["phase"] for h in status["phaseHistory"]]
    assert status["startTime"] and status["completionTime"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Succeeded"]["status"] == "True"
    assert all(c["observedGeneration"] == 1 and c["lastTransitionTime"] for c in conditions.values())
    # Nothing trained for real in kwok, so no model.json: succeeded, but not promotable, and why.
    assert (conditions["Promotable"]["status"], conditions["Promotable"]["reason"]) == ("False", "ModelNotFound")
    table = kubectl("learning", "get", "trainingruns", "-n", runs.namespace)
    assert table.split("\n")[0].split()[:4] == ["NAME", "PHASE", "MODEL", "PROMOTABLE"]
    assert "Succeeded" in table.split("\n")[1]
    # The pods were held only until their story was in the status.
    wait_for(lambda: all(not (p.metadata.finalizers or []) or "kakehashi.dev/status-capture" not in p.metadata.finalizers
                         for p in runs.pods("digits")), 30, "pod finalizers released")
    reasons = [e.reason for e in runs.events("digits")]
    assert "JobCreated" in reasons and "RunSucceeded" in reasons


@pytest.mark.parametrize(
    ("annotations", "spec", "reason", "words"),
    [
        ({"kwok.kakehashi.dev/outcome": "fail", "kwok.kakehashi.dev/exit-code": "3",
          "kwok.kakehashi.dev/log-tail": "epoch 1/5\nTraceback (most recent call last):\nValueError: NaN loss"},
         {}, "NonZeroExitCode", ["exited with code 3", "ValueError: NaN loss"]),
        ({"kwok.kakehashi.dev/outcome": "oom"}, {"resources": {"memory": "2Gi"}}, "OOMKilled", ["limit 2Gi"]),
        ({"kwok.kakehashi.dev/outcome": "run"}, {"runPolicy": {"activeDeadlineSeconds": 2}}, "DeadlineExceeded",
         ["activeDeadlineSeconds=2s"]),
        ({"kwok.kakehashi.dev/outcome": "fail"}, {"runPolicy": {"backoffLimit": 1}}, "NonZeroExitCode",
         ["failed 2 time(s)", "backoffLimit=1"]),
    ],
    ids=["exit-code", "oom", "deadline", "backoff"],
)
def test_failures_say_why(runs: Runs, annotations: dict[str, str], spec: dict[str, Any], reason: str, words: list[str]) -> None:
    runs.create("fails", spec, pod_annotations=annotations)
    status = runs.wait_phase("fails", "Failed", "Succeeded", timeout=90)
    assert (status["phase"], status["reason"]) == ("Failed", reason), status
    for word in words:
        assert word in status["message"], status["message"]
    failed = runs.condition("fails", "Failed")
    assert (failed["status"], failed["reason"]) == ("True", reason)
    # kopf posts Events in batches, a moment after the status write.
    wait_for(lambda: any(e.reason == "RunFailed" and e.type == "Warning" for e in runs.events("fails")), 15,
             "the RunFailed Event")


def test_unschedulable_gpu_request_is_pending_with_the_scheduler_message(runs: Runs) -> None:
    runs.create("greedy", {"resources": {"gpu": 16}})
    status = wait_for(lambda: (s := runs.status("greedy")).get("reason") == "Unschedulable" and s, 60, "Unschedulable")
    assert status["phase"] == "Pending"
    assert "nvidia.com/gpu" in status["message"]


def test_gpu_run_lands_on_the_gpu_node(runs: Runs) -> None:
    runs.create("gpu", {"resources": {"gpu": 2, "cpu": 4, "memory": "8Gi"}}, pod_annotations=FAST)
    assert runs.wait_phase("gpu", "Succeeded", "Failed")["phase"] == "Succeeded"
    [pod] = runs.pods("gpu")
    assert pod.spec.node_name == "learning-gpu-0"


def test_pods_are_kept_until_the_failure_is_recorded_even_with_ttl_zero(runs: Runs) -> None:
    runs.create(
        "ttl",
        {"runPolicy": {"ttlSecondsAfterFinished": 0}},
        pod_annotations={"kwok.kakehashi.dev/outcome": "fail", "kwok.kakehashi.dev/log-tail": "KeyError: 'label'"},
    )
    status = runs.wait_phase("ttl", "Failed", "Succeeded")
    assert status["reason"] == "NonZeroExitCode" and "KeyError: 'label'" in status["message"]
    # Then the TTL controller's cleanup goes through: Job and pods are gone, the status stays.
    wait_for(lambda: not runs.jobs("ttl") and not runs.pods("ttl"), 60, "Job and pods cleaned up")
    assert runs.status("ttl")["reason"] == "NonZeroExitCode"


def test_resolved_git_commit_is_recorded(runs: Runs) -> None:
    runs.create(
        "from-git",
        {"source": {"git": {"url": "https://git.example/ds/digits.git", "revision": "main"}}},
        pod_annotations={**FAST, "kwok.kakehashi.dev/init-message": SHA},
    )
    status = runs.wait_phase("from-git", "Succeeded", "Failed")
    assert status["source"] == {"commit": SHA}
    [pod] = runs.pods("from-git")
    assert pod.spec.init_containers[0].name == "clone-source"


def test_distributed_run_becomes_a_tfjob_that_succeeds(runs: Runs) -> None:
    runs.create("dist", {"replicas": {"worker": 2}}, pod_annotations=FAST)
    status = runs.wait_phase("dist", "Succeeded", "Failed", timeout=120)
    assert status["phase"] == "Succeeded", status
    assert status["jobRef"]["kind"] == "TFJob"
    [tfjob] = runs.tfjobs("dist")
    assert set(tfjob["spec"]["tfReplicaSpecs"]) == {"Worker"}
    pods = runs.pods("dist")
    assert len(pods) == 2
    assert all("TF_CONFIG" in {e.name for e in p.spec.containers[0].env} for p in pods)


def test_a_failed_worker_fails_the_distributed_run(runs: Runs) -> None:
    runs.create(
        "dist-fail",
        {"replicas": {"chief": 1, "worker": 2}},
        pod_annotations={"kwok.kakehashi.dev/outcome": "fail", "kwok.kakehashi.dev/exit-code": "2"},
    )
    status = runs.wait_phase("dist-fail", "Failed", "Succeeded", timeout=120)
    assert status["reason"] == "NonZeroExitCode" and "exited with code 2" in status["message"]


def test_deleting_a_run_deletes_its_children(runs: Runs) -> None:
    runs.create("doomed", {}, pod_annotations={"kwok.kakehashi.dev/outcome": "run"})
    runs.wait_phase("doomed", "Running")
    assert runs.jobs("doomed") and runs.pods("doomed")
    runs.delete("doomed")
    wait_for(lambda: not runs.jobs("doomed") and not runs.pods("doomed"), 60, "Job and pods deleted")


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


def test_run_end_is_announced_to_the_webhook_and_counted_in_metrics(runs: Runs, operator: Any) -> None:
    server = HTTPServer((operator.webhook_host, 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://{operator.webhook_host}:{server.server_port}/hooks/T000/B000/XXX"
        # Only a Secret that opts in is read; the local receiver is on an address the operator
        # reaches (loopback, or the services address for its pods) over http, which the test
        # operator's allowlist permits (KAKEHASHI_WEBHOOK_ALLOWLIST, _ALLOW_HTTP).
        runs.core.create_namespaced_secret(
            runs.namespace,
            client.V1Secret(metadata=client.V1ObjectMeta(name="slack", labels={OPT_IN_LABEL: "true"}),
                            string_data={"url": url}),
        )
        runs.create("announced", {"notification": {"webhookSecret": "slack"}},
                    pod_annotations={"kwok.kakehashi.dev/outcome": "fail", "kwok.kakehashi.dev/log-tail": "OSError: disk full"})
        runs.wait_phase("announced", "Failed")
        wait_for(lambda: any("announced" in m["text"] for m in _Receiver.received), 30, "webhook call")
        message = next(m for m in _Receiver.received if "announced" in m["text"])
        assert "Failed" in message["text"] and "OSError: disk full" in message["text"]
        assert message["blocks"][0]["type"] == "section"
        assert wait_for(lambda: runs.status("announced").get("notifiedAt"), 30, "notifiedAt")
        # The URL is the webhook's credential: not in the operator's log either.
        assert "/hooks/T000/B000/XXX" not in operator.logs()
    finally:
        server.shutdown()
    metrics = httpx.get(operator.metrics_url).text
    assert 'kakehashi_reconciles_total{resource="trainingrun",result="success"}' in metrics
    assert 'kakehashi_notifications_total{result="sent"}' in metrics
    assert "kakehashi_training_duration_seconds_bucket" in metrics
    assert 'kakehashi_trainingruns{phase="Failed"}' in metrics
    assert httpx.get(operator.health_url).status_code == 200


def test_a_secret_that_did_not_opt_in_is_not_used_and_never_shown(runs: Runs) -> None:
    url = "https://hooks.example.com/services/T000/B000/SECRETVALUE"
    runs.core.create_namespaced_secret(
        runs.namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="db-password"), string_data={"url": url})
    )
    runs.create("nosy", {"notification": {"webhookSecret": "db-password"}})
    runs.wait_phase("nosy", "Succeeded")
    event = wait_for(
        lambda: next((e for e in runs.events("nosy") if e.reason == "NotificationFailed"), None), 30, "the refusal Event"
    )
    assert "Secret db-password" in event.message and OPT_IN_LABEL in event.message
    everything = json.dumps([e.message for e in runs.events("nosy")]) + json.dumps(runs.get("nosy"))
    assert "SECRETVALUE" not in everything and "hooks.example.com" not in everything


def test_a_job_the_api_server_refuses_fails_the_run_with_the_field_named(runs: Runs) -> None:
    # The CRD does not check toleration keys; the Job's own validation does (422).
    runs.create("refused", {"tolerations": [{"key": "bad key!", "operator": "Exists"}]})
    status = runs.wait_phase("refused", "Failed", timeout=30)
    assert status["reason"] == "InvalidSpec"
    assert "tolerations[0].key" in status["message"], status["message"]
    assert runs.jobs("refused") == []
    time.sleep(3)  # no retry storm: the run stays Failed and one Failed event was posted
    failed = [e for e in runs.events("refused") if e.reason == "RunFailed"]
    assert len(failed) == 1 and (failed[0].count or 1) == 1
