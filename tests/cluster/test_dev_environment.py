"""The local environment behaves like real clusters, a real S3 and a real registry."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import tarfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from trainingruns import wait_for

from kakehashi.control.client import api_client
from kakehashi.dev import node as real_node
from kakehashi.dev.environment import DevEnvironment
from kakehashi.oci import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, Registry, sha256_digest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("cluster", ["learning", "production"])
def test_nodes_are_ready(cluster: str, learning: Any, production: Any) -> None:
    api = {"learning": learning, "production": production}[cluster]
    nodes = client.CoreV1Api(api).list_node().items
    assert len(nodes) >= 3
    for node in nodes:
        ready = [c for c in node.status.conditions if c.type == "Ready"]
        assert ready and ready[0].status == "True", f"{node.metadata.name} not Ready"


def test_clusters_are_separate(learning: Any, production: Any) -> None:
    learning_nodes = {n.metadata.name for n in client.CoreV1Api(learning).list_node().items}
    production_nodes = {n.metadata.name for n in client.CoreV1Api(production).list_node().items}
    assert learning_nodes.isdisjoint(production_nodes)
    assert client.VersionApi(learning).get_code().git_version == "v1.36.3"


def test_deployment_becomes_available(production: Any, production_namespace: str) -> None:
    apps = client.AppsV1Api(production)
    labels = {"app.kubernetes.io/name": "web"}
    apps.create_namespaced_deployment(production_namespace, {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "labels": labels},
        "spec": {"replicas": 3, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}},
    })

    def available() -> bool:
        status = apps.read_namespaced_deployment_status("web", production_namespace).status
        return any(c.type == "Available" and c.status == "True"
                   for c in status.conditions or []) and status.ready_replicas == 3

    wait_for(available, what="Deployment Available with 3 ready replicas")


def test_job_completes(learning: Any, namespace: str) -> None:
    batch = client.BatchV1Api(learning)
    batch.create_namespaced_job(namespace, {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "once"},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox", "command": ["true"]}]}}},
    })

    def complete() -> bool:
        job = batch.read_namespaced_job_status("once", namespace)
        return any(c.type == "Complete" and c.status == "True"
                   for c in job.status.conditions or [])

    wait_for(complete, what="Job Complete")
    assert batch.read_namespaced_job_status("once", namespace).status.succeeded == 1


def test_tfjob_with_two_workers_succeeds(learning: Any, namespace: str) -> None:
    custom = client.CustomObjectsApi(learning)
    custom.create_namespaced_custom_object("kubeflow.org", "v1", namespace, "tfjobs", {
        "apiVersion": "kubeflow.org/v1", "kind": "TFJob", "metadata": {"name": "mnist"},
        "spec": {"tfReplicaSpecs": {"Worker": {
            "replicas": 2, "restartPolicy": "Never",
            "template": {"spec": {"containers": [
                {"name": "tensorflow", "image": "tensorflow/tensorflow:2.16.1",
                 "command": ["python", "-c", "pass"]}]}}}}},
    })
    core = client.CoreV1Api(learning)

    def pods() -> list[Any]:
        items: list[Any] = core.list_namespaced_pod(
            namespace, label_selector="training.kubeflow.org/job-name=mnist").items
        return items if len(items) == 2 else []

    created = wait_for(pods, what="2 TFJob pods")
    for pod in created:
        assert pod.metadata.owner_references[0].kind == "TFJob"
        tf_config = json.loads(next(e.value for e in pod.spec.containers[0].env
                                    if e.name == "TF_CONFIG"))
        assert len(tf_config["cluster"]["worker"]) == 2

    def succeeded() -> bool:
        job = custom.get_namespaced_custom_object_status("kubeflow.org", "v1", namespace,
                                                         "tfjobs", "mnist")
        return any(c["type"] == "Succeeded" and c["status"] == "True"
                   for c in job.get("status", {}).get("conditions", []))

    wait_for(succeeded, what="TFJob Succeeded")
    phases = {p.status.phase for p in core.list_namespaced_pod(
        namespace, label_selector="training.kubeflow.org/job-name=mnist").items}
    assert phases == {"Succeeded"}


def test_s3_bucket_put_get(s3: Any) -> None:
    bucket = f"test-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    body = b"weights" * 1000
    s3.put_object(Bucket=bucket, Key="models/a/model.bin", Body=body)
    assert s3.get_object(Bucket=bucket, Key="models/a/model.bin")["Body"].read() == body
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="models/")
    assert [o["Key"] for o in listed["Contents"]] == ["models/a/model.bin"]


def test_model_bucket_exists(s3: Any, dev_env: DevEnvironment) -> None:
    s3.head_bucket(Bucket=dev_env.s3.model_bucket)


def _layer(files: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def test_oci_manifest_and_blob_round_trip(dev_env: DevEnvironment) -> None:
    registry = Registry(dev_env.registry, insecure=True)
    repository = f"test/model-{uuid.uuid4().hex[:6]}"
    layer = _layer({"models/digits/model.json": b'{"uri": "s3://x"}'})
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [
                             sha256_digest(gzip.decompress(layer))]}}).encode()
    manifest = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": registry.push_blob(repository, config),
                   "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": registry.push_blob(repository, layer),
                    "size": len(layer)}],
    }
    digest = registry.push_manifest(repository, "v1", manifest)

    pulled, pulled_digest = registry.pull_manifest(repository, "v1")
    assert pulled_digest == digest
    assert pulled == manifest
    by_digest, _ = registry.pull_manifest(repository, digest)
    assert by_digest == manifest
    assert registry.pull_blob(repository, manifest["layers"][0]["digest"]) == layer
    assert registry.tags(repository) == ["v1"]


def test_platform_manifests_apply_server_side(kubectl: Any) -> None:
    rendered = kubectl("learning", "kustomize", str(REPO))
    assert "kind:" in rendered
    out = kubectl("learning", "apply", "--server-side", "--field-manager=kakehashi-test",
                  "--force-conflicts", "-f", "-", input=rendered)
    assert "serverside-applied" in out


def test_dev_status_reports_every_component(dev_env: DevEnvironment) -> None:
    result = subprocess.run(["kakehashi", "dev", "status"], capture_output=True, text=True,
                            env=_env_with_venv())
    assert result.returncode == 0, result.stdout + result.stderr
    for component in ("kube-apiserver", "kube-controller-manager", "kube-scheduler",
                      "kwok-controller", "etcd", "minio", "registry", "training-operator"):
        assert component in result.stdout
    if dev_env.real_nodes:
        for cluster in ("learning", "production"):
            for component in ("containerd", "kubelet", "kube-proxy"):
                assert f"{component}-{cluster}" in result.stdout


def _env_with_venv() -> dict[str, str]:
    import os
    import sys

    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


@pytest.mark.teardown_env
def test_dev_up_recovers_after_every_process_died(dev_env: DevEnvironment) -> None:
    """A machine handed back with its processes gone: `dev up` restarts, data intact."""
    import os
    import signal

    from kakehashi.dev import stack

    learning_api = _api(dev_env.learning.kubeconfig)
    marker = f"survivor-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api(learning_api).create_namespace({"metadata": {"name": marker}})
    for pid in stack.started_pids():
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not any(row.running for row in stack.status()), timeout=10,
             what="every process to die")

    stack.up()

    assert all(row.running for row in stack.status())
    learning_api = _api(dev_env.learning.kubeconfig)  # same kubeconfig, same server
    client.CoreV1Api(learning_api).read_namespace(marker)  # etcd data survived
    test_job_completes(learning_api, marker)
    if dev_env.real_nodes:
        # The real node was made afresh: a pod runs there again.
        core = client.CoreV1Api(learning_api)
        core.create_namespaced_pod(marker, {
            "metadata": {"name": "again"},
            "spec": {"restartPolicy": "Never", "nodeSelector": real_node.SELECTOR,
                     "tolerations": [real_node.TOLERATION],
                     "containers": [{"name": "main", "image": dev_env.images["base"],
                                     "command": ["python", "-c", "print('back')"]}]}})
        wait_for(lambda: core.read_namespaced_pod("again", marker).status.phase == "Succeeded",
                 timeout=120, what="a pod on the recovered real node")


def _api(kubeconfig: Path) -> Any:
    return api_client(kubeconfig)


def _host_state() -> dict[str, Any]:
    """What the real nodes change on the host, as seen from the host."""
    from kakehashi.dev import node

    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    addresses = subprocess.run(["ip", "-o", "addr", "show", "dev", "lo"], capture_output=True,
                               text=True).stdout
    iptables = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    mounts = Path("/proc/self/mountinfo").read_text()
    return {
        "interfaces": sorted(line.split(":")[1].strip().split("@")[0]
                             for line in links.splitlines() if ": kkh" in line),
        "services_address": node.SERVICES_ADDRESS in addresses,
        "kube_chains": sorted({line.split()[0] for line in iptables.splitlines()
                               if line.startswith(":KUBE-")}),
        "mounts": [line.split()[4] for line in mounts.splitlines()
                   if "kakehashi" in line.split()[4]],
        "cgroups": sorted(str(p) for p in Path("/sys/fs/cgroup").glob("*/kakehashi-*")),
    }


def _processes_naming(*paths: Path) -> list[str]:
    """Processes whose command line names one of `paths`: every process the environment
    starts does (its data, config or socket), containerd's shims included."""
    import os

    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
        except OSError:
            continue
        if any(str(path) in cmdline for path in paths):
            found.append(f"{proc.name}: {cmdline[:160]}")
    return found


