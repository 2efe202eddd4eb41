"""The two local Kubernetes clusters: kwokctl's binary runtime and the fake (kwok) nodes.

kwokctl starts real etcd, kube-apiserver, kube-controller-manager and kube-scheduler from the
binaries in `tools.py`, with kwok standing in for kubelets on the fake nodes created here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from kakehashi.control.client import api_client
from kakehashi.dev import tools
from kakehashi.dev.layout import Layout
from kakehashi.dev.processes import pid_alive, terminate, wait_gone

Progress = Callable[[str], None]

FIELD_MANAGER = "kakehashi-dev"

# Fake nodes per cluster: enough pod slots (110 each) for the throughput benchmark's 500 runs,
# plus a tainted GPU node on the learning cluster so GPU scheduling is exercised for real.
NODES: dict[str, list[dict[str, Any]]] = {
    "learning": [
        *({"name": f"learning-cpu-{i}", "cpu": "32", "memory": "256Gi"} for i in range(5)),
        {"name": "learning-gpu-0", "cpu": "32", "memory": "256Gi", "gpu": "8"},
    ],
    "production": [
        {"name": f"production-cpu-{i}", "cpu": "16", "memory": "64Gi"} for i in range(3)
    ],
}


def _kwokctl_env(layout: Layout) -> dict[str, str]:
    return {
        **os.environ,
        "KWOK_WORKDIR": str(layout.kwok_workdir),
        # kwokctl shells out to kubectl (readiness, scaling): ours, not whatever is installed,
        # and never a download.
        "PATH": f"{layout.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        # kwokctl derives component flags from these; they must name the real versions.
        "KWOK_KUBE_VERSION": tools.K8S_VERSION,
        "KWOK_ETCD_VERSION": tools.ETCD_VERSION,
    }


def _kwokctl(layout: Layout, binaries: dict[str, Path], *args: str) -> None:
    cmd = [str(binaries["kwokctl"]), *args]
    if args[0] in ("create", "delete"):
        # These merge the cluster into (or out of) a kubeconfig: keep that inside our state
        # dir, never the user's ~/.kube/config.
        cmd += ["--kubeconfig", str(layout.kwok_workdir / "merged-kubeconfig.yaml")]
    result = subprocess.run(cmd, env=_kwokctl_env(layout), capture_output=True, text=True,
                            timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"kwokctl {' '.join(args)} failed:\n{result.stderr[-3000:]}")


def _recorded_pids(layout: Layout, cluster: str) -> list[int]:
    pid_dir = layout.kwok_workdir / "clusters" / cluster / "pids"
    return [int(p.read_text()) for p in pid_dir.glob("*.pid") if p.read_text().strip().isdigit()]


def cluster_pids(layout: Layout, cluster: str) -> dict[str, int | None]:
    """Component -> pid (None when not running) for one kwokctl cluster."""
    pids: dict[str, int | None] = {}
    pid_dir = layout.kwok_workdir / "clusters" / cluster / "pids"
    for pid_file in sorted(pid_dir.glob("*.pid")):
        component = pid_file.stem
        try:
            pid = int(pid_file.read_text().strip())
        except ValueError:
            pids[component] = None
            continue
        binary = layout.kwok_workdir / "clusters" / cluster / "bin" / component
        pids[component] = pid if pid_alive(pid, binary) else None
    return pids


def _cluster_config_files() -> list[Path]:
    dev = tools.repo_root() / "manifests" / "dev"
    return [dev / "kwokctl.yaml", dev / "kwok-stages.yaml"]


def _cluster_config_hash(binaries: dict[str, Path]) -> str:
    digest = hashlib.sha256()
    for path in _cluster_config_files():
        digest.update(path.read_bytes())
    for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "etcd"):
        digest.update(str(binaries[name].resolve()).encode())
    return digest.hexdigest()[:16]


def cluster_up(layout: Layout, binaries: dict[str, Path], cluster: str,
               progress: Progress) -> bool:
    """Create or start `cluster` as needed; True if any of its processes were (re)started."""
    cluster_dir = layout.kwok_workdir / "clusters" / cluster
    stamp = layout.kwok_workdir / f"{cluster}.config-hash"
    want = _cluster_config_hash(binaries)
    if (cluster_dir / "kwok.yaml").exists() and (not stamp.exists()
                                                 or stamp.read_text() != want):
        # kwokctl fixes a cluster's flags at creation: a changed stage, flag or binary
        # means a new cluster (its objects are test data, nothing to keep).
        progress(f"Cluster {cluster} was made with other settings: recreating it")
        delete_cluster(layout, binaries, cluster)
    if not (cluster_dir / "kwok.yaml").exists():
        progress(f"Creating cluster {cluster}")
        config_args = [arg for path in _cluster_config_files() for arg in ("--config", str(path))]
        _kwokctl(
            layout, binaries, "create", "cluster", "--name", cluster, "--runtime", "binary",
            "--kube-apiserver-binary", str(binaries["kube-apiserver"]),
            "--kube-controller-manager-binary", str(binaries["kube-controller-manager"]),
            "--kube-scheduler-binary", str(binaries["kube-scheduler"]),
            "--kwok-controller-binary", str(binaries["kwok"]),
            "--etcd-binary", str(binaries["etcd"]),
            *config_args,
            # Client-side throttling off for every component, so controllers are limited by
            # the API server, as the operator (which has no client throttle) is.
            "--disable-qps-limits",
            "--wait", "3m",
        )
        stamp.write_text(want)
        return True
    pids = cluster_pids(layout, cluster)
    if pids and all(pids.values()):
        return False
    progress(f"Starting cluster {cluster}")
    # Some components may still run (after a crash, or a machine handed back with its
    # processes gone): stop what is left by pid, then start all of them.
    for pid in pids.values():
        if pid is not None:
            terminate(pid)
    wait_gone(_recorded_pids(layout, cluster))
    _kwokctl(layout, binaries, "start", "cluster", "--name", cluster, "--wait", "3m")
    return True


def delete_cluster(layout: Layout, binaries: dict[str, Path], cluster: str) -> None:
    try:
        _kwokctl(layout, binaries, "delete", "cluster", "--name", cluster)
    finally:
        # Whatever kwokctl could not stop, stop by its pid file.
        for pid in cluster_pids(layout, cluster).values():
            if pid is not None:
                terminate(pid)
        shutil.rmtree(layout.kwok_workdir / "clusters" / cluster, ignore_errors=True)
        (layout.kwok_workdir / f"{cluster}.config-hash").unlink(missing_ok=True)


def fake_node(spec: dict[str, Any]) -> dict[str, Any]:
    """A Node that kwok manages (keeps Ready, runs its pods), with its capacity."""
    capacity = {"cpu": spec["cpu"], "memory": spec["memory"], "pods": "110"}
    labels = {
        "kubernetes.io/hostname": spec["name"],
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "node-role.kubernetes.io/agent": "",
        "type": "kwok",
        "app.kubernetes.io/managed-by": FIELD_MANAGER,
    }
    taints = []
    if "gpu" in spec:
        capacity["nvidia.com/gpu"] = spec["gpu"]
        labels["nvidia.com/gpu.present"] = "true"
        # As on EKS GPU node groups: only pods that ask for GPUs (and tolerate it) land here.
        taints.append({"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": spec["name"],
            "labels": labels,
            # kwok manages nodes carrying this annotation: it keeps them Ready and runs pods.
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"taints": taints},
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def ensure_fake_nodes(layout: Layout, cluster: str, restarted_at: datetime | None) -> None:
    """Create the fake nodes if missing; after a restart, hand them to the new kwok."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api = api_client(layout.kubeconfig(cluster))
    core = client.CoreV1Api(api)
    for spec in NODES[cluster]:
        try:
            # Created with its status: a Node's capacity, like a kubelet's registration.
            core.create_node(fake_node(spec))
        except ApiException as exc:
            if exc.status != 409:
                raise
    names = {spec["name"] for spec in NODES[cluster]}
    if restarted_at is not None:
        _release_node_leases(api, names, restarted_at)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        nodes = core.list_node().items
        ready = {n.metadata.name for n in nodes if any(
            c.type == "Ready" and c.status == "True" for c in (n.status.conditions or []))}
        if names <= ready and (restarted_at is None
                               or _leases_renewed_since(api, names, restarted_at)):
            return
        time.sleep(0.5)
    raise RuntimeError(f"nodes of cluster {cluster} did not become Ready within 90s")


