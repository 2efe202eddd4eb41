"""Compile a model once: SavedModel → TFLite, parity-checked, written beside the SavedModel.

`kakehashi compile MODEL_DIR` and the ModelService bake step call `compile_model`. Every serving
signature is converted on its own (one `.tflite` each, so each file is a single-signature model
any TFLite runtime loads the same way), then run by LiteRT on deterministic inputs and compared
with the SavedModel's concrete function on the same inputs. The result is `compiled/` with the
flatbuffers and `record.json` (`kakehashi.modelformat.compiled.CompiledRecord`): versions,
tolerances, max abs/rel differences, the inputs used, pass or fail. A model that does not
convert or fails parity still gets its record (passed: false): the server then falls back to
the SavedModel and says why.

TensorFlow is imported only when a function here runs, never at import.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from kakehashi.modelformat import COMPILED_DIR, SAVEDMODEL_DIR, now_rfc3339
from kakehashi.modelformat.compiled import (
    RECORD_FILE,
    CompiledRecord,
    CompiledSignature,
    ParityProbe,
    TensorSpec,
    Tolerance,
    source_digest,
)
from kakehashi.modelformat.digest import file_sha256

log = logging.getLogger(__name__)

Array = npt.NDArray[Any]

DEFAULT_ATOL = 1e-5
DEFAULT_RTOL = 1e-3
PROBE_SEED = 0
PROBE_BATCH = 3  # more than one, so batched kernels are compared too
CONVERTER = "tf.lite.TFLiteConverter.from_saved_model"

NUMPY_TO_V2: dict[str, str] = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64",
}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


# What a CUDA build of TensorFlow writes on a machine without a GPU: not errors, but one of them
# is logged at error level (`E0000 ... failed call to cuInit`) before TensorFlow's own log
# level applies, which pages whoever watches error logs. Dropped only while TensorFlow starts.
_CPU_ONLY_NOISE = (
    "failed call to cuInit",
    "Could not find cuda drivers",
    "All log messages before absl::InitializeLog() is called",
    "cpu_feature_guard",
    "rebuild TensorFlow with the appropriate compiler flags",
    "oneDNN custom operations are on",
    "Unable to register cu",
    "TF-TRT Warning",
    "computation placer already registered",
)


class CompileError(Exception):
    """The model cannot be compiled at all (no SavedModel, no servable signature)."""


@dataclass(frozen=True)
class SavedModelSignature:
    """A SavedModel signature: its concrete function and its tensors in v2 terms."""

    name: str
    function: Any
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def import_tensorflow() -> Any:
    """TensorFlow, imported and its devices found without alarming lines on CPU-only nodes.

    The import and the device discovery (where the CUDA build calls `cuInit`) run with the
    process's stderr captured; what they wrote is written back without the CPU-only noise
    above, so a real error still shows. Raises ImportError where TensorFlow is not installed.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _stderr_without(_CPU_ONLY_NOISE):
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
    log.info("TensorFlow %s on %s", tf.__version__, f"{len(gpus)} GPU(s)" if gpus else "CPU")
    return tf


@contextlib.contextmanager
def _stderr_without(noise: tuple[str, ...]) -> Iterator[None]:
    try:
        stderr = sys.__stderr__.fileno() if sys.__stderr__ is not None else 2
        saved = os.dup(stderr)
    except (OSError, ValueError):  # no real stderr (embedded): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as captured:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(captured.fileno(), stderr)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, stderr)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().splitlines(keepends=True)
                    if not any(marker.encode() in line for marker in noise)]
            if kept:
                os.write(stderr, b"".join(kept))


def tensor_spec(name: str, spec: Any) -> TensorSpec:
    """A TensorFlow TensorSpec as a v2 `TensorSpec`; ValueError for non-numeric tensors."""
    dtype = np.dtype(spec.dtype.as_numpy_dtype).name
    if dtype not in NUMPY_TO_V2:
        raise ValueError(f"tensor {name!r} has non-numeric dtype {dtype}")
    shape = tuple(-1 if dim is None else int(dim) for dim in spec.shape.as_list())
    return TensorSpec(name=name, datatype=NUMPY_TO_V2[dtype], shape=shape)  # type: ignore[arg-type]


def savedmodel_signatures(loaded: Any) -> tuple[dict[str, SavedModelSignature], dict[str, str]]:
    """The servable signatures of a loaded SavedModel, and why the others were skipped."""
    signatures: dict[str, SavedModelSignature] = {}
    skipped: dict[str, str] = {}
    for name, function in dict(loaded.signatures).items():
        _, kwargs = function.structured_input_signature
        try:
            inputs = tuple(tensor_spec(key, spec) for key, spec in sorted(kwargs.items()))
            outputs = tuple(
                tensor_spec(key, spec) for key, spec in sorted(function.structured_outputs.items())
            )
        except ValueError as error:
            skipped[name] = str(error)
            continue
        signatures[name] = SavedModelSignature(name, function, inputs, outputs)
    return signatures, skipped


