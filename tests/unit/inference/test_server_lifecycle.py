"""Readiness follows model load and warm-up; metrics, docs, CLI, and a real uvicorn server."""

from __future__ import annotations

import json
import os
import re
import shutil
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

import kakehashi_inference.server as server_module
from kakehashi.dev.processes import free_port
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

    monkeypatch.setattr(server_module, "load_model", slow_load)
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


def wait_loaded(client: TestClient) -> None:
    deadline = time.monotonic() + 60
    while client.get("/ready").json()["status"] == "loading" and time.monotonic() < deadline:
        time.sleep(0.02)


def test_health_answers_both_keys_clients_check(client: TestClient) -> None:
    # Hole 1: the design this replaces answered {"message": "OK"}, and clients check that.
    assert client.get("/health").json() == {"status": "ok", "message": "OK"}


def test_a_model_that_fails_to_load_fails_liveness_without_showing_paths(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model_dir = tmp_path / "secret-location"
    model_dir.mkdir()
    with TestClient(create_app(Settings(model_dir=model_dir))) as client:
        wait_loaded(client)
        health = client.get("/health")
        assert health.status_code == 503
        assert "no savedmodel/" in health.json()["error"]
        assert client.get("/ready").json()["status"] == "failed"
        answers = [health, client.get("/ready"), client.get("/v2/health/live"),
                   client.post("/v1/predict", json={"images": [{"data": b64(jpeg())}]})]
    # Hole 9: clients never see server paths; the log has them.
    for answer in answers:
        assert str(tmp_path) not in answer.text and "secret-location" not in answer.text
    assert answers[3].status_code == 503
    assert any(str(model_dir) in str(getattr(r, "detail", "")) or str(model_dir) in
               str(getattr(r, "model_dir", "")) for r in caplog.records)


def test_an_unexpected_load_error_is_answered_by_kind_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(settings: Settings, threads: int) -> LoadedModel:
        raise OSError(f"[Errno 13] Permission denied: '{tmp_path}/savedmodel/variables'")

    monkeypatch.setattr(server_module, "load_model", broken)
    with TestClient(create_app(Settings(model_dir=tmp_path))) as client:
        wait_loaded(client)
        health = client.get("/health")
    assert health.status_code == 503
    assert "OSError" in health.json()["error"] and str(tmp_path) not in health.text


def _copy(model_dir: Path, target: Path) -> Path:
    shutil.copytree(model_dir, target)
    return target


def test_a_digest_that_does_not_match_model_json_is_never_ready(
    image_model_dir: Path, tmp_path: Path
) -> None:
    # Hole 8: the digest is the lineage; a model that is not the recorded one is not served.
    model_dir = _copy(image_model_dir, tmp_path / "model")
    (model_dir / "model.json").write_text(json.dumps({"digest": "sha256:" + "0" * 64}))
    with TestClient(create_app(Settings(model_dir=model_dir))) as client:
        wait_loaded(client)
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert "model.json says sha256:000" in ready.json()["error"]
    with TestClient(create_app(Settings(model_dir=model_dir, allow_digest_mismatch=True))) as client:
        wait_loaded(client)
        assert client.get("/ready").status_code == 200


@pytest.mark.parametrize("manifest", [{"uri": "s3://models/m/"}, {"digest": ""}, {"digest": 7}])
def test_a_model_json_without_a_digest_is_never_ready(
    image_model_dir: Path, tmp_path: Path, manifest: dict[str, object]
) -> None:
    # Found in the audit: a model.json naming no digest was served without any check.
    model_dir = _copy(image_model_dir, tmp_path / "model")
    (model_dir / "model.json").write_text(json.dumps(manifest))
    with TestClient(create_app(Settings(model_dir=model_dir))) as client:
        wait_loaded(client)
        ready = client.get("/ready")
    assert ready.status_code == 503
    assert "model.json names no digest" in ready.json()["error"]


def test_compiled_files_that_differ_from_their_record_are_not_served(
    image_model_dir: Path, tmp_path: Path
) -> None:
    model_dir = _copy(image_model_dir, tmp_path / "model")
    flatbuffer = model_dir / "compiled" / "serving_default.tflite"
    flatbuffer.write_bytes(flatbuffer.read_bytes()[:-1] + b"\0")
    with TestClient(create_app(Settings(model_dir=model_dir))) as client:
        wait_loaded(client)
        ready = client.get("/ready")
    assert ready.status_code == 503
    assert "does not match its recorded sha256" in ready.json()["error"]


def test_a_compiled_form_made_from_other_model_files_is_not_served(
    image_model_dir: Path, tmp_path: Path
) -> None:
    # The compiled record names the digest of the files it was compiled from: a model whose
    # files changed after the compile (here its labels) is not served on the old compiled form.
    model_dir = _copy(image_model_dir, tmp_path / "model")
    labels = json.loads((model_dir / "labels.json").read_text())
    (model_dir / "labels.json").write_text(json.dumps(labels[::-1]))
    with TestClient(create_app(Settings(model_dir=model_dir))) as client:
        wait_loaded(client)
        ready = client.get("/ready")
    assert ready.status_code == 503
    assert "the compiled model cannot be served: compiled from sha256:" in ready.json()["error"]
    assert "compile again" in ready.json()["error"]
    allowed = Settings(model_dir=model_dir, allow_digest_mismatch=True)
    with TestClient(create_app(allowed)) as client:
        wait_loaded(client)
        assert client.get("/ready").json()["runtime"] == "savedmodel"  # never the stale form


def test_a_model_json_that_matches_is_served_with_its_digest(
    image_model_dir: Path, image_model: LoadedModel, tmp_path: Path
) -> None:
    model_dir = _copy(image_model_dir, tmp_path / "model")
    (model_dir / "model.json").write_text(json.dumps({"digest": image_model.digest}))
    with TestClient(create_app(Settings(model_dir=model_dir))) as client:
        wait_loaded(client)
        ready = client.get("/ready").json()
    assert ready["digest"] == image_model.digest and ready["runtime"] == "litert-compiled"


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
    assert 'runtime="litert-compiled"' in text
    for stage in ("decode", "queue", "predict"):
        assert f'kakehashi_inference_stage_duration_seconds_count{{stage="{stage}"}}' in text
    assert 'kakehashi_inference_images_total{outcome="predicted"} 3.0' in text


def test_openapi_documents_json_and_raw_image_bodies(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"application/json", "image/jpeg", "image/png"} <= set(body)
    assert "/v2/models/{name}/infer" in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_cli_help_lists_every_setting_with_its_env_and_real_default() -> None:
    result = CliRunner().invoke(main, ["--help"], terminal_width=1000)
    assert result.exit_code == 0
    help_text = " ".join(result.output.split())
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in help_text
        assert f"env KAKEHASHI_{name.upper()}" in help_text
    # The defaults shown are the ones in force (the help once said 8 while the server used 16).
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert f"KAKEHASHI_MAX_BATCH_SIZE; default {defaults.max_batch_size}]" in help_text
    assert f"KAKEHASHI_MAX_IMAGES; default {defaults.max_images}]" in help_text
    assert f"KAKEHASHI_DOWNLOAD_TIMEOUT_S; default {defaults.download_timeout_s}]" in help_text
    assert f"KAKEHASHI_PORT; default {defaults.port}]" in help_text
    assert "KAKEHASHI_MAX_BATCH_SIZE; default 16]" in help_text


def _serve(model_dir: Path, output: Path, *flags: str) -> tuple[subprocess.Popen[bytes], str]:
    """`kakehashi-serve` on `model_dir` in its own process, once it is ready; and its URL.
    Its stdout and stderr go to `output` (a pipe nobody reads while it starts could fill)."""
    port = free_port()
    command = [sys.executable, "-c", "from kakehashi_inference.cli import main; main()",
               "--model-dir", str(model_dir), "--model-name", "tiny",
               "--host", "127.0.0.1", "--port", str(port), *flags]
    env: dict[str, Any] = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with output.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(output.read_text())
        try:
            if httpx.get(f"{base}/ready").status_code == 200:
                return process, base
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"kakehashi-serve did not turn ready in 300 s:\n{output.read_text()}")


