"""Bring the whole local environment up, report on it, and take it down.

Two Kubernetes clusters (`learning`, `production`) are made by kwokctl's binary runtime from
the binaries in `tools.py`: real etcd, kube-apiserver, kube-controller-manager and
kube-scheduler, with kwok standing in for kubelets. MinIO, an OCI registry and, on the learning
cluster, the Kubeflow training-operator run as processes of our own (see `processes.py`).
Every step checks what is already there first, so `up` is idempotent and cheap when warm.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from kakehashi.dev import tools
from kakehashi.dev.environment import (
    CLUSTERS,
    ClusterEndpoint,
    DevEnvironment,
    S3Endpoint,
    state_dir,
)
from kakehashi.dev.processes import Service, free_port, pid_alive, terminate, wait_gone

Progress = Callable[[str], None]

S3_ACCESS_KEY = "kakehashi"
S3_SECRET_KEY = "kakehashi-dev-secret"  # local-only MinIO on loopback; not a real secret
TRAINING_OPERATOR_NAMESPACE = "kubeflow"
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


def _silent(_: str) -> None:
    pass


@dataclass
class Layout:
    """Paths and ports of one dev environment, fixed at first `up`."""

    root: Path
    ports: dict[str, int]

    @classmethod
    def load(cls, create: bool = True) -> Layout:
        """The layout on disk; with `create`, allocate ports and persist them first."""
        root = state_dir()
        ports_file = root / "ports.json"
        ports: dict[str, int] = {}
        if ports_file.exists():
            ports = json.loads(ports_file.read_text())
        for name in ("minio", "minio-console", "registry", "training-operator-metrics",
                     "training-operator-health", "training-operator-webhook"):
            ports.setdefault(name, 0 if not create else free_port())
        if create:
            root.mkdir(parents=True, exist_ok=True)
            ports_file.write_text(json.dumps(ports, indent=2))
        return cls(root=root, ports=ports)

    @property
    def kwok_workdir(self) -> Path:
        return self.root / "kwok"

    def kubeconfig(self, cluster: str) -> Path:
        return self.kwok_workdir / "clusters" / cluster / "kubeconfig.yaml"

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"


# --- binaries -----------------------------------------------------------------------------

def _link_binaries(layout: Layout, binaries: dict[str, Path]) -> None:
    """One directory with every tool, for PATH (`kakehashi dev env`)."""
    layout.bin_dir.mkdir(parents=True, exist_ok=True)
    for name, path in binaries.items():
        link = layout.bin_dir / name
        if link.is_symlink() or link.exists():
            if link.resolve() == path.resolve():
                continue
            link.unlink()
        link.symlink_to(path)


# --- clusters -----------------------------------------------------------------------------

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


def _cluster_up(layout: Layout, binaries: dict[str, Path], cluster: str,
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
        _delete_cluster(layout, binaries, cluster)
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


def _delete_cluster(layout: Layout, binaries: dict[str, Path], cluster: str) -> None:
    try:
        _kwokctl(layout, binaries, "delete", "cluster", "--name", cluster)
    finally:
        # Whatever kwokctl could not stop, stop by its pid file.
        for pid in cluster_pids(layout, cluster).values():
            if pid is not None:
                terminate(pid)
        shutil.rmtree(layout.kwok_workdir / "clusters" / cluster, ignore_errors=True)
        (layout.kwok_workdir / f"{cluster}.config-hash").unlink(missing_ok=True)


def _api(layout: Layout, cluster: str) -> Any:
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=str(layout.kubeconfig(cluster)),
                            client_configuration=configuration)
    return client.ApiClient(configuration)


def _node(spec: dict[str, Any]) -> dict[str, Any]:
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


def _ensure_nodes(layout: Layout, cluster: str, restarted_at: datetime | None) -> None:
    """Create the fake nodes if missing; after a restart, hand them to the new kwok."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api = _api(layout, cluster)
    core = client.CoreV1Api(api)
    for spec in NODES[cluster]:
        try:
            # Created with its status: a Node's capacity, like a kubelet's registration.
            core.create_node(_node(spec))
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


