"""Run the operator against the dev environment: as a local process (`LocalOperator`: tests,
benchmark, demo), or in the learning cluster from its image (`InClusterOperator`).

The process is the same `kakehashi operator run` command with the environment its Deployment
would give it: quick to start, kill and restart, its log a file. In the cluster it is the real
thing: the image, the install's Deployment, ServiceAccount and RBAC (`in_cluster_overlay`
changes only an installation's settings), two replicas on the learning cluster's real node.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from functools import cached_property
from pathlib import Path
from typing import IO, Any, ClassVar
from urllib.parse import urlparse

import httpx
import yaml

from kakehashi.control.client import api_client
from kakehashi.dev.clusters import wait_crd_established
from kakehashi.dev.environment import DevEnvironment
from kakehashi.dev.node import SELECTOR, SERVICES_ADDRESS, TOLERATION
from kakehashi.dev.processes import free_port
from kakehashi.dev.tools import repo_root


def install_crds(env: DevEnvironment, cluster: str = "learning") -> None:
    """Server-side apply manifests/crds and wait until the API server serves them."""
    kubectl = [str(env.bin_dir / "kubectl"), "--kubeconfig", str(env.cluster(cluster).kubeconfig)]
    crds = repo_root() / "manifests" / "crds"
    subprocess.run(
        [*kubectl, "apply", "--server-side", "--field-manager=kakehashi", "--force-conflicts", "-k", str(crds)],
        check=True, capture_output=True, text=True,
    )
    wait_crd_established(api_client(env.cluster(cluster).kubeconfig), "trainingruns.kakehashi.dev")


def local_settings(env: DevEnvironment) -> dict[str, str]:
    """The operator settings this environment needs beyond the defaults (for the tests, the
    benchmarks and the demo alike): bake Jobs run in the project's training image on the real
    node and push to the local registry, which speaks plain HTTP on the bridge address."""
    settings = {"KAKEHASHI_REGISTRY_INSECURE": "true"}
    if env.real_nodes and "training" in env.images:
        settings["KAKEHASHI_BAKE_IMAGE"] = env.images["training"]
        settings["KAKEHASHI_BAKE_NODE_SELECTOR"] = "kakehashi.dev/node=real"
    return settings


OPERATOR_AWS_SECRET = "kakehashi-operator-aws"
"""The Deployment's optional Secret of S3 keys (`envFrom`), where no IAM role gives them."""


def in_cluster_overlay(
    env: DevEnvironment, image: str, directory: Path, *, extra_settings: dict[str, str] | None = None
) -> Path:
    """Write a kustomization into `directory` that installs manifests/overlays/learning on this
    environment with the operator in the cluster, on the learning cluster's real node. It
    changes only what an installation's overlay changes: the image (here, in the local
    registry), the settings ConfigMap (the local MinIO and registry, which pods reach at the
    same address as the host), the S3 keys (no IAM role here) and where the pods run (the real
    node's label and taint: kwok nodes never run containers). The Deployment, its
    ServiceAccount and its RBAC are the install's own."""
    repository, tag = image.rsplit(":", 1)
    base = os.path.relpath(repo_root() / "manifests" / "overlays" / "learning", directory)
    settings = {
        **local_settings(env),
        "KAKEHASHI_MODEL_BUCKET": env.s3.model_bucket,
        "AWS_REGION": env.s3.region,
        "AWS_ENDPOINT_URL_S3": env.s3.endpoint,
        **(extra_settings or {}),
    }
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [base],  # kustomize takes only relative paths
        "images": [{"name": "kakehashi/operator", "newName": repository, "newTag": tag}],
        "configMapGenerator": [{
            "name": "kakehashi-settings", "namespace": "kakehashi-system", "behavior": "merge",
            "literals": [f"{k}={v}" for k, v in sorted(settings.items())],
        }],
        "secretGenerator": [{
            "name": OPERATOR_AWS_SECRET, "namespace": "kakehashi-system",
            "literals": [f"AWS_ACCESS_KEY_ID={env.s3.access_key}", f"AWS_SECRET_ACCESS_KEY={env.s3.secret_key}"],
        }],
        "patches": [{
            "target": {"kind": "Deployment", "name": "kakehashi-operator"},
            "patch": yaml.safe_dump([
                {"op": "add", "path": "/spec/template/spec/nodeSelector", "value": SELECTOR},
                {"op": "add", "path": "/spec/template/spec/tolerations", "value": [TOLERATION]},
            ]),
        }],
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "kustomization.yaml"
    path.write_text(yaml.safe_dump(kustomization, sort_keys=False))
    return path


