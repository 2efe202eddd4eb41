"""Stand in for the kubelet where kwok cannot: run a training pod's container as a local process.

kwok's pods go Running without executing anything. To train for real on the local clusters,
the container of a Job is run here with exactly the Job's environment (Secret references
resolved as the kubelet resolves them) and arguments, then the pod is let go so kwok completes
it (the `kwok.kakehashi.dev/outcome: run` annotation held it Running meanwhile).
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from kubernetes import client

HOLD: dict[str, str] = {"kwok.kakehashi.dev/outcome": "run"}


def container_env(core: client.CoreV1Api, namespace: str, env: list[Any]) -> dict[str, str]:
    resolved: dict[str, str] = {}
    for var in env or []:
        ref = var.value_from.secret_key_ref if var.value_from else None
        if ref is not None:
            try:
                secret = core.read_namespaced_secret(ref.name, namespace)
            except client.exceptions.ApiException:
                if ref.optional:
                    continue
                raise
            if secret.data and ref.key in secret.data:
                resolved[var.name] = base64.b64decode(secret.data[ref.key]).decode()
        elif var.value is not None:
            resolved[var.name] = var.value
    return resolved


def run_job_container(
    api: client.ApiClient, namespace: str, job_name: str, cwd: Path, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run the Job's first container locally; `python` is this interpreter (the notebook image's)."""
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    container = batch.read_namespaced_job(job_name, namespace).spec.template.spec.containers[0]
    env = container_env(core, namespace, container.env)
    env.update(PATH=os.environ.get("PATH", ""), HOME=os.environ.get("HOME", "/tmp"))
    command = list(container.command or [])
    if command and command[0] in ("python", "python3"):
        command[0] = sys.executable
    return subprocess.run(
        [*command, *(container.args or [])], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def release_pods(api: client.ApiClient, namespace: str, label_selector: str) -> None:
    """Drop the hold annotation so kwok completes the pods, as the process exiting 0 would."""
    core = client.CoreV1Api(api)
    for pod in core.list_namespaced_pod(namespace, label_selector=label_selector).items:
        core.patch_namespaced_pod(
            pod.metadata.name, namespace, {"metadata": {"annotations": dict.fromkeys(HOLD)}}
        )