# --- training-operator --------------------------------------------------------------------

TRAINING_OPERATOR_MODULE = "github.com/kubeflow/training-operator"
TRAINING_OPERATOR_VERSION = "v1.9.0"


def training_operator_crds() -> list[Path]:
    directory = tools.module_dir(TRAINING_OPERATOR_MODULE, TRAINING_OPERATOR_VERSION,
                                 "training-operator")
    return sorted((directory / "manifests" / "base" / "crds").glob("kubeflow.org_*.yaml"))


def _kubectl(layout: Layout, binaries: dict[str, Path], cluster: str, *args: str,
             stdin: str | None = None) -> str:
    result = subprocess.run(
        [str(binaries["kubectl"]), "--kubeconfig", str(layout.kubeconfig(cluster)), *args],
        input=stdin, capture_output=True, text=True, timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def _training_operator_prerequisites(layout: Layout, binaries: dict[str, Path]) -> None:
    # The TFJob CRD is ~576 KB: past the 256 KiB last-applied annotation, so server-side only.
    args = ["apply", "--server-side", "--force-conflicts", f"--field-manager={FIELD_MANAGER}"]
    for crd in training_operator_crds():
        args += ["-f", str(crd)]
    _kubectl(layout, binaries, "learning", *args)
    wait_crd_established(_api(layout, "learning"), "tfjobs.kubeflow.org")
    # Its certificate rotator fills in this Secret and the webhook's caBundle, and the
    # controllers start only once it has. The API server cannot reach the webhook (no Service
    # endpoints on kwok nodes), so the webhook fails open: TFJobs are validated by the CRD
    # schema only.
    manifests = [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": TRAINING_OPERATOR_NAMESPACE}},
        {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
         "metadata": {"name": "training-operator-webhook-cert",
                      "namespace": TRAINING_OPERATOR_NAMESPACE}},
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": "validator.training-operator.kubeflow.org"},
            "webhooks": [{
                "name": "validator.tfjob.training-operator.kubeflow.org",
                "admissionReviewVersions": ["v1"],
                "clientConfig": {"service": {
                    "name": "training-operator", "namespace": TRAINING_OPERATOR_NAMESPACE,
                    "path": "/validate-kubeflow-org-v1-tfjob", "port": 443}},
                "failurePolicy": "Ignore",
                "timeoutSeconds": 2,
                "sideEffects": "None",
                "rules": [{"apiGroups": ["kubeflow.org"], "apiVersions": ["v1"],
                           "operations": ["CREATE", "UPDATE"], "resources": ["tfjobs"]}],
            }],
        },
    ]
    docs = yaml.safe_dump_all(manifests)
    # The rotator owns the Secret's data and the caBundle afterwards: apply only our fields.
    _kubectl(layout, binaries, "learning", "apply", "--server-side",
             f"--field-manager={FIELD_MANAGER}", "-f", "-", stdin=docs)


WEBHOOK_CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")  # fixed in training-operator


def _mount_webhook_certs(layout: Layout, timeout_s: float = 60.0) -> None:
    """Do what the kubelet's secret volume does in a real cluster: put the Secret's certs
    where the training-operator's webhook server reads them. Its certificate rotator fills
    the Secret, then waits for the files before it starts any controller."""
    import base64

    from kubernetes import client

    core = client.CoreV1Api(_api(layout, "learning"))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        secret = core.read_namespaced_secret("training-operator-webhook-cert",
                                             TRAINING_OPERATOR_NAMESPACE)
        data = secret.data or {}
        if data.get("tls.crt") and data.get("tls.key"):
            WEBHOOK_CERT_DIR.mkdir(parents=True, exist_ok=True)
            for key, value in data.items():
                (WEBHOOK_CERT_DIR / key).write_bytes(base64.b64decode(value))
            return
        time.sleep(0.5)
    raise RuntimeError("training-operator did not fill its webhook certificate Secret in time")


