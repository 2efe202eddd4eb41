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