def kubeconfig_for_pods(env: DevEnvironment, cluster: str) -> str:
    """A cluster's kubeconfig as a pod on a real node can use it (an operator in the cluster
    delivering to production, say): the API server at the services address, which pods reach
    and the server's certificate names (kwokctl puts the host's addresses in it), and the
    certificates embedded instead of paths on this host."""
    data = yaml.safe_load(env.cluster(cluster).kubeconfig.read_text())
    for entry in data["clusters"]:
        port = urlparse(entry["cluster"]["server"]).port
        entry["cluster"]["server"] = f"https://{SERVICES_ADDRESS}:{port}"
    for section, fields in (("clusters", ("certificate-authority",)),
                            ("users", ("client-certificate", "client-key"))):
        for entry in data.get(section) or []:
            body = entry[section[:-1]]
            for field in fields:
                if field in body:
                    body[f"{field}-data"] = base64.b64encode(Path(body.pop(field)).read_bytes()).decode()
    return str(yaml.safe_dump(data))


def create_team_secrets(env: DevEnvironment, namespace: str, *, for_pods: bool = False) -> None:
    """What a team creates once in its learning namespace: the S3 keys bake Jobs read
    (`kakehashi-s3`) and the production cluster's kubeconfig for direct delivery
    (`production`; `for_pods`: the one an operator in the cluster can use). Existing ones are
    left as they are."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(api_client(env.learning.kubeconfig))
    production = kubeconfig_for_pods(env, "production") if for_pods else env.production.kubeconfig.read_text()
    for name, data in (
        ("kakehashi-s3", {"AWS_ACCESS_KEY_ID": env.s3.access_key, "AWS_SECRET_ACCESS_KEY": env.s3.secret_key}),
        ("production", {"kubeconfig": production}),
    ):
        try:
            core.create_namespaced_secret(namespace, client.V1Secret(
                metadata=client.V1ObjectMeta(name=name), string_data=data))
        except ApiException as error:
            if error.status != 409:
                raise


class LocalOperator:
    """`kakehashi operator run` as a child process, with its log in a file."""

    running: ClassVar[set[LocalOperator]] = set()
    """The ones started and not stopped: what must step aside while the operator runs in the
    cluster (two operators without a common leader election would both reconcile)."""
    in_cluster: ClassVar[bool] = False
    webhook_host: ClassVar[str] = "127.0.0.1"
    """Where a test's webhook receiver listens so that this operator can reach it."""

    def __init__(self, env: DevEnvironment, log_path: Path, *, extra_env: dict[str, str] | None = None) -> None:
        self.env = env
        self.log_path = log_path
        self.extra_env = extra_env or {}
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}/healthz"

    def start(self, timeout: float = 60.0) -> None:
        environ = {**os.environ, **self.env.exports(), "KAKEHASHI_RESYNC_SECONDS": "5", **self.extra_env}
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "kakehashi.cli", "operator", "run",
                "--metrics-port", str(self.metrics_port),
                "--liveness", self.health_url,
            ],
            env=environ,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        LocalOperator.running.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the operator exited with {self.process.returncode}; see {self.log_path}")
            try:
                if httpx.get(self.health_url, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"the operator did not become live in {timeout}s; see {self.log_path}")

    def logs(self) -> str:
        """The operator's log so far (as `InClusterOperator.logs`: tests read either)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def peak_rss_mib(self) -> float:
        """The process's high-water resident set (VmHWM), in MiB."""
        if self.process is None:
            return 0.0
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        LocalOperator.running.discard(self)
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self._log:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, as when a node dies under the operator."""
        self.stop(signal.SIGKILL)


OPERATOR_NAMESPACE = "kakehashi-system"
OPERATOR_NAME = "kakehashi-operator"
"""The Deployment, its ServiceAccount, and the leader Lease."""
OPERATOR_SELECTOR = "app.kubernetes.io/name=kakehashi-operator"


def operators_part(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Of an install's objects, the CRDs and the operator's own (the notebooks are not its)."""
    return [d for d in docs
            if d["kind"] == "CustomResourceDefinition"
            or (d["kind"] == "Namespace" and d["metadata"]["name"] == OPERATOR_NAMESPACE)
            or d["metadata"].get("namespace") == OPERATOR_NAMESPACE
            or (d["kind"] in ("ClusterRole", "ClusterRoleBinding") and d["metadata"]["name"] == OPERATOR_NAME)]


