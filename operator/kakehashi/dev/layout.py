"""Where one dev environment keeps its files, and the ports it fixed at its first `up`."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kakehashi.dev.environment import state_dir
from kakehashi.dev.processes import free_port

PORTS = ("minio", "minio-console", "registry", "training-operator-metrics",
         "training-operator-health", "training-operator-webhook",
         "kubelet-learning", "kubelet-production", "gateway", "gateway-api")


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
        for name in PORTS:
            ports.setdefault(name, 0 if not create else free_port())
        if create:
            root.mkdir(parents=True, exist_ok=True)
            ports_file.write_text(json.dumps(ports, indent=2))
        return cls(root=root, ports=ports)

    @property
    def exists(self) -> bool:
        return (self.root / "ports.json").exists()

    @property
    def kwok_workdir(self) -> Path:
        return self.root / "kwok"

    def kubeconfig(self, cluster: str) -> Path:
        return self.kwok_workdir / "clusters" / cluster / "kubeconfig.yaml"

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    def kubectl(self, cluster: str, *args: str, stdin: str | None = None) -> str:
        """Run our kubectl against `cluster`; its stdout, or RuntimeError with its stderr."""
        result = subprocess.run(
            [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig(cluster)),
             *args],
            input=stdin, capture_output=True, text=True, timeout=300,
        )
        if result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed:\n{result.stderr[-3000:]}")
        return result.stdout