def is_image_input(inputs: tuple[TensorSpec, ...] | list[TensorSpec]) -> bool:
    """One NHWC float input with a fixed size and 1 or 3 channels: what an image model takes."""
    if len(inputs) != 1 or inputs[0].datatype != "FP32" or len(inputs[0].shape) != 4:
        return False
    _, height, width, channels = inputs[0].shape
    return height > 0 and width > 0 and channels in (1, 3)


def probe_inputs(
    inputs: tuple[TensorSpec, ...] | list[TensorSpec], seed: int = PROBE_SEED,
    batch: int = PROBE_BATCH,
) -> tuple[dict[str, Array], ParityProbe]:
    """Deterministic inputs for a signature: images for an image model, else random tensors.

    Images are photo-like (smooth gradients and discs, as a camera sees), scaled to [-1, 1],
    plus one of uniform noise; other float tensors are uniform(-1, 1), integers [0, 10).
    Every -1 dimension gets `batch`.
    """
    rng = np.random.default_rng(seed)
    if is_image_input(inputs):
        spec = inputs[0]
        _, height, width, channels = spec.shape
        images = [_photo_like(rng, height, width, channels) for _ in range(batch - 1)]
        images.append(rng.uniform(-1, 1, (height, width, channels)).astype(np.float32))
        probe = ParityProbe(seed=seed, batch=batch, kind="image",
                            distribution="photo-like images in [-1, 1], one of uniform noise")
        return {spec.name: np.stack(images)}, probe
    values: dict[str, Array] = {}
    for spec in inputs:
        shape = tuple(batch if dim == -1 else dim for dim in spec.shape)
        dtype = np.dtype(_V2_TO_NUMPY[spec.datatype])
        if dtype.kind == "f":
            values[spec.name] = rng.uniform(-1, 1, shape).astype(dtype)
        elif dtype.kind == "b":
            values[spec.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            values[spec.name] = rng.integers(0, 10, shape).astype(dtype)
    probe = ParityProbe(seed=seed, batch=batch, kind="tensor",
                        distribution="float uniform(-1, 1), integers [0, 10), bools 0/1")
    return values, probe


_V2_TO_NUMPY = {v2: numpy_name for numpy_name, v2 in NUMPY_TO_V2.items()}


def _photo_like(rng: np.random.Generator, height: int, width: int, channels: int) -> Array:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    x, y = x / max(1, width - 1), y / max(1, height - 1)
    image = np.empty((height, width, channels), np.float32)
    for channel in range(channels):
        a, b, c = rng.uniform(-1, 1, 3)
        image[..., channel] = 0.5 + 0.4 * (a * x + b * y + c * x * y)
    for _ in range(4):
        cx, cy, radius = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.1, 0.3)
        inside = (x - cx) ** 2 + (y - cy) ** 2 < radius**2
        image[inside] = rng.uniform(0, 1, channels)
    return np.clip(image, 0, 1) * 2 - 1


def compare(expected: Mapping[str, Array], actual: Mapping[str, Array], atol: float,
            rtol: float) -> tuple[float, float, bool, str | None]:
    """Max abs and rel difference over every output, whether all are within tolerance, why not."""
    max_abs = max_rel = 0.0
    problem: str | None = None
    for name, reference in expected.items():
        if name not in actual:
            return float("inf"), float("inf"), False, f"output {name!r} is missing"
        got = np.asarray(actual[name])
        reference = np.asarray(reference)
        if got.shape != reference.shape:
            return (float("inf"), float("inf"), False,
                    f"output {name!r} has shape {list(got.shape)}, expected {list(reference.shape)}")
        diff = np.abs(got.astype(np.float64) - reference.astype(np.float64))
        scale = np.maximum(np.abs(reference.astype(np.float64)), np.finfo(np.float32).tiny)
        if diff.size:
            max_abs = max(max_abs, float(diff.max()))
            max_rel = max(max_rel, float((diff / scale).max()))
        if not np.allclose(got, reference, atol=atol, rtol=rtol) and problem is None:
            problem = (f"output {name!r} differs from the SavedModel's by up to "
                       f"{float(diff.max()):.3g} (atol {atol:g}, rtol {rtol:g})")
    return max_abs, max_rel, problem is None, problem