def _release_node_leases(api: Any, names: set[str], restarted_at: datetime) -> None:
    """kwok manages a node only while it holds the node's Lease, and each kwok process has
    a new identity: leases of the dead one would block the new one for their whole duration
    (200 s). Nothing else renews them, so delete the stale ones."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    coordination = client.CoordinationV1Api(api)
    for lease in coordination.list_namespaced_lease("kube-node-lease").items:
        renewed = lease.spec.renew_time
        if lease.metadata.name in names and (renewed is None or renewed < restarted_at):
            try:
                coordination.delete_namespaced_lease(lease.metadata.name, "kube-node-lease")
            except ApiException as exc:
                if exc.status != 404:
                    raise


def _leases_renewed_since(api: Any, names: set[str], since: datetime) -> bool:
    from kubernetes import client

    leases = client.CoordinationV1Api(api).list_namespaced_lease("kube-node-lease").items
    fresh = {lease.metadata.name for lease in leases
             if lease.spec.renew_time is not None and lease.spec.renew_time >= since}
    return names <= fresh


def restart_component(cluster: str, component: str) -> int:
    """Restart one control-plane process in place (same command line, environment and files).

    What a crash-looping or upgraded kube-apiserver looks like to its clients; `up()` would
    instead restart the whole cluster. Returns the new pid, recorded in kwokctl's pid file so
    `down()` still stops it.
    """
    layout = Layout.load(create=False)
    pid_file = layout.kwok_workdir / "clusters" / cluster / "pids" / f"{component}.pid"
    pid = int(pid_file.read_text().strip())
    proc = Path(f"/proc/{pid}")
    cmdline = [arg.decode() for arg in (proc / "cmdline").read_bytes().split(b"\0") if arg]
    environ = dict(
        item.decode().split("=", 1)
        for item in (proc / "environ").read_bytes().split(b"\0") if b"=" in item
    )
    cwd = os.readlink(proc / "cwd")
    terminate(pid)
    wait_gone([pid])
    log = (layout.kwok_workdir / "clusters" / cluster / "logs").joinpath(f"{component}.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        new = subprocess.Popen(cmdline, env=environ, cwd=cwd, stdout=out,
                               stderr=subprocess.STDOUT, start_new_session=True)
    pid_file.write_text(str(new.pid))
    return new.pid


def wait_crd_established(api: Any, name: str, timeout: float = 60.0) -> None:
    """Poll a CRD until it is Established.

    Not `kubectl wait`: right after an apply the CRD may have no status.conditions yet, and
    kubectl then fails at once ("accessor error: <nil>") instead of waiting.
    """
    from kubernetes import client

    extensions = client.ApiextensionsV1Api(api)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        crd = extensions.read_custom_resource_definition(name)
        conditions = (crd.status.conditions if crd.status else None) or []
        if any(c.type == "Established" and c.status == "True" for c in conditions):
            return
        time.sleep(0.2)
    raise RuntimeError(f"CRD {name} was not Established within {timeout:.0f}s")