class InClusterOperator:
    """The operator in the learning cluster, from its image, installed through
    `in_cluster_overlay`: two replicas on the real node, one leading. The same face as
    LocalOperator (start, stop, kill, metrics_url, health_url), so the operator's cluster tests
    run against either (KAKEHASHI_TEST_OPERATOR=in-cluster, tests/cluster/conftest.py)."""

    in_cluster: ClassVar[bool] = True
    webhook_host: ClassVar[str] = SERVICES_ADDRESS  # the host and the pods reach it alike

    def __init__(self, env: DevEnvironment, directory: Path, *, settings: dict[str, str] | None = None) -> None:
        self.env = env
        self.directory = directory
        self.settings = settings or {}
        self.image = ""
        self.installed: list[dict[str, Any]] = []
        self._created: list[tuple[str, str, str | None]] = []  # (kind, name, namespace) to delete

    # -- kubectl and reads --

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        command = [str(self.env.bin_dir / "kubectl"), "--kubeconfig", str(self.env.learning.kubeconfig), *args]
        result = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=180)
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed:\n{result.stderr}")
        return result.stdout

    def build(self, directory: Path) -> list[dict[str, Any]]:
        return [d for d in yaml.safe_load_all(self.kubectl("kustomize", str(directory))) if d]

    @cached_property
    def api(self) -> Any:
        return api_client(self.env.learning.kubeconfig)

    def pods(self) -> list[Any]:
        """The operator's pods not on their way out."""
        from kubernetes import client

        found = client.CoreV1Api(self.api).list_namespaced_pod(OPERATOR_NAMESPACE, label_selector=OPERATOR_SELECTOR)
        return [p for p in found.items if p.metadata.deletion_timestamp is None]

    def ready_pods(self) -> list[Any]:
        return [p for p in self.pods() if p.status.phase == "Running"
                and all(c.ready for c in p.status.container_statuses or [])]

    def lease(self) -> Any:
        from kubernetes import client

        return client.CoordinationV1Api(self.api).read_namespaced_lease(OPERATOR_NAME, OPERATOR_NAMESPACE)

    def holder(self) -> str:
        """The identity in the leader Lease (`<pod>_<random>`), "" if none."""
        from kubernetes.client.exceptions import ApiException

        try:
            return str(self.lease().spec.holder_identity or "")
        except ApiException as error:
            if error.status == 404:
                return ""
            raise

    def leader(self) -> Any | None:
        """The Ready pod whose process holds the Lease."""
        name = self.holder().rpartition("_")[0]
        return next((p for p in self.ready_pods() if p.metadata.name == name), None)

    @staticmethod
    def health(pod: Any) -> str:
        """What the pod's liveness endpoint says: kopf's probe results on the leader, a
        {"standby": ...} answer on a standby, or why it could not be asked."""
        try:
            answer = httpx.get(f"http://{pod.status.pod_ip}:8080/healthz", timeout=5)
        except httpx.HTTPError as error:
            return f"{type(error).__name__}: {error}"
        return f"{answer.status_code} {answer.text[:200]}"

    def settled(self, timeout: float = 240.0, replicas: int = 2) -> tuple[Any, list[Any]]:
        """Wait until `replicas` pods are Ready, one of them leads with kopf answering its
        liveness probe, and the others answer as standbys: (leader, standbys)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pods, leader = self.ready_pods(), self.leader()
            if len(pods) == replicas and leader is not None:
                standbys = [p for p in pods if p.metadata.name != leader.metadata.name]
                leading = self.health(leader)
                if (leading.startswith("200 ") and "standby" not in leading
                        and all(self.health(p).startswith('200 {"standby"') for p in standbys)):
                    return leader, standbys
            time.sleep(0.5)
        raise TimeoutError(f"no {replicas} Ready operator pods with a leader after {timeout:.0f}s: "
                           f"{[(p.metadata.name, p.status.phase) for p in self.pods()]}, Lease {self.holder()!r}")

    # -- the LocalOperator face --

    @property
    def process(self) -> Any | None:
        """The leading pod, None while there is none (stopped, or between leaders)."""
        return self.leader()

    def _url(self, port: int, path: str) -> str:
        leader = self.leader()
        if leader is None:
            raise RuntimeError("no operator pod leads right now")
        return f"http://{leader.status.pod_ip}:{port}{path}"

    @property
    def metrics_url(self) -> str:
        return self._url(9090, "/metrics")

    @property
    def health_url(self) -> str:
        return self._url(8080, "/healthz")

    def start(self, timeout: float = 240.0) -> None:
        """Install (first time: build the image, cached by content) or scale back to two;
        return once one replica leads."""
        if not self.installed:
            self.install()
        else:
            self.kubectl("scale", "deployment", OPERATOR_NAME, "-n", OPERATOR_NAMESPACE, "--replicas=2")
        self.settled(timeout)

    def stop(self, timeout: float = 120.0) -> None:
        """Scale to zero (each pod stops cleanly and releases the Lease) and wait them gone."""
        self.kubectl("scale", "deployment", OPERATOR_NAME, "-n", OPERATOR_NAMESPACE, "--replicas=0")
        deadline = time.monotonic() + timeout
        while self.pods_at_all() and time.monotonic() < deadline:
            time.sleep(0.5)

    def pods_at_all(self) -> list[Any]:
        from kubernetes import client

        return list(client.CoreV1Api(self.api).list_namespaced_pod(
            OPERATOR_NAMESPACE, label_selector=OPERATOR_SELECTOR).items)

    def kill(self) -> float:
        """SIGKILL the leader's container, as a crash or a lost node does (no Lease released),
        and remove its pod at once (the kubelet would restart it in place). The wall-clock time
        of the kill; the standby takes over once the Lease runs out."""
        from kubernetes import client

        from kakehashi.dev import node

        leader = self.leader()
        if leader is None:
            raise RuntimeError("no operator pod leads: nothing to kill")
        processes = node.pod_processes("learning", leader.metadata.uid)
        if not any("operator run" in command for command in processes.values()):
            raise RuntimeError(f"the operator's process of {leader.metadata.name} is not found: {processes}")
        killed_at = time.time()
        for pid in processes:
            os.kill(pid, signal.SIGKILL)
        client.CoreV1Api(self.api).delete_namespaced_pod(leader.metadata.name, OPERATOR_NAMESPACE,
                                                         grace_period_seconds=0)
        return killed_at

    # -- install and uninstall --

    def install(self) -> None:
        from kubernetes import client

        from kakehashi.dev import stack

        self.image = stack.build_images(["operator"])["operator"]
        install_crds(self.env)
        overlay = in_cluster_overlay(self.env, self.image, self.directory, extra_settings=self.settings).parent
        docs = operators_part(self.build(overlay))
        core = client.CoreV1Api(self.api)
        rbac = client.RbacAuthorizationV1Api(self.api)
        if not any(n.metadata.name == OPERATOR_NAMESPACE for n in core.list_namespace().items):
            self._created.append(("namespace", OPERATOR_NAMESPACE, None))
        if not any(r.metadata.name == OPERATOR_NAME for r in rbac.list_cluster_role().items):
            self._created += [("clusterrolebinding", OPERATOR_NAME, None), ("clusterrole", OPERATOR_NAME, None)]
        # A Lease left by an earlier session names a process long gone: every replica would wait
        # out its duration first.
        self.kubectl("delete", "lease", OPERATOR_NAME, "-n", OPERATOR_NAMESPACE, "--ignore-not-found", check=False)
        self.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=kakehashi-dev", "-f", "-",
                     stdin=yaml.safe_dump_all(docs))
        self.installed = docs

    def logs(self) -> str:
        """Every operator pod's log, and its previous container's if it restarted."""
        parts = []
        for pod in self.pods_at_all():
            name = pod.metadata.name
            restarts = sum(c.restart_count for c in pod.status.container_statuses or [])
            parts.append(f"==== {name} (restarts {restarts}, health {self.health(pod)})")
            if restarts:
                parts.append(self.kubectl("logs", "-n", OPERATOR_NAMESPACE, name, "--previous", check=False))
                parts.append(f"---- {name}, current container")
            parts.append(self.kubectl("logs", "-n", OPERATOR_NAMESPACE, name, check=False))
        return "\n".join(parts)

    def uninstall(self) -> None:
        """Remove the Deployment (waiting for its pods: no operator may outlive this) and what
        the install created; namespaces, CRDs and RBAC that were there before stay. The pods'
        logs are kept in `directory`/pods.log."""
        if self.installed:
            (self.directory / "pods.log").write_text(self.logs())
        self.kubectl("delete", "deployment", OPERATOR_NAME, "-n", OPERATOR_NAMESPACE, "--ignore-not-found",
                     "--wait=false", check=False)
        deadline = time.monotonic() + 120
        while self.pods_at_all() and time.monotonic() < deadline:
            time.sleep(0.5)
        for d in self.installed:
            if d["metadata"].get("namespace") == OPERATOR_NAMESPACE:
                self.kubectl("delete", d["kind"].lower(), d["metadata"]["name"], "-n", OPERATOR_NAMESPACE,
                             "--ignore-not-found", "--wait=false", check=False)
        self.kubectl("delete", "lease", OPERATOR_NAME, "-n", OPERATOR_NAMESPACE, "--ignore-not-found", check=False)
        for kind, name, namespace in self._created:
            self.kubectl("delete", kind, name, *(["-n", namespace] if namespace else []), "--ignore-not-found",
                         "--wait=false", check=False)
        self.installed, self._created = [], []
