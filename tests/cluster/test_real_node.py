"""The real node of each local cluster runs containers for real: kubelet, containerd, runc,
CNI and kube-proxy, images from the local registry, the local MinIO reached from a pod, and
the TrainingRun operator reading what the real kubelet reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client
from tiny_models import tiny_savedmodel
from trainingruns import Runs, wait_for

from kakehashi.dev import images
from kakehashi.dev import node as real_node
from kakehashi.dev.environment import DevEnvironment
from kakehashi.dev.layout import Layout

ON_REAL_NODE = {"nodeSelector": real_node.SELECTOR, "tolerations": [real_node.TOLERATION]}


@pytest.fixture(autouse=True)
def real_nodes(dev_env: DevEnvironment) -> None:
    if not dev_env.real_nodes:
        pytest.skip(f"no real nodes on this machine: {dev_env.no_real_nodes_reason}")


def _pod(name: str, image: str, command: list[str], **container: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", **ON_REAL_NODE,
                 "containers": [{"name": "main", "image": image, "command": command,
                                 **container}]},
    }


def _finished(core: client.CoreV1Api, namespace: str, name: str, timeout: float = 180) -> Any:
    def done() -> Any:
        pod = core.read_namespaced_pod(name, namespace)
        return pod if pod.status.phase in ("Succeeded", "Failed") else None

    return wait_for(done, timeout=timeout, what=f"pod {name} to finish")


@pytest.mark.parametrize("cluster", ["learning", "production"])
def test_each_cluster_has_a_ready_real_node_apart_from_kwok(cluster: str, learning: Any,
                                                            production: Any) -> None:
    api = {"learning": learning, "production": production}[cluster]
    node = client.CoreV1Api(api).read_node(f"{cluster}-real")
    assert node.metadata.labels[real_node.NODE_LABEL] == "real"
    assert any(t.key == real_node.NODE_LABEL and t.effect == "NoSchedule"
               for t in node.spec.taints or [])
    assert "kwok.x-k8s.io/node" not in (node.metadata.annotations or {})
    assert node.status.node_info.container_runtime_version.startswith("containerd://2.")
    assert node.status.node_info.kubelet_version == "v1.36.3"


def test_pod_runs_python_in_the_local_base_image_and_its_log_is_read(
        learning: Any, namespace: str, dev_env: DevEnvironment) -> None:
    core = client.CoreV1Api(learning)
    core.create_namespaced_pod(namespace, _pod("hello", dev_env.images["base"], [
        "python", "-c", "import sys, platform; print('hello from', platform.python_version(),"
        " sys.prefix)"]))
    pod = _finished(core, namespace, "hello")
    assert pod.status.phase == "Succeeded"
    assert pod.spec.node_name == "learning-real"
    assert pod.status.pod_ip.startswith("10.244.")
    log = core.read_namespaced_pod_log("hello", namespace)
    assert log.startswith("hello from 3.11."), log


def test_pods_of_the_two_clusters_get_their_own_cidrs(
        production: Any, production_namespace: str, dev_env: DevEnvironment) -> None:
    core = client.CoreV1Api(production)
    core.create_namespaced_pod(production_namespace,
                               _pod("where", dev_env.images["base"], ["true"]))
    pod = _finished(core, production_namespace, "where")
    assert pod.spec.node_name == "production-real"
    assert pod.status.pod_ip.startswith("10.245.")


def test_job_completes_on_the_real_node(learning: Any, namespace: str,
                                        dev_env: DevEnvironment) -> None:
    batch = client.BatchV1Api(learning)
    batch.create_namespaced_job(namespace, {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "sum"},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never", **ON_REAL_NODE,
            "containers": [{"name": "main", "image": dev_env.images["base"],
                            "command": ["python", "-c", "print(sum(range(10)))"]}]}}},
    })

    def complete() -> bool:
        job = batch.read_namespaced_job_status("sum", namespace)
        return any(c.type == "Complete" and c.status == "True"
                   for c in job.status.conditions or [])

    wait_for(complete, timeout=180, what="Job Complete")
    [pod] = client.CoreV1Api(learning).list_namespaced_pod(
        namespace, label_selector="job-name=sum").items
    assert client.CoreV1Api(learning).read_namespaced_pod_log(pod.metadata.name,
                                                              namespace).strip() == "45"


def test_container_over_its_memory_limit_is_oomkilled(learning: Any, namespace: str,
                                                     dev_env: DevEnvironment) -> None:
    core = client.CoreV1Api(learning)
    core.create_namespaced_pod(namespace, _pod(
        "hog", dev_env.images["base"],
        ["python", "-c", "blocks = [bytearray(16 << 20) for _ in range(64)]"],
        resources={"limits": {"memory": "64Mi"}}))
    pod = _finished(core, namespace, "hog")
    terminated = pod.status.container_statuses[0].state.terminated
    assert (pod.status.phase, terminated.reason, terminated.exit_code) == ("Failed", "OOMKilled",
                                                                          137)


def test_pod_reads_an_object_from_minio(learning: Any, namespace: str, s3: Any,
                                        dev_env: DevEnvironment) -> None:
    key = f"test-real-node/{uuid.uuid4().hex[:8]}.txt"
    s3.put_object(Bucket=dev_env.s3.model_bucket, Key=key, Body=b"weights from minio")
    url = s3.generate_presigned_url("get_object", ExpiresIn=600,
                                    Params={"Bucket": dev_env.s3.model_bucket, "Key": key})
    core = client.CoreV1Api(learning)
    core.create_namespaced_pod(namespace, _pod("reader", dev_env.images["base"], [
        "python", "-c", "import sys, urllib.request; "
        "print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())", url]))
    pod = _finished(core, namespace, "reader")
    log = core.read_namespaced_pod_log("reader", namespace)
    assert (pod.status.phase, log.strip()) == ("Succeeded", "weights from minio")


def test_unchanged_images_are_not_rebuilt(dev_env: DevEnvironment) -> None:
    """`kakehashi dev images` finds each image its Dockerfile and context would make already
    in the registry, under the tag their content hash gives, and builds nothing."""
    base = {images.BASE_ARG: dev_env.images["base"]}
    for name in images.DEFAULT_IMAGES:
        key = images.content_key(images.PROJECT_IMAGES[name], base)
        # Checked first, so that a context changed since `dev up` fails here at once instead
        # of rebuilding (which is what it should do then).
        assert dev_env.images[name].endswith(f":{key}"), (name, dev_env.images[name], key)
    result = subprocess.run(["kakehashi", "dev", "images"], capture_output=True, text=True,
                            env={**os.environ,
                                 "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
                            timeout=300)
    assert result.returncode == 0, result.stderr
    for name in images.DEFAULT_IMAGES:
        assert f"Image {name}: {dev_env.images[name]} unchanged, in the registry" in \
            result.stderr, result.stderr
    assert "building" not in result.stderr and "pushed" not in result.stderr, result.stderr


# --- TrainingRuns on the real node: what the real kubelet reports, in the run's status ----

@pytest.fixture
def runs(learning: Any, namespace: str, operator: Any) -> Iterator[Runs]:
    yield Runs(learning, namespace)


def _real_run(image: str, command: list[str], **spec: Any) -> dict[str, Any]:
    return {"image": image, "command": command, **ON_REAL_NODE, **spec}


def test_trainingrun_over_its_memory_limit_fails_oomkilled(runs: Runs,
                                                           dev_env: DevEnvironment) -> None:
    runs.create("oom", _real_run(
        dev_env.images["base"],
        ["python", "-c", "blocks = [bytearray(16 << 20) for _ in range(64)]"],
        resources={"memory": "64Mi"}, runPolicy={"backoffLimit": 0}))
    status = runs.wait_phase("oom", "Succeeded", "Failed", timeout=180)
    assert (status["phase"], status["reason"]) == ("Failed", "OOMKilled"), status
    assert "64Mi" in status["message"]
    [pod] = runs.pods("oom")
    assert pod.spec.node_name == "learning-real"
    assert not (pod.metadata.annotations or {}).get("kwok.kakehashi.dev/outcome")


def test_trainingrun_exiting_non_zero_shows_its_real_last_log_lines(
        runs: Runs, dev_env: DevEnvironment) -> None:
    # The traceback comes a moment after the last epoch, as it does in a real run: the
    # runtime copies stdout and stderr through separate pipes, so lines written to both in
    # the same few milliseconds land in the log in either order (4 of 8 pods here had a
    # stderr line written after 30 stdout lines recorded first; the cold CI failed on it).
    script = ("import sys, time\n"
              "for epoch in range(30): print(f'epoch {epoch} loss {1/(epoch+1):.3f}')\n"
              "time.sleep(1)\n"
              "print('ValueError: labels and images differ in length', file=sys.stderr)\n"
              "sys.exit(3)")
    runs.create("crash", _real_run(dev_env.images["base"], ["python", "-u", "-c", script],
                                   runPolicy={"backoffLimit": 0}))
    status = runs.wait_phase("crash", "Succeeded", "Failed", timeout=180)
    assert (status["phase"], status["reason"]) == ("Failed", "NonZeroExitCode"), status
    message = status["message"]
    assert "3" in message
    assert "ValueError: labels and images differ in length" in message
    assert "epoch 29 loss 0.033" in message
    assert "epoch 0 loss" not in message  # only the last lines


def test_trainingrun_with_a_missing_image_reports_imagepullbackoff(
        runs: Runs, dev_env: DevEnvironment) -> None:
    missing = f"{dev_env.registry}/kakehashi/does-not-exist:{uuid.uuid4().hex[:6]}"
    runs.create("nothing", _real_run(missing, ["python", "train.py"]))
    status = wait_for(lambda: (s := runs.status("nothing")).get("reason") == "ImagePullBackOff"
                      and s, timeout=120, what="ImagePullBackOff on the run")
    assert status["phase"] == "Pending"
    assert "does-not-exist" in status["message"]


# --- serving on the production cluster's real node ------------------------------------------

def test_serving_image_with_a_baked_model_is_available_behind_a_service(
        production: Any, production_namespace: str, dev_env: DevEnvironment,
        tmp_path: Path) -> None:
    """The serving image built from inference/Dockerfile, a model baked onto it (compiled,
    one layer), deployed on the production real node: the Deployment becomes Available on
    its readiness probe, a client pod gets /ready through the Service's ClusterIP and the host
    through its NodePort (kube-proxy both)."""
    pytest.importorskip("tensorflow")
    from kakehashi.bake.bake import bake

    model = tmp_path / "scorer"
    model.mkdir()
    tiny_savedmodel(model)
    suffix = uuid.uuid4().hex[:6]
    baked = bake(model, dev_env.images["serving"], f"{dev_env.registry}/test/scorer-{suffix}",
                 service="scorer", model_name="scorer", insecure=True)
    assert baked.compiled
    labels = {"app": "scorer"}
    apps, core = client.AppsV1Api(production), client.CoreV1Api(production)
    apps.create_namespaced_deployment(production_namespace, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "scorer"},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {**ON_REAL_NODE, "containers": [{
                "name": "serve", "image": baked.image, "ports": [{"containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080},
                                   "periodSeconds": 1},
                "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}}},
    })
    core.create_namespaced_service(production_namespace, {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "scorer"},
        "spec": {"type": "NodePort", "selector": labels,
                 "ports": [{"port": 80, "targetPort": 8080}]},
    })

    def available() -> bool:
        status = apps.read_namespaced_deployment_status("scorer", production_namespace).status
        return any(c.type == "Available" and c.status == "True"
                   for c in status.conditions or []) and status.ready_replicas == 1

    wait_for(available, timeout=300, what="the serving Deployment Available")
    [pod] = core.list_namespaced_pod(production_namespace, label_selector="app=scorer").items
    assert pod.spec.node_name == "production-real"
    # Pulled by containerd over plain HTTP from the local registry, as pushed (by digest).
    assert pod.status.container_statuses[0].image_id.endswith(baked.digest)
    cluster_ip = core.read_namespaced_service("scorer", production_namespace).spec.cluster_ip
    core.create_namespaced_pod(production_namespace, _pod("client", dev_env.images["base"], [
        "python", "-c", "import sys, urllib.request; "
        "print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())",
        f"http://{cluster_ip}/ready"]))
    finished = _finished(core, production_namespace, "client")
    # Raw bytes: the client library would turn a JSON log into a Python repr.
    answer = core.read_namespaced_pod_log("client", production_namespace,
                                          _preload_content=False).data.decode()
    assert finished.status.phase == "Succeeded", answer
    ready = json.loads(answer)
    assert (ready["status"], ready["model"]) == ("ready", "scorer"), ready
    # And through the node's NodePort, from outside the cluster (the host).
    service = core.read_namespaced_service("scorer", production_namespace)
    node_ip = real_node.RealNode("production", Layout.load(create=False), {},
                                 dev_env.registry).node_ip
    answer = httpx.get(f"http://{node_ip}:{service.spec.ports[0].node_port}/ready",
                       timeout=10)
    assert (answer.status_code, answer.json()["model"]) == (200, "scorer"), answer.text
