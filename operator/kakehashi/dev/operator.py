"""Run the operator as a local process against the dev environment (tests, benchmark, demo).

kwok's pods never execute containers, so the operator cannot run inside the local cluster the
way it runs in a real one (manifests/operator/); this starts the same `kakehashi operator run`
command as a process with the environment its Deployment would give it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx

from kakehashi.control.client import api_client
from kakehashi.dev.clusters import wait_crd_established
from kakehashi.dev.environment import DevEnvironment
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


def create_team_secrets(env: DevEnvironment, namespace: str) -> None:
    """What a team creates once in its learning namespace: the S3 keys bake Jobs read
    (`kakehashi-s3`) and the production cluster's kubeconfig for direct delivery
    (`production`). Existing ones are left as they are."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(api_client(env.learning.kubeconfig))
    for name, data in (
        ("kakehashi-s3", {"AWS_ACCESS_KEY_ID": env.s3.access_key, "AWS_SECRET_ACCESS_KEY": env.s3.secret_key}),
        ("production", {"kubeconfig": env.production.kubeconfig.read_text()}),
    ):
        try:
            core.create_namespaced_secret(namespace, client.V1Secret(
                metadata=client.V1ObjectMeta(name=name), string_data=data))
        except ApiException as error:
            if error.status != 409:
                raise


class LocalOperator:
    """`kakehashi operator run` as a child process, with its log in a file."""

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

    def peak_rss_mib(self) -> float:
        """The process's high-water resident set (VmHWM), in MiB."""
        if self.process is None:
            return 0.0
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
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
