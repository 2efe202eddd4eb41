"""`kakehashi bake`'s command: JSON on stdout, exit codes a Job's controller can act on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from kakehashi.bake.cli import bake_command


def test_a_model_that_does_not_match_its_digest_is_refused(make_model: Any,
                                                           tmp_path: Path) -> None:
    model = make_model({"w.bin": b"weights"})
    result_file = tmp_path / "result.json"
    run = CliRunner().invoke(bake_command, [
        str(model), "--base", "127.0.0.1:1/base:v1", "--repository", "127.0.0.1:1/apps/x",
        "--service", "x", "--no-compile", "--expected-digest", "sha256:" + "0" * 64,
        "--result", str(result_file)])
    assert run.exit_code == 2
    error = json.loads(result_file.read_text())["error"]
    assert error["reason"] == "ModelDigestMismatch" and error["temporary"] is False


def test_bad_arguments_are_usage_errors(make_model: Any) -> None:
    model = make_model({"w.bin": b"weights"})
    base = ["--base", "127.0.0.1:1/base:v1", "--repository", "127.0.0.1:1/apps/x",
            "--service", "x"]
    assert CliRunner().invoke(bake_command, [str(model), *base, "--label", "novalue"]
                              ).exit_code == 2
    assert CliRunner().invoke(bake_command, [str(model), *base, "--metrics", "[1]"]
                              ).exit_code == 2
    run = CliRunner().invoke(bake_command, [str(model), "--base", "not-a-reference",
                                            "--repository", "127.0.0.1:1/apps/x",
                                            "--service", "x", "--no-compile"])
    assert run.exit_code == 2 and "must start with its registry" in run.output
