"""What the benchmarks share: starting and stopping servers, the model."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def wait_ready(process: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 600,
               interval: float = 0.5) -> float:
    """Seconds until `GET /ready` answers 200 (raises if the process exits first)."""
    started = time.perf_counter()
    with httpx.Client(timeout=2) as client:
        while time.perf_counter() - started < timeout:
            if process.poll() is not None:
                raise RuntimeError(f"server exited:\n{log.read_text()[-3000:]}")
            try:
                if client.get(f"http://127.0.0.1:{port}/ready").status_code == 200:
                    return time.perf_counter() - started
            except httpx.TransportError:
                pass
            time.sleep(interval)
    process.kill()
    raise RuntimeError(f"server never became ready:\n{log.read_text()[-3000:]}")


def start(command: list[str], port: int, log: Path,
          env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a server and return once it is ready."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                               env=full_env)
    wait_ready(process, port, log)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def rss_mib(pid: int) -> float:
    """Resident memory of `pid` now, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def build_mobilenet(directory: Path, keras_file: bool = False) -> Path:
    """MobileNetV2 (`weights=None`: the real compute, nothing to download) as a SavedModel with
    its labels, and optionally as `.keras` for the naive server."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None)
    model.export(str(directory / "savedmodel"), verbose=False)
    if keras_file:
        model.save(directory / "model.keras")
    labels = [[f"n{index:08d}", f"class {index}"] for index in range(1000)]
    (directory / "labels.json").write_text(json.dumps(labels))
    return directory