def _stop(process: subprocess.Popen[bytes], output: Path) -> str:
    process.terminate()
    process.wait(timeout=30)
    return output.read_text()


@pytest.mark.slow
def test_kakehashi_serve_answers_over_real_http(image_model_dir: Path, tmp_path: Path) -> None:
    process, base = _serve(image_model_dir, tmp_path / "log", "--max-batch-size", "4")
    try:
        response = httpx.post(f"{base}/v1/predict?top_k=2", content=jpeg(),
                              headers={"Content-Type": "image/jpeg"})
        assert response.status_code == 200, response.text
        assert len(response.json()["images"][0]["predictions"]) == 2
    finally:
        output = _stop(process, tmp_path / "log")
    assert '"message": "Loaded model"' in output  # structured JSON log lines


@pytest.mark.slow
def test_the_full_images_savedmodel_path_logs_nothing_alarming_on_cpu(
    image_model_dir: Path, tmp_path: Path
) -> None:
    # Hole 11 end to end: the server on the SavedModel (TensorFlow, the full image's fallback),
    # on this node without a GPU. The CUDA build logs `E0000 ... failed call to cuInit` at
    # error level when TensorFlow looks for GPUs; nothing the server logs may be an error.
    process, base = _serve(image_model_dir, tmp_path / "log", "--runtime", "savedmodel")
    try:
        assert httpx.get(f"{base}/ready").json()["runtime"] == "savedmodel"
        response = httpx.post(f"{base}/v1/predict", content=jpeg(),
                              headers={"Content-Type": "image/jpeg"})
        assert response.status_code == 200, response.text
    finally:
        output = _stop(process, tmp_path / "log")
    assert '"message": "Loaded model"' in output
    assert "cuInit" not in output and "cuda" not in output.lower(), output[-3000:]
    assert not re.search(r"^E\d{4} ", output, re.M), output[-3000:]
    assert '"level": "error"' not in output, output[-3000:]


def _imports(module: str) -> set[str]:
    import ast

    import kakehashi_inference

    source = Path(kakehashi_inference.__file__).parent / f"{module}.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_v1_and_v2_share_the_server_module_and_not_each_other() -> None:
    v1, v2 = _imports("v1"), _imports("v2")
    assert "kakehashi_inference.server" in v1 and "kakehashi_inference.server" in v2
    assert "kakehashi_inference.v2" not in v1 and "kakehashi_inference.v1" not in v2
    assert "kakehashi_inference.app" not in v1 | v2 | _imports("server")


def test_errors_become_answers_in_one_place() -> None:
    import kakehashi_inference

    package = Path(kakehashi_inference.__file__).parent
    handlers = sorted(path.name for path in package.glob("*.py")
                      if "exception_handler" in path.read_text())
    assert handlers == ["http_errors.py"]