def training_operator_service(layout: Layout, binaries: dict[str, Path]) -> Service:
    ports = layout.ports
    return Service(
        name="training-operator",
        binary=binaries["training-operator"],
        args=[
            f"--metrics-bind-address=127.0.0.1:{ports['training-operator-metrics']}",
            f"--health-probe-bind-address=127.0.0.1:{ports['training-operator-health']}",
            f"--webhook-server-port={ports['training-operator-webhook']}",
            "--enable-scheme=tfjob",
            "--controller-threads=4",
            f"--kubeconfig={layout.kubeconfig('learning')}",
        ],
        run_dir=layout.root,
        health_url=f"http://127.0.0.1:{ports['training-operator-health']}/readyz",
        env={"MY_POD_NAMESPACE": TRAINING_OPERATOR_NAMESPACE},
    )


# --- S3 and registry ----------------------------------------------------------------------

def minio_service(layout: Layout, binaries: dict[str, Path]) -> Service:
    port = layout.ports["minio"]
    return Service(
        name="minio",
        binary=binaries["minio"],
        args=["server", str(layout.root / "minio-data"), "--address", f"127.0.0.1:{port}",
              "--console-address", f"127.0.0.1:{layout.ports['minio-console']}", "--quiet"],
        run_dir=layout.root,
        health_url=f"http://127.0.0.1:{port}/minio/health/live",
        env={"MINIO_ROOT_USER": S3_ACCESS_KEY, "MINIO_ROOT_PASSWORD": S3_SECRET_KEY,
             "MINIO_BROWSER": "off", "MINIO_UPDATE": "off"},
    )


def _write_registry_config(layout: Layout) -> None:
    (layout.root / "registry.yaml").write_text(yaml.safe_dump({
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(layout.root / "registry-data")},
                    "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{layout.ports['registry']}"},
    }))


def registry_service(layout: Layout, binaries: dict[str, Path]) -> Service:
    port = layout.ports["registry"]
    config = layout.root / "registry.yaml"
    return Service(
        name="registry",
        binary=binaries["registry"],
        args=["serve", str(config)],
        run_dir=layout.root,
        health_url=f"http://127.0.0.1:{port}/v2/",
        env={"OTEL_TRACES_EXPORTER": "none"},
    )


def _ensure_bucket(env: DevEnvironment) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=env.s3.endpoint, aws_access_key_id=env.s3.access_key,
                      aws_secret_access_key=env.s3.secret_key, region_name=env.s3.region)
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if env.s3.model_bucket not in existing:
        s3.create_bucket(Bucket=env.s3.model_bucket)


# --- public entry points ------------------------------------------------------------------

def _server(kubeconfig: Path) -> str:
    data = yaml.safe_load(kubeconfig.read_text())
    server: str = data["clusters"][0]["cluster"]["server"]
    return server


@contextlib.contextmanager
def _exclusive() -> Iterator[None]:
    """One `up`/`down` at a time per environment: parallel test sessions share it."""
    path = state_dir().parent / f".{state_dir().name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def up(progress: Progress = _silent) -> DevEnvironment:
    """Build what is missing, start what is not running, and return the environment."""
    with _exclusive():
        return _up(progress)


def _up(progress: Progress) -> DevEnvironment:
    layout = Layout.load()
    binaries = tools.ensure_all(progress)
    _link_binaries(layout, binaries)
    restarted = set()
    for cluster in CLUSTERS:
        started_at = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
        if _cluster_up(layout, binaries, cluster, progress):
            restarted.add(cluster)
        _ensure_nodes(layout, cluster, started_at if cluster in restarted else None)
    progress("Starting MinIO and the registry")
    minio_service(layout, binaries).start()
    _write_registry_config(layout)
    registry_service(layout, binaries).start()
    env = DevEnvironment(
        learning=ClusterEndpoint(name="learning", kubeconfig=layout.kubeconfig("learning"),
                                 server=_server(layout.kubeconfig("learning"))),
        production=ClusterEndpoint(name="production",
                                   kubeconfig=layout.kubeconfig("production"),
                                   server=_server(layout.kubeconfig("production"))),
        s3=S3Endpoint(endpoint=f"http://127.0.0.1:{layout.ports['minio']}",
                      access_key=S3_ACCESS_KEY, secret_key=S3_SECRET_KEY),
        registry=f"127.0.0.1:{layout.ports['registry']}",
        bin_dir=layout.bin_dir,
    )
    _ensure_bucket(env)
    operator = training_operator_service(layout, binaries)
    if "learning" in restarted:
        # A new cluster has a new CA and a restarted one may have lost its watches: the
        # controller's health endpoint would not tell, so start it afresh.
        operator.stop()
    if not operator.healthy():
        progress("Starting the Kubeflow training-operator on the learning cluster")
        _training_operator_prerequisites(layout, binaries)
        operator.start(wait=False)
        _mount_webhook_certs(layout)
        operator.wait_healthy()
    env.save()
    return env


