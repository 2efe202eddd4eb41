"""The light serving image: with a verified compiled model the server runs without TensorFlow
(checked in a process where importing it fails), and the full image's TensorFlow start says
nothing alarming on a CPU-only node."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import corrupt_compiled_model

# Run in a fresh interpreter where TensorFlow (and Keras) cannot be imported, as in the light
# image: serve the model, answer v1 and v2, and report which TensorFlow modules got loaded.
LIGHT = """
import importlib.abc, json, sys, time
BLOCKED = {"tensorflow", "keras", "tf_keras", "tensorboard", "tensorflow_core"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked in the light image: " + name)
sys.meta_path.insert(0, Block())
started = time.perf_counter()
from fastapi.testclient import TestClient
from kakehashi_inference.app import create_app
from kakehashi_inference.settings import Settings
settings = Settings(model_dir=sys.argv[1], model_name="tiny", max_batch_size=4)
answers = {}
with TestClient(create_app(settings)) as client:
    while client.get("/ready").json()["status"] == "loading":
        time.sleep(0.01)
    answers["ready_s"] = time.perf_counter() - started
    answers["ready"] = client.get("/ready").json()
    answers["health"] = client.get("/health").json()
    if answers["ready"]["status"] == "ready":
        pixels = [0.0] * (32 * 32 * 3)
        answers["v2"] = client.post("/v2/models/tiny/infer", json={"inputs": [
            {"name": "keras_tensor", "shape": [1, 32, 32, 3], "datatype": "FP32",
             "data": pixels}]}).status_code
answers["tensorflow_modules"] = sorted(
    m for m in sys.modules if m.split(".")[0] in BLOCKED and sys.modules[m] is not None)
print(json.dumps(answers))
"""


def run_light(model_dir: Path) -> dict[str, object]:
    result = subprocess.run([sys.executable, "-c", LIGHT, str(model_dir)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    answers: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return answers


def test_a_compiled_model_is_served_without_tensorflow(image_model_dir: Path) -> None:
    answers = run_light(image_model_dir)
    assert answers["tensorflow_modules"] == []
    ready = answers["ready"]
    assert isinstance(ready, dict) and ready["status"] == "ready", answers
    assert ready["runtime"] == "litert-compiled"
    assert answers["v2"] == 200


def test_without_a_compiled_model_the_light_image_says_what_to_do(
    image_model_dir: Path, tmp_path: Path
) -> None:
    shutil.copytree(image_model_dir, tmp_path / "m", ignore=shutil.ignore_patterns("compiled"))
    answers = run_light(tmp_path / "m")
    assert answers["tensorflow_modules"] == []
    health = answers["health"]
    assert isinstance(health, dict)
    assert "kakehashi compile" in health["error"] and "full serving image" in health["error"]
    assert str(tmp_path) not in json.dumps(answers)


def test_a_compiled_model_the_runtime_cannot_read_never_turns_ready(
    tabular_model_dir: Path, tmp_path: Path
) -> None:
    # Its files match their recorded sha256, so every check before loading passes: only
    # building the interpreters at load can catch it (they were built on first use before).
    shutil.copytree(tabular_model_dir, tmp_path / "m")
    corrupt_compiled_model(tmp_path / "m")
    answers = run_light(tmp_path / "m")
    ready, health = answers["ready"], answers["health"]
    assert isinstance(ready, dict) and isinstance(health, dict)
    assert ready["status"] != "ready", answers
    assert "failed to load" in health["error"] and "ValueError" in health["error"], answers


@pytest.mark.slow
def test_tensorflow_starts_without_alarming_lines_on_a_cpu_node() -> None:
    # The CUDA build of TensorFlow logs `E0000 ... failed call to cuInit` at error level on a
    # node without a GPU; the full image must not page anyone for that.
    code = ("from kakehashi.compile import import_tensorflow\n"
            "tf = import_tensorflow()\n"
            "print(int(tf.constant(2) + 1))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("3")
    assert "cuInit" not in result.stderr
    assert not re.search(r"^E\d{4} ", result.stderr, re.M), result.stderr
