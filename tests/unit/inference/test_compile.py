"""`kakehashi compile`: SavedModel → TFLite once, parity-checked on deterministic inputs of every
serving signature, recorded in `compiled/record.json` against the model's digest; and what the
server does with a compile that failed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import kakehashi.compile as compiler
from kakehashi.compile import compile_model, probe_inputs
from kakehashi.modelformat import content_digest
from kakehashi.modelformat.compiled import (
    CompiledRecord,
    TensorSpec,
    file_sha256,
    read_record,
    source_digest,
    why_unverified,
)
from kakehashi_inference.model import load_model
from kakehashi_inference.settings import Settings


def uncompiled_copy(model_dir: Path, target: Path) -> Path:
    shutil.copytree(model_dir, target, ignore=shutil.ignore_patterns("compiled"))
    return target


def test_record_names_the_source_digest_versions_tolerances_and_parity(
    image_model_dir: Path, tmp_path: Path
) -> None:
    record = read_record(image_model_dir)
    assert record is not None and record.passed
    # The digest the trainer wrote to model.json (before any compile) is the one named.
    assert record.source_digest == content_digest(uncompiled_copy(image_model_dir, tmp_path / "m"))
    assert record.source_digest == source_digest(image_model_dir)
    import tensorflow as tf

    assert record.tensorflow_version == tf.__version__ == record.converter_version
    assert record.interpreter.startswith("ai-edge-litert ")
    assert (record.tolerance.atol, record.tolerance.rtol) == (1e-5, 1e-3)
    # Keras exports the same function twice, as `serve` and `serving_default`: both compiled.
    assert [s.name for s in record.signatures] == ["serve", "serving_default"]
    signature = record.signature("serving_default")
    assert signature is not None and signature.passed and signature.error is None
    assert signature.file == "serving_default.tflite"
    assert signature.sha256 == file_sha256(image_model_dir / "compiled" / signature.file)
    assert signature.inputs == [TensorSpec(name="keras_tensor", datatype="FP32",
                                           shape=(-1, 32, 32, 3))]
    assert signature.probe is not None and signature.probe.kind == "image"
    assert signature.max_abs_diff is not None and signature.max_abs_diff <= 1e-5 + 1e-3
    assert signature.max_rel_diff is not None
    assert why_unverified(image_model_dir, record, source_digest(image_model_dir)) is None


def test_every_signature_is_compiled_with_inputs_fitting_its_tensors(
    tabular_model_dir: Path,
) -> None:
    record = read_record(tabular_model_dir)
    assert record is not None and record.passed
    assert [s.name for s in record.signatures] == ["serving_default", "total"]
    total = record.signature("total")
    assert total is not None and total.probe is not None and total.probe.kind == "tensor"
    inputs, _ = probe_inputs(total.inputs, total.probe.seed, total.probe.batch)
    assert inputs["price"].dtype == np.float32 and inputs["quantity"].dtype == np.int64
    assert inputs["price"].shape == (3,)


def test_probe_inputs_are_deterministic() -> None:
    specs = [TensorSpec(name="x", datatype="FP32", shape=(-1, 8, 8, 3))]
    first, probe = probe_inputs(specs)
    again, _ = probe_inputs(specs)
    np.testing.assert_array_equal(first["x"], again["x"])
    assert first["x"].shape == (3, 8, 8, 3) and probe.kind == "image"
    assert first["x"].min() >= -1 and first["x"].max() <= 1


def test_a_compile_that_fails_parity_is_recorded_and_served_from_the_savedmodel(
    image_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir = uncompiled_copy(image_model_dir, tmp_path / "m")
    real = compiler.run_tflite

    def drifting(flatbuffer: bytes, signature: str, inputs: Any) -> dict[str, Any]:
        return {key: value + 0.01 for key, value in real(flatbuffer, signature, inputs).items()}

    monkeypatch.setattr(compiler, "run_tflite", drifting)
    record = compile_model(model_dir)
    assert not record.passed
    signature = record.signature("serving_default")
    assert signature is not None
    assert not signature.passed and signature.max_abs_diff is not None
    assert 0.009 < signature.max_abs_diff < 0.011
    assert signature.error is not None and "differs from the SavedModel's" in signature.error
    assert read_record(model_dir) == record
    model = load_model(Settings(model_dir=model_dir), threads=1)
    assert model.runtime == "savedmodel"  # the fallback, with TensorFlow
    with pytest.raises(Exception, match="failed its parity check"):
        load_model(Settings(model_dir=model_dir, runtime="compiled"), threads=1)


def test_a_signature_that_does_not_convert_is_a_result_not_a_crash(
    tabular_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir = uncompiled_copy(tabular_model_dir, tmp_path / "m")
    real = compiler.convert_signature

    def refuse_total(savedmodel: Path, name: str) -> bytes:
        if name == "total":
            raise RuntimeError("op not supported\nlong converter trace")
        return real(savedmodel, name)

    monkeypatch.setattr(compiler, "convert_signature", refuse_total)
    record = compile_model(model_dir)
    total = record.signature("total")
    assert not record.passed and total is not None and total.file is None
    assert total.error == "RuntimeError: op not supported"
    default = record.signature("serving_default")
    assert default is not None and default.passed


def test_recompiling_replaces_compiled_whole(image_model_dir: Path, tmp_path: Path) -> None:
    model_dir = uncompiled_copy(image_model_dir, tmp_path / "m")
    (model_dir / "compiled").mkdir()
    (model_dir / "compiled" / "stale.tflite").write_bytes(b"old")
    record = compile_model(model_dir)
    assert sorted(p.name for p in (model_dir / "compiled").iterdir()) == [
        "record.json", "serve.tflite", "serving_default.tflite"]
    assert CompiledRecord.model_validate_json(
        (model_dir / "compiled" / "record.json").read_text()) == record
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".compiled")]


def test_kakehashi_compile_command(image_model_dir: Path, tmp_path: Path) -> None:
    from kakehashi.cli import main

    runner = CliRunner()
    help_result = runner.invoke(main, ["compile", "--help"])
    assert help_result.exit_code == 0 and "--atol" in help_result.output
    model_dir = uncompiled_copy(image_model_dir, tmp_path / "m")
    result = runner.invoke(main, ["compile", str(model_dir)])
    assert result.exit_code == 0, result.output
    assert "passed" in result.output
    assert json.loads((model_dir / "compiled" / "record.json").read_text())["passed"] is True
    missing = runner.invoke(main, ["compile", str(tmp_path)])
    assert missing.exit_code == 1 and "no SavedModel" in missing.output


def test_compiling_needs_none_of_the_operators_dependencies() -> None:
    # The bake step and a notebook compile with TensorFlow but without kopf/kubernetes; the
    # server reads the record without TensorFlow.
    blocked = ("kopf", "kubernetes", "tensorflow", "boto3")
    code = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Block())
import kakehashi.compile, kakehashi.modelformat.compiled
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