@dataclass
class ComponentStatus:
    cluster: str
    component: str
    pid: int | None
    endpoint: str

    @property
    def running(self) -> bool:
        return self.pid is not None


def status() -> list[ComponentStatus]:
    layout = Layout.load(create=False)
    if not (layout.root / "ports.json").exists():
        return []  # never brought up here
    binaries = _cached_binaries()
    rows: list[ComponentStatus] = []
    for cluster in CLUSTERS:
        kubeconfig = layout.kubeconfig(cluster)
        server = _server(kubeconfig) if kubeconfig.exists() else "-"
        for component, pid in cluster_pids(layout, cluster).items():
            rows.append(ComponentStatus(cluster, component, pid,
                                        server if component == "kube-apiserver" else ""))
    for service in _services(layout, binaries):
        rows.append(ComponentStatus("learning" if service.name == "training-operator"
                                    else "shared", service.name, service.pid(),
                                    service.health_url or ""))
    return rows


def _services(layout: Layout, binaries: dict[str, Path]) -> list[Service]:
    """The processes started directly (not by kwokctl), in start order."""
    if not all(name in binaries for name in ("minio", "registry", "training-operator")):
        return []  # never built, so never started
    return [minio_service(layout, binaries), registry_service(layout, binaries),
            training_operator_service(layout, binaries)]


def _cached_binaries() -> dict[str, Path]:
    paths: dict[str, Path] = {}
    for tool in tools.TOOLS:
        directory = tool.install_dir()
        for name in tool.binaries:
            if (directory / name).is_file():
                paths[name] = directory / name
    return paths


def started_pids() -> list[int]:
    """Every pid the environment started that is still alive (for `down` and its test)."""
    return [row.pid for row in status() if row.pid is not None]


def down(progress: Progress = _silent) -> None:
    """Stop every process `up` started, by pid, and delete the environment's data."""
    with _exclusive():
        _down(progress)


def _down(progress: Progress) -> None:
    layout = Layout.load(create=False)
    binaries = _cached_binaries()
    for service in reversed(_services(layout, binaries)):
        if service.pid_file.exists():
            progress(f"Stopping {service.name}")
            service.stop()
    for cluster in CLUSTERS:
        if not (layout.kwok_workdir / "clusters" / cluster).exists():
            continue
        progress(f"Deleting cluster {cluster}")
        if "kwokctl" in binaries:
            try:
                _delete_cluster(layout, binaries, cluster)
            except RuntimeError as exc:
                progress(f"kwokctl delete failed ({exc}); stopped by pid")
        for pid in cluster_pids(layout, cluster).values():
            if pid is not None:
                terminate(pid)
    shutil.rmtree(layout.root, ignore_errors=True)
    # The training-operator's certificate rotator writes its serving certs to a fixed path.
    shutil.rmtree("/tmp/k8s-webhook-server/serving-certs", ignore_errors=True)
    progress("Dev environment removed")


def restart_component(cluster: str, component: str, timeout: float = 60.0) -> int:
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
        item.decode().split("=", 1) for item in (proc / "environ").read_bytes().split(b"\0") if b"=" in item
    )
    cwd = os.readlink(proc / "cwd")
    terminate(pid)
    wait_gone([pid])
    log = (layout.kwok_workdir / "clusters" / cluster / "logs").joinpath(f"{component}.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        new = subprocess.Popen(cmdline, env=environ, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                               start_new_session=True)
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
