"""Operators tune the server through KAKEHASHI_* variables; command-line flags win."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import kakehashi_inference.app as app_module
from kakehashi_inference.cli import main
from kakehashi_inference.settings import Settings


def test_environment_configures_batching_limits_and_allowlist() -> None:
    settings = Settings.from_env({
        "KAKEHASHI_MODEL_NAME": "resnet", "KAKEHASHI_MAX_BATCH_SIZE": "16",
        "KAKEHASHI_MAX_WAIT_MS": "2.5", "KAKEHASHI_THREADS": "3",
        "KAKEHASHI_URL_ALLOWLIST": "10.0.0.0/8, images.internal",
        "KAKEHASHI_DOWNLOAD_TIMEOUT_S": "1.5", "KAKEHASHI_MAX_IMAGES": "4",
    })
    assert settings.resolved_model_dir == Path("/models/resnet")
    assert (settings.max_batch_size, settings.max_wait_ms, settings.threads) == (16, 2.5, 3)
    assert settings.url_allowlist == ("10.0.0.0/8", "images.internal")
    assert (settings.download_timeout_s, settings.max_images) == (1.5, 4)


def test_cli_flags_override_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    captured: dict[str, Any] = {}

    def fake_create_app(settings: Settings, **_: Any) -> str:
        captured["settings"] = settings
        return "app"

    monkeypatch.setattr(app_module, "create_app", fake_create_app)
    # The CLI owns its process's logging; here it must leave pytest's handlers alone.
    monkeypatch.setattr("kakehashi_inference.logs.configure", lambda level: None)
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: captured.update(kwargs))
    monkeypatch.setenv("KAKEHASHI_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("KAKEHASHI_MAX_WAIT_MS", "5")
    result = CliRunner().invoke(main, ["--model-dir", str(tmp_path), "--port", "9000",
                                       "--max-batch-size", "4", "--url-allowlist", "127.0.0.1/32"])
    assert result.exit_code == 0, result.output
    settings = captured["settings"]
    assert settings.max_batch_size == 4 and settings.max_wait_ms == 5.0
    assert settings.model_dir == tmp_path
    assert settings.url_allowlist == ("127.0.0.1/32",)
    assert captured["port"] == 9000 and captured["workers"] == 1


def test_every_setting_reads_its_environment_variable_and_its_flag(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KAKEHASHI_ALLOW_DIGEST_MISMATCH", "true")
    monkeypatch.setenv("KAKEHASHI_RUNTIME", "compiled")
    monkeypatch.setenv("KAKEHASHI_URL_ALLOWLIST", "10.0.0.0/8,images.internal")
    settings = Settings()
    assert settings.allow_digest_mismatch and settings.runtime == "compiled"
    assert settings.url_allowlist == ("10.0.0.0/8", "images.internal")
    captured: dict[str, Any] = {}
    monkeypatch.setattr(app_module, "create_app", lambda s, **_: captured.setdefault("settings", s))
    monkeypatch.setattr("kakehashi_inference.logs.configure", lambda level: None)
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: captured.update(kwargs))
    result = CliRunner().invoke(main, ["--no-allow-digest-mismatch", "--runtime", "savedmodel",
                                       "--allow-non-finite", "--host", "127.0.0.1"])
    assert result.exit_code == 0, result.output
    flagged = captured["settings"]
    assert not flagged.allow_digest_mismatch and flagged.allow_non_finite
    assert flagged.runtime == "savedmodel" and captured["host"] == "127.0.0.1"


def test_invalid_values_are_refused_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(main, ["--max-batch-size", "0"])
    assert result.exit_code == 2 and "max_batch_size" in result.output
    result = CliRunner().invoke(main, ["--runtime", "gpu"])
    assert result.exit_code == 2 and "gpu" in result.output


def test_other_kakehashi_variables_in_the_pod_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    # The operator hands pods variables of its own (KAKEHASHI_S3_ENDPOINT ...): not errors here.
    monkeypatch.setenv("KAKEHASHI_S3_ENDPOINT", "http://minio:9000")
    monkeypatch.setenv("KAKEHASHI_PORT", "9001")
    assert Settings().port == 9001
