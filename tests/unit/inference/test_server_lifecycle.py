"""Readiness follows model load and warm-up; metrics, docs, CLI, and a real uvicorn server."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from inference_helpers import b64, jpeg

import kakehashi_inference.app as app_module
from kakehashi_inference.app import create_app
from kakehashi_inference.cli import main
from kakehashi_inference.model import LoadedModel
from kakehashi_inference.settings import Settings


def test_ready_only_after_the_model_is_loaded_and_warmed_up(
    image_model_dir: Path, image_model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()

    def slow_load(settings: Settings, threads: int) -> LoadedModel:
        release.wait(10)
        return image_model

    monkeypatch.setattr(app_module, "load_model", slow_load)
    with TestClient(create_app(Settings(model_name="tiny", model_dir=image_model_dir))) as client:
        assert client.get("/health").status_code == 200
        loading = client.get("/ready")
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        assert client.get("/v2/health/ready").status_code == 503
        refused = client.post("/v1/predict", json={"images": [{"data": b64(jpeg())}]})
        assert refused.status_code == 503
        release.set()
        deadline = time.monotonic() + 10
        while client.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        ready = client.get("/ready").json()
        assert ready["status"] == "ready" and ready["digest"] == image_model.digest


def test_a_model_that_fails_to_load_fails_liveness(tmp_path: Path) -> None:
    with TestClient(create_app(Settings(model_dir=tmp_path))) as client:
        deadline = time.monotonic() + 10
        while client.get("/health").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        health = client.get("/health")
        assert health.status_code == 503
        assert "no SavedModel" in health.json()["error"]
        assert client.get("/ready").json()["status"] == "failed"


def test_metrics_show_latency_batches_queue_and_model_digest(
    client: TestClient, image_model: LoadedModel
) -> None:
    client.post("/v1/predict", json={"images": [{"data": b64(jpeg())}] * 3})
    text = client.get("/metrics").text
    assert re.search(
        r'kakehashi_inference_request_duration_seconds_count\{code="200",method="POST",'
        r'route="/v1/predict"\} 1\.0', text)
    assert "kakehashi_inference_batch_size_bucket" in text
    assert "kakehashi_inference_queue_depth 0.0" in text
    assert f'digest="{image_model.digest}"' in text
    assert 'runtime="tflite-xnnpack"' in text
    for stage in ("decode", "queue", "predict"):
        assert f'kakehashi_inference_stage_duration_seconds_count{{stage="{stage}"}}' in text
    assert 'kakehashi_inference_images_total{outcome="predicted"} 3.0' in text


def test_openapi_documents_json_and_raw_image_bodies(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"application/json", "image/jpeg", "image/png"} <= set(body)
    assert "/v2/models/{name}/infer" in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_cli_help_lists_the_options() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for option in ("--model-dir", "--port", "--max-batch-size", "--max-wait-ms",
                   "--url-allowlist", "KAKEHASHI_MAX_BATCH_SIZE"):
        assert option in result.output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.slow
def test_kakehashi_serve_answers_over_real_http(image_model_dir: Path) -> None:
    port = _free_port()
    command = [sys.executable, "-c", "from kakehashi_inference.cli import main; main()",
               "--model-dir", str(image_model_dir), "--model-name", "tiny",
               "--host", "127.0.0.1", "--port", str(port), "--max-batch-size", "4"]
    env: dict[str, Any] = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stdout.read().decode()  # type: ignore[union-attr]
            try:
                if httpx.get(f"{base}/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        response = httpx.post(f"{base}/v1/predict?top_k=2", content=jpeg(),
                              headers={"Content-Type": "image/jpeg"})
        assert response.status_code == 200, response.text
        assert len(response.json()["images"][0]["predictions"]) == 2
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0].decode()
    assert '"message": "Loaded model"' in output  # structured JSON log lines
