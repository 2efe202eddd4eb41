"""The ModelService loop on in-memory clusters: bakes once, serves only a promotable model,
is Ready only when the pods report serving the wanted digest, rolls back without baking,
and cleans production up when deleted."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from prometheus_client import REGISTRY, generate_latest
from serving_fakes import FakeKube

from kakehashi.control.client import Secret
from kakehashi.control.controller import Key
from kakehashi.control.resources import JOBS
from kakehashi.delivery.direct import ProductionState
from kakehashi.serving import bakejob, render
from kakehashi.serving.reconciler import FINALIZER, ServiceReconciler
from kakehashi.settings import OperatorSettings

NS, NAME = "team", "digits"
KEY: Key = (NS, NAME)
DIGEST = "sha256:" + "1" * 64
DIGEST2 = "sha256:" + "2" * 64
IMAGE = "registry.local/models@sha256:" + "a" * 64
IMAGE2 = "registry.local/models@sha256:" + "b" * 64


class FakeProduction:
    def __init__(self) -> None:
        self.applied: list[list[dict[str, Any]]] = []
        self.deleted: list[str] = []
        self.state = ProductionState()

    def apply(self, objects: list[dict[str, Any]]) -> None:
        self.applied.append(objects)

    def prune(self, namespace: str, service: str, keep: list[dict[str, Any]]) -> list[str]:
        return []

    def read(self, namespace: str, service: str) -> ProductionState:
        return self.state

    def delete_all(self, namespace: str, service: str) -> list[str]:
        self.deleted.append(f"{namespace}/{service}")
        return ["Deployment/digits", "Service/digits"]

    def serve(self, digest: str, replicas: int, *, image: str = IMAGE, crash: bool = False) -> None:
        pods = []
        served = {}
        for i in range(replicas):
            pod: dict[str, Any] = {
                "metadata": {"name": f"digits-{i}", "labels": {render.LABEL_TRACK: "stable"},
                             "annotations": {render.ANNOTATION_MODEL_DIGEST: digest}},
                "status": {"conditions": [{"type": "Ready", "status": "False" if crash else "True"}],
                           "containerStatuses": [{"name": "server", "image": image, "ready": not crash,
                                                  "restartCount": 4 if crash else 0,
                                                  "state": {"waiting": {"reason": "CrashLoopBackOff"}} if crash else {"running": {}},
                                                  "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                                                                               "message": "ModelLoadError: digest mismatch"}} if crash else {}}]},
            }
            pods.append(pod)
            if not crash:
                served[pod["metadata"]["name"]] = digest
        self.state = ProductionState(deployments={"digits": {"status": {}}}, pods=pods, served=served)


def run_body(promotable: str = "True", digest: str = DIGEST, name: str = "digits") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": NS},
        "status": {"phase": "Succeeded",
                   "model": {"uri": f"s3://models/{name}/", "digest": digest},
                   "conditions": [{"type": "Promotable", "status": promotable, "reason": "GateNotMet",
                                   "message": "accuracy=0.51 is not >= 0.9"}]},
    }


def service_body(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kakehashi.dev/v1alpha1", "kind": "ModelService",
        "metadata": {"name": NAME, "namespace": NS, "uid": "ms-uid", "generation": 1, "finalizers": [FINALIZER],
                     "annotations": {"kakehashi.dev/changed-by": "alice"}},
        "spec": {"model": {"trainingRun": "digits"}, "registry": "registry.local/models", "replicas": 2,
                 "delivery": {"mode": "direct", "direct": {"kubeconfigSecret": {"name": "prod"}, "namespace": "prod"}},
                 **spec},
    }


class World:
    def __init__(self, **spec: Any) -> None:
        self.kube = FakeKube({"prod": Secret(data={"kubeconfig": "apiVersion: v1\nkind: Config\n"})})
        self.production = FakeProduction()
        self.events: list[tuple[str, str, str]] = []
        self.rec = ServiceReconciler(
            self.kube, OperatorSettings(bake_node_selector={"kakehashi.dev/node": "real"}),  # type: ignore[arg-type]
            events=lambda body, type_, reason, message: self.events.append((type_, reason, message)),
            production=lambda kubeconfig: self.production,  # type: ignore[arg-type,return-value]
            threads=2,
        )
        self.services: dict[Key, list[dict[str, Any]]] = {KEY: [service_body(**spec)]}
        self.runs: dict[Key, list[dict[str, Any]]] = {(NS, "digits"): [run_body()]}
        self.jobs: dict[Key, list[dict[str, Any]]] = {}
        self.pods: dict[Key, list[dict[str, Any]]] = {}
        self.rec.bind(services=self.services, runs=self.runs, bakejobs=self.jobs, bakepods=self.pods)

    def reconcile(self) -> dict[str, Any]:
        async def once() -> None:
            await self.rec.reconcile(KEY)
            self.rec.queue.forget(KEY)  # drop the scheduled rollout poll: tests step by hand

        asyncio.run(once())
        status = self.kube.statuses[-1]
        self.services[KEY] = [{**self.services[KEY][0], "status": status}]
        return status

    def finish_bake(self, image: str = IMAGE, digest: str = DIGEST) -> None:
        job = self.kube.created[-1]
        self.jobs[KEY] = [job]
        self.pods[KEY] = [{
            "metadata": {"name": "bake-pod", "ownerReferences": [{"uid": job["metadata"]["uid"]}]},
            "status": {"containerStatuses": [{"name": bakejob.CONTAINER, "state": {"terminated": {
                "exitCode": 0, "message": json.dumps({"image": image, "modelDigest": digest})}}}]},
        }]

    def deploy(self, image: str = IMAGE, digest: str = DIGEST) -> dict[str, Any]:
        """Bake (the Job reports `image`), apply, and let two pods serve `digest`."""
        self.reconcile()
        self.finish_bake(image, digest)
        self.reconcile()
        self.production.serve(digest, 2, image=image)
        return self.reconcile()

    def condition(self, status: dict[str, Any], type_: str) -> dict[str, Any]:
        return next(c for c in status["conditions"] if c["type"] == type_)


def test_a_promotable_model_is_baked_once_then_served_and_recorded() -> None:
    world = World()
    status = world.reconcile()
    assert status["phase"] == "Baking"
    assert len(world.kube.created) == 1
    job = world.kube.created[0]
    assert job["kind"] == "Job" and job["metadata"]["annotations"][bakejob.ANNOTATION_MODEL_DIGEST] == DIGEST
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "s3://models/digits/" and args[args.index("--expected-digest") + 1] == DIGEST
    assert args[args.index("--result") + 1] == bakejob.TERMINATION_LOG
    assert args[args.index("--training-run") + 1] == "team/digits"
    assert job["spec"]["template"]["spec"]["nodeSelector"] == {"kakehashi.dev/node": "real"}
    world.jobs[KEY] = [job]
    world.reconcile()
    assert len(world.kube.created) == 1  # the Job exists: never a second bake

    world.finish_bake()
    status = world.reconcile()
    assert status["phase"] == "Deploying" and status["image"] == IMAGE
    applied = {o["kind"]: o for o in world.production.applied[-1]}
    assert applied["Deployment"]["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE
    assert status["history"] == []  # applied is not served

    world.production.serve(DIGEST, 2)
    status = world.reconcile()
    assert status["phase"] == "Ready" and status["readyReplicas"] == 2 and status["servedDigests"] == [DIGEST]
    assert world.condition(status, "Ready")["status"] == "True"
    assert [(h["id"], h["image"], h["modelDigest"], h["trainingRun"], h["changedBy"]) for h in status["history"]] == [
        (1, IMAGE, DIGEST, "digits", "alice")]
    assert ("Normal", "ServiceReady") in [(e[0], e[1]) for e in world.events]


def test_a_model_that_is_not_promotable_is_refused_unless_overridden() -> None:
    world = World()
    world.runs[(NS, "digits")] = [run_body(promotable="False")]
    status = world.reconcile()
    assert status["phase"] == "Failed" and status["reason"] == "NotPromotable"
    assert "accuracy=0.51" in status["message"] and "gateOverride" in status["message"]
    assert world.condition(status, "ModelResolved")["status"] == "False"
    assert world.kube.created == []

    world = World(gateOverride={"reason": "hotfix approved by on-call"})
    world.runs[(NS, "digits")] = [run_body(promotable="False")]
    assert world.reconcile()["phase"] == "Baking"
    world.finish_bake()
    world.reconcile()
    world.production.serve(DIGEST, 2)
    status = world.reconcile()
    assert status["phase"] == "Ready"
    assert world.condition(status, "ModelResolved")["reason"] == "GateOverridden"
    assert status["history"][-1]["gateOverride"] == "hotfix approved by on-call"


def test_pods_that_crash_leave_the_service_degraded_with_the_reason_never_ready() -> None:
    world = World()
    world.reconcile()
    world.finish_bake()
    world.reconcile()
    world.production.serve(DIGEST, 2, crash=True)
    status = world.reconcile()
    assert status["phase"] == "Degraded" and status["reason"] == "CrashLoopBackOff"
    assert "digest mismatch" in status["message"]
    assert world.condition(status, "Ready")["status"] == "False" and status["history"] == []


def test_rollout_in_progress_is_not_ready_while_old_pods_still_serve() -> None:
    world = World()
    world.reconcile()
    world.finish_bake()
    world.reconcile()
    world.production.serve(DIGEST, 2)
    world.production.state.pods.append({"metadata": {"name": "old-pod", "labels": {render.LABEL_TRACK: "stable"},
                                                     "annotations": {render.ANNOTATION_MODEL_DIGEST: DIGEST2}}})
    world.production.state.served["old-pod"] = DIGEST2
    status = world.reconcile()
    assert status["phase"] == "Deploying" and DIGEST2 in status["message"]


def test_rollback_returns_to_an_earlier_image_without_baking() -> None:
    world = World()
    world.deploy()
    # A second model is deployed...
    world.runs[(NS, "digits")] = [run_body(digest=DIGEST2)]
    status = world.deploy(IMAGE2, DIGEST2)
    assert [h["image"] for h in status["history"]] == [IMAGE, IMAGE2]
    bakes = len(world.kube.created)
    # ...and rolled back to entry 1.
    world.services[KEY][0]["spec"]["rollbackTo"] = "1"
    status = world.reconcile()
    assert len(world.kube.created) == bakes  # no bake
    assert {o["kind"]: o for o in world.production.applied[-1]}["Deployment"]["spec"]["template"]["spec"][
        "containers"][0]["image"] == IMAGE
    world.production.serve(DIGEST, 2)
    status = world.reconcile()
    assert status["phase"] == "Ready" and status["image"] == IMAGE
    assert status["history"][-1]["rollback"] is True and status["history"][-1]["image"] == IMAGE


def test_the_same_model_again_is_not_baked_again() -> None:
    world = World()
    world.deploy()
    world.jobs.clear()
    world.pods.clear()  # the bake Job's TTL removed it
    world.services[KEY][0]["spec"]["replicas"] = 3
    world.reconcile()
    assert len(world.kube.created) == 1


def test_a_failed_bake_fails_the_service_with_the_log() -> None:
    world = World()
    world.reconcile()
    job = world.kube.created[0]
    job["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}
    world.jobs[KEY] = [job]
    world.pods[KEY] = [{"metadata": {"name": "p", "ownerReferences": [{"uid": job["metadata"]["uid"]}]},
                        "status": {"containerStatuses": [{"name": "bake", "state": {"terminated": {
                            "exitCode": 1, "message": "RegistryError: 401 unauthorized"}}}]}}]
    status = world.reconcile()
    assert status["phase"] == "Failed" and status["reason"] == "BakeFailed"
    assert "401 unauthorized" in status["message"]
    assert world.condition(status, "Baked")["status"] == "False"


def test_a_registry_outage_longer_than_the_jobs_retries_bakes_again_instead_of_failing() -> None:
    world = World()
    world.reconcile()
    job = world.kube.created[0]
    job["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}
    world.jobs[KEY] = [job]
    outage = json.dumps({"error": {"reason": "RegistryUnavailable", "temporary": True,
                                   "message": "10.0.0.1:5000 unreachable after 5 attempts: ConnectError"}})
    world.pods[KEY] = [{"metadata": {"name": "p", "ownerReferences": [{"uid": job["metadata"]["uid"]}]},
                        "status": {"containerStatuses": [{"name": "bake", "state": {"terminated": {
                            "exitCode": 3, "message": outage}}}]}}]
    status = world.reconcile()
    # Not a final fact: still Baking, the condition says why, the failed Job is gone.
    assert (status["phase"], status["reason"]) == ("Baking", "BakeRetrying")
    assert "RegistryUnavailable" in status["message"] and "unreachable" in status["message"]
    assert world.condition(status, "Baked")["status"] == "False"
    assert world.kube.get(JOBS, NS, job["metadata"]["name"]) is None
    assert [e[1] for e in world.events].count("BakeRetrying") == 1
    # The watch catches up: the Job is created again under the same name, and the service
    # becomes Ready once it pushes.
    world.jobs[KEY], world.pods[KEY] = [], []
    world.reconcile()
    assert [j["metadata"]["name"] for j in world.kube.created] == [job["metadata"]["name"]] * 2
    world.finish_bake()
    world.reconcile()
    world.production.serve(DIGEST, 2)
    assert world.reconcile()["phase"] == "Ready"


def test_a_training_run_that_has_not_finished_is_waited_for() -> None:
    world = World()
    world.runs[(NS, "digits")] = [{"metadata": {"name": "digits"}, "status": {"phase": "Running"}}]
    status = world.reconcile()
    assert status["reason"] == "TrainingRunNotFinished" and world.kube.created == []


def test_deleting_the_service_removes_it_from_production_then_lets_it_go() -> None:
    world = World()
    world.services[KEY][0]["metadata"]["deletionTimestamp"] = "2026-11-26T12:00:00Z"
    asyncio.run(world.rec.reconcile(KEY))
    assert world.production.deleted == ["prod/digits"]
    assert world.kube.patches[-1] == {"metadata": {"finalizers": []}}


def test_a_lagging_watch_never_records_a_deploy_twice() -> None:
    world = World()
    world.reconcile()
    world.finish_bake()
    stale = dict(world.services[KEY][0])  # what the watch still holds while we write
    world.reconcile()
    world.production.serve(DIGEST, 2)
    world.reconcile()
    world.services[KEY] = [{**stale, "metadata": {**stale["metadata"], "resourceVersion": "5"}}]
    asyncio.run(world.rec.reconcile(KEY))
    assert [h["id"] for h in world.kube.statuses[-1]["history"]] == [1]


def test_the_bake_job_carries_the_registry_and_storage_settings_but_no_secret_values() -> None:
    from kakehashi.api.modelservice import ModelService
    from kakehashi.serving.status import ResolvedModel

    ms = ModelService.model_validate(service_body())
    settings = OperatorSettings(registry_insecure=True, s3_endpoint="http://10.0.0.1:9000", bake_image="train:1")
    job = bakejob.render_job(ms, ResolvedModel(uri="s3://m/d/", digest=DIGEST, training_run="digits",
                                               metrics={"accuracy": 0.9}), settings)
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert container["image"] == "train:1" and container["command"] == ["kakehashi", "bake"]
    assert env["KAKEHASHI_REGISTRY_INSECURE"]["value"] == "true"
    assert env["AWS_ENDPOINT_URL_S3"]["value"] == "http://10.0.0.1:9000"
    # Credentials only by reference: the Job spec (readable by whoever reads Jobs) holds no secret.
    for name in ("AWS_ACCESS_KEY_ID", "KAKEHASHI_REGISTRY_PASSWORD"):
        assert "value" not in env[name] and env[name]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert json.loads(container["args"][container["args"].index("--metrics") + 1]) == {"accuracy": 0.9}
    assert len(job["metadata"]["name"]) <= 63 and job["metadata"]["ownerReferences"][0]["uid"] == "ms-uid"
    assert job["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [2]


def _ready(status: str) -> float | None:
    return REGISTRY.get_sample_value("kakehashi_modelservice_status_condition", {
        "namespace": NS, "name": NAME, "condition": "Ready", "status": status})


def _phase(phase: str) -> float | None:
    return REGISTRY.get_sample_value("kakehashi_modelservice_status_phase",
                                     {"namespace": NS, "name": NAME, "phase": phase})


def test_the_operator_exports_each_services_ready_condition_and_phase_and_drops_them_when_it_is_deleted() -> None:
    # What the KakehashiModelServiceNotReady alert reads (manifests/monitoring): the value the
    # status holds, as /metrics shows it, never a series left behind by a deleted service.
    world = World()
    world.reconcile()
    world.finish_bake()
    world.reconcile()
    world.production.serve(DIGEST, 2, crash=True)
    assert world.reconcile()["phase"] == "Degraded"
    assert (_ready("False"), _ready("True"), _ready("Unknown")) == (1.0, 0.0, 0.0)
    assert (_phase("Degraded"), _phase("Ready")) == (1.0, 0.0)

    world.production.serve(DIGEST, 2)
    assert world.reconcile()["phase"] == "Ready"
    assert (_ready("False"), _ready("True")) == (0.0, 1.0)
    assert (_phase("Degraded"), _phase("Ready")) == (0.0, 1.0)
    exposition = generate_latest(REGISTRY).decode()
    assert ('kakehashi_modelservice_status_condition{condition="Ready",name="digits",namespace="team",'
            'status="True"} 1.0') in exposition

    world.services[KEY][0]["metadata"]["deletionTimestamp"] = "2026-11-26T12:00:00Z"
    asyncio.run(world.rec.reconcile(KEY))
    assert _ready("False") is None and _ready("True") is None and _phase("Ready") is None
    assert f'name="{NAME}",namespace="{NS}"' not in generate_latest(REGISTRY).decode()