def _differences(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Where the host after `dev down` differs from the host before the first `dev up`."""
    sysctls = {name: f"{value} before, {after['sysctls'][name]} after"
               for name, value in before["sysctls"].items()
               if name in after["sysctls"] and after["sysctls"][name] != value}
    added = {key: sorted(set(after[key]) - set(before[key]))
             for key in ("modules", "links", "mounts", "cgroups")}
    added["mounts"] = [point for point in added["mounts"] if not _someone_elses(Path(point))]
    return {
        "sysctls": sysctls,
        **{f"{key} added": value for key, value in added.items()},
        "iptables": sorted(set(before["iptables"]) ^ set(after["iptables"])),
        # A directory's entries, or whether a file exists: shown where they differ.
        "paths": {path: f"{held} before, {after['paths'][path]} after"
                  for path, held in before["paths"].items()
                  if after["paths"][path] != held},
    }


def _someone_elses(mount_point: Path) -> bool:
    """A mount outside every place the environment mounts (its dev home and cache, the nodes'
    run directory, the fixed host paths, named network namespaces): another user's of this
    shared machine, such as the storage buildah keeps bind-mounted after it exits."""
    from kakehashi.dev import host, node
    from kakehashi.dev.environment import cache_dir, state_dir

    ours = (state_dir(), cache_dir(), node.RUN_ROOT, Path("/run/netns"), *host.HOST_PATHS)
    return not any(mount_point.is_relative_to(path) for path in ours)


@pytest.mark.teardown_env
def test_dev_down_leaves_no_process_and_restores_the_host(dev_env: DevEnvironment) -> None:
    from kakehashi.dev import host, node, stack
    from kakehashi.dev.environment import state_dir
    from kakehashi.dev.processes import pid_alive

    pids = stack.started_pids()
    assert len(pids) >= 13  # 2 x (etcd, apiserver, kcm, scheduler, kwok) + minio, registry, TO
    before: dict[str, Any] = {}
    if dev_env.real_nodes:
        # Read now: `down` deletes it.
        before = json.loads((state_dir() / "host.json").read_text()).get("before", {})
        assert len(pids) >= 19  # + containerd, kubelet, kube-proxy per cluster
        during = _host_state()
        assert during["interfaces"] and during["services_address"] and during["mounts"]
    if before:
        # The values the kubelet and the nodes' networking would change were noted.
        for name in ("vm.overcommit_memory", "kernel.panic", "kernel.panic_on_oops",
                     "net.ipv4.ip_forward"):
            assert name in before["sysctls"], name
        if before["sysctls"]["vm.overcommit_memory"] != "1":
            # The kubelet's change is there while the nodes run: `down` has one to undo.
            assert host.read_sysctls()["vm.overcommit_memory"] == "1"
    result = subprocess.run(["kakehashi", "dev", "down"], capture_output=True, text=True,
                            env=_env_with_venv(), timeout=300)
    assert result.returncode == 0, result.stderr
    assert [pid for pid in pids if pid_alive(pid)] == []
    assert _processes_naming(state_dir(), node.RUN_ROOT) == []
    assert not DevEnvironment.path().exists()
    assert _host_state() == {"interfaces": [], "services_address": False, "kube_chains": [],
                             "mounts": [], "cgroups": []}
    if dev_env.real_nodes and not before:
        # Still `down` ran (so the next `up` records a snapshot) and everything above held.
        pytest.skip("host.json has no snapshot of the host before the first `dev up` (that "
                    "`up` ran older code): the host after `down` was not compared with it")
    if before:
        # Every writable sysctl (a difference may also be another user's change of the
        # machine meanwhile: the message names it), module, link, mount, cgroup, iptables
        # rule and fixed host path is as the first `up` found it.
        assert _differences(before, host.snapshot()) == {
            "sysctls": {}, "modules added": [], "links added": [], "mounts added": [],
            "cgroups added": [], "iptables": [], "paths": {}}