def interpreter_class() -> tuple[Any, str]:
    """LiteRT's interpreter (TFLite's maintained runtime), else TensorFlow's deprecated one."""
    try:
        module = importlib.import_module("ai_edge_litert.interpreter")
        return module.Interpreter, f"ai-edge-litert {importlib.metadata.version('ai-edge-litert')}"
    except ImportError:  # pragma: no cover - depends on the image
        import tensorflow as tf

        return tf.lite.Interpreter, f"tf.lite.Interpreter {tf.__version__}"


def run_tflite(flatbuffer: bytes, signature: str, inputs: Mapping[str, Array]) -> dict[str, Array]:
    """One call of a single-signature TFLite model on `inputs` (resized to their shapes)."""
    interpreter_type, _ = interpreter_class()
    interpreter = interpreter_type(model_content=flatbuffer, num_threads=1)
    runner = interpreter.get_signature_runner(signature)
    return {name: np.array(value) for name, value in runner(**inputs).items()}


def _file_name(name: str, index: int) -> str:
    return f"{name}.tflite" if _SAFE_NAME.match(name) and name not in (".", "..") else (
        f"signature-{index}.tflite")


def convert_signature(savedmodel: Path, name: str) -> bytes:
    tf = import_tensorflow()

    converter = tf.lite.TFLiteConverter.from_saved_model(str(savedmodel), signature_keys=[name])
    flatbuffer: bytes = converter.convert()
    return flatbuffer


def check_signature(
    signature: SavedModelSignature, flatbuffer: bytes, atol: float, rtol: float,
    seed: int = PROBE_SEED,
) -> tuple[ParityProbe, float, float, bool, str | None]:
    """Run the SavedModel and the flatbuffer on the same probe inputs and compare."""
    tf = import_tensorflow()

    inputs, probe = probe_inputs(signature.inputs, seed)
    reference = signature.function(**{key: tf.constant(value) for key, value in inputs.items()})
    expected = {key: np.asarray(value) for key, value in reference.items()}
    actual = run_tflite(flatbuffer, signature.name, inputs)
    max_abs, max_rel, passed, problem = compare(expected, actual, atol, rtol)
    return probe, max_abs, max_rel, passed, problem


def compile_model(
    model_dir: Path,
    *,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    output: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> CompiledRecord:
    """Compile `model_dir/savedmodel` into `output` (default `model_dir/compiled`).

    Returns the record, also written as `record.json` (last: its presence means complete).
    The previous `compiled/` is replaced whole only once the new one is written.
    """
    started = time.monotonic()
    say = progress or (lambda message: log.info(message))
    savedmodel = model_dir / SAVEDMODEL_DIR
    if not savedmodel.is_dir():
        raise CompileError(f"no SavedModel at {savedmodel}")
    target = output or model_dir / COMPILED_DIR
    digest = source_digest(model_dir)
    tf = import_tensorflow()

    loaded = tf.saved_model.load(str(savedmodel))
    signatures, skipped = savedmodel_signatures(loaded)
    for name, reason in skipped.items():
        say(f"skipped signature {name!r}: {reason}")
    if not signatures:
        raise CompileError(f"{savedmodel} has no signature with numeric tensors to serve")
    _, interpreter = interpreter_class()

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        entries = []
        for index, (name, signature) in enumerate(sorted(signatures.items())):
            entry = CompiledSignature(name=name, file=None, sha256=None,
                                      inputs=list(signature.inputs),
                                      outputs=list(signature.outputs), passed=False)
            try:
                say(f"converting signature {name!r}")
                flatbuffer = convert_signature(savedmodel, name)
                file = _file_name(name, index)
                (staging / file).write_bytes(flatbuffer)
                entry.file, entry.sha256 = file, file_sha256(staging / file)
                probe, max_abs, max_rel, passed, problem = check_signature(
                    signature, flatbuffer, atol, rtol
                )
                entry.probe, entry.max_abs_diff, entry.max_rel_diff = probe, max_abs, max_rel
                entry.passed, entry.error = passed, problem
            except Exception as error:  # a model that does not convert is a result, not a crash
                entry.error = f"{type(error).__name__}: {_first_line(error)}"
            say(f"signature {name!r}: {'passed' if entry.passed else 'FAILED'}"
                f" (max abs diff {entry.max_abs_diff}, max rel diff {entry.max_rel_diff})"
                + (f": {entry.error}" if entry.error else ""))
            entries.append(entry)
        record = CompiledRecord(
            source_digest=digest,
            passed=all(entry.passed for entry in entries),
            tensorflow_version=tf.__version__,
            converter=CONVERTER,
            converter_version=tf.__version__,
            interpreter=interpreter,
            tolerance=Tolerance(atol=atol, rtol=rtol),
            signatures=entries,
            created_at=now_rfc3339(),
            seconds=round(time.monotonic() - started, 2),
        )
        (staging / RECORD_FILE).write_text(record.model_dump_json(indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return record


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:500] if text else type(error).__name__
