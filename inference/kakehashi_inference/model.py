"""The served model: loaded from a SavedModel directory, run through TFLite + XNNPACK or the
signature's concrete function, never through `keras.Model.predict`.

`predict()` rebuilds its data pipeline and dispatch on each call, which costs more than the
arithmetic of one MobileNetV2 image; a concrete function skips that, and TFLite's XNNPACK
kernels are faster again on CPU. The TFLite form is produced here, at load time, from the same
SavedModel, and is only used when its outputs match the SavedModel's within tolerance.
"""

from __future__ import annotations

import importlib
import json
import logging
import queue
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from kakehashi.modelformat import LABELS_FILE, MODEL_MANIFEST, SAVEDMODEL_DIR, content_digest
from kakehashi_inference.errors import InvalidInput
from kakehashi_inference.settings import Settings

log = logging.getLogger(__name__)

SERVING_SIGNATURE = "serving_default"
Array = npt.NDArray[Any]

# Open Inference Protocol v2 datatypes and their numpy equivalents.
V2_DATATYPES: dict[str, str] = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32",
    "UINT64": "uint64", "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64",
}
NUMPY_TO_V2 = {numpy_name: v2 for v2, numpy_name in V2_DATATYPES.items()}


@dataclass(frozen=True)
class Label:
    category: str
    name: str


@dataclass(frozen=True)
class TensorInfo:
    name: str
    datatype: str  # v2 name: FP32, INT64 ...
    shape: tuple[int, ...]  # -1 where the model accepts any size

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        return np.dtype(V2_DATATYPES[self.datatype])


@dataclass(frozen=True)
class Signature:
    name: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]


@dataclass(frozen=True)
class ImageSpec:
    """What `/v1/predict` feeds the default signature: one NHWC float tensor."""

    height: int
    width: int
    channels: int
    classes: int


def load_labels(path: Path) -> list[Label] | None:
    """Labels from `labels.json`, in any of the shapes training code commonly writes.

    Accepted: `["tench", ...]`; `[["n01440764", "tench"], ...]`;
    `[{"category": ..., "name": ...}, ...]`; Keras' `{"0": ["n01440764", "tench"], ...}`;
    `{"0": "tench", ...}`. Missing file: None (classes are then named by index).
    """
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    if isinstance(raw, dict):
        raw = [raw[key] for key in sorted(raw, key=int)]
    labels: list[Label] = []
    for entry in raw:
        if isinstance(entry, str):
            labels.append(Label(entry, entry))
        elif isinstance(entry, list | tuple) and len(entry) == 2:
            labels.append(Label(str(entry[0]), str(entry[1])))
        elif isinstance(entry, dict):
            category = str(entry.get("category", entry.get("id", entry.get("name"))))
            labels.append(Label(category, str(entry.get("name", category))))
        else:
            raise ValueError(f"{path}: cannot read label {entry!r}")
    return labels


def _tensor_info(name: str, spec: Any) -> TensorInfo:
    dtype = np.dtype(spec.dtype.as_numpy_dtype).name
    if dtype not in NUMPY_TO_V2:
        raise ValueError(f"tensor {name!r} has non-numeric dtype {dtype}")
    shape = tuple(-1 if dim is None else int(dim) for dim in spec.shape.as_list())
    return TensorInfo(name, NUMPY_TO_V2[dtype], shape)


def _signature(name: str, function: Any) -> Signature:
    _, kwargs = function.structured_input_signature
    outputs = function.structured_outputs
    return Signature(
        name,
        tuple(_tensor_info(key, spec) for key, spec in sorted(kwargs.items())),
        tuple(_tensor_info(key, spec) for key, spec in sorted(outputs.items())),
    )


def _image_spec(signature: Signature) -> ImageSpec | None:
    """The default signature read as an image classifier, if it is one."""
    if len(signature.inputs) != 1 or not signature.outputs:
        return None
    shape = signature.inputs[0].shape
    if signature.inputs[0].datatype != "FP32" or len(shape) != 4:
        return None
    _, height, width, channels = shape
    if height <= 0 or width <= 0 or channels not in (1, 3):
        return None
    scores = [output for output in signature.outputs if len(output.shape) == 2]
    if len(scores) != 1 or scores[0].shape[1] <= 0:
        return None
    return ImageSpec(height, width, channels, scores[0].shape[1])


class TFLiteRunner:
    """The default signature as a TFLite flatbuffer run by XNNPACK, on `workers` threads.

    Resizing an interpreter's input re-plans its memory and re-packs XNNPACK weights (tens of
    milliseconds for MobileNetV2), far too slow per batch. So each worker keeps one interpreter
    per power of two up to the largest batch, and a batch of 7 runs as 4 + 2 + 1: no padding
    is computed.

    Workers are independent interpreter sets, each on `threads // workers` threads, that run
    batches side by side. One worker per CPU beats one interpreter spread over all CPUs under
    load: a multi-threaded op waits for its slowest thread, and any other work on the machine
    (decoding, the event loop, a noisy neighbour) makes some thread the slow one every time.
    """

    def __init__(self, flatbuffer: bytes, max_batch_size: int, threads: int, workers: int) -> None:
        self._flatbuffer = flatbuffer
        workers = max(1, min(workers, threads))
        self.workers = workers
        per_worker = max(1, threads // workers)
        self._free: queue.SimpleQueue[dict[int, Any]] = queue.SimpleQueue()
        for _ in range(workers):
            interpreters = {}
            size = 1
            while size <= max_batch_size:
                interpreters[size] = self._make(size, per_worker)
                size *= 2
            self._free.put(interpreters)

    def _make(self, batch: int, threads: int) -> Any:
        interpreter = _interpreter_class()(model_content=self._flatbuffer, num_threads=threads)
        detail = interpreter.get_input_details()[0]
        shape = list(detail["shape"])
        shape[0] = batch
        interpreter.resize_tensor_input(detail["index"], shape, strict=False)
        interpreter.allocate_tensors()
        return interpreter

    def __call__(self, batch: Array) -> Array:
        interpreters = self._free.get()  # blocks only if callers outnumber workers
        try:
            outputs: list[Array] = []
            start = 0
            while start < len(batch):
                size = max(s for s in interpreters if s <= len(batch) - start)
                interpreter = interpreters[size]
                interpreter.set_tensor(
                    interpreter.get_input_details()[0]["index"], batch[start:start + size]
                )
                interpreter.invoke()
                # Copy: the interpreter reuses its output buffer on the next invoke.
                outputs.append(
                    np.array(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
                )
                start += size
            return np.concatenate(outputs)
        finally:
            self._free.put(interpreters)


def _interpreter_class() -> Any:
    # LiteRT is TFLite's maintained home; tf.lite.Interpreter is deprecated but kept as a
    # fallback so an image with TensorFlow alone still serves.
    try:
        return importlib.import_module("ai_edge_litert.interpreter").Interpreter
    except ImportError:  # pragma: no cover - depends on the image
        import tensorflow as tf

        return tf.lite.Interpreter


@dataclass
class LoadedModel:
    """A model ready to answer: its signatures, labels, digest and the runner in use."""

    name: str
    directory: Path
    digest: str
    signatures: dict[str, Signature]
    labels: list[Label] | None
    image: ImageSpec | None
    runtime: str  # "tflite-xnnpack" | "savedmodel" (what classify() runs)
    parallel_calls: int  # classify() calls that make progress side by side
    tflite_max_abs_diff: float | None
    _functions: dict[str, Any] = field(repr=False)
    _classify: Callable[[Array], Array] | None = field(repr=False)

    def classify(self, batch: Array) -> Array:
        """Class scores for a NHWC float32 batch (runs on a worker thread, never the loop)."""
        if self._classify is None:
            raise RuntimeError("not an image classifier")
        return self._classify(batch)

    def infer(self, signature: str, inputs: dict[str, Array]) -> dict[str, Array]:
        """Run any signature on numpy inputs already checked against its `Signature`."""
        import tensorflow as tf

        function = self._functions[signature]
        result = function(**{name: tf.constant(value) for name, value in inputs.items()})
        return {name: np.asarray(tensor) for name, tensor in result.items()}

    def label(self, index: int) -> Label:
        if self.labels is not None and index < len(self.labels):
            return self.labels[index]
        return Label(str(index), str(index))

    def warm_up(self, max_batch_size: int) -> None:
        """Run every interpreter of every worker once, so no client pays for lazy set-up."""
        if self.image is not None and self._classify is not None:
            # 2n - 1 images run through every power-of-two interpreter up to n; successive
            # calls land on successive workers.
            count = 2 * max(1, max_batch_size) - 1
            shape = (count, self.image.height, self.image.width, self.image.channels)
            for _ in range(self.parallel_calls):
                self._classify(np.zeros(shape, np.float32))


def load_model(settings: Settings, threads: int) -> LoadedModel:
    """Load, convert (TFLite) and check the model under `settings.resolved_model_dir`."""
    started = time.monotonic()
    directory = settings.resolved_model_dir
    savedmodel = directory / SAVEDMODEL_DIR
    if not savedmodel.is_dir():
        raise FileNotFoundError(f"no SavedModel at {savedmodel}")

    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, threads // 2))
    except RuntimeError:
        # TensorFlow fixes its pools at its first op; a second model in the same process (or a
        # notebook that already ran TensorFlow) keeps them, which is harmless.
        pass

    loaded = tf.saved_model.load(str(savedmodel))
    functions = dict(loaded.signatures)
    if not functions:
        raise ValueError(f"{savedmodel} has no signatures to serve")
    signatures = {}
    for name, function in functions.items():
        try:
            signatures[name] = _signature(name, function)
        except ValueError as error:
            log.warning("Skipped signature", extra={"signature": name, "reason": str(error)})
    functions = {name: functions[name] for name in signatures}
    default = signatures.get(SERVING_SIGNATURE)
    image = _image_spec(default) if default is not None else None

    classify: Callable[[Array], Array] | None = None
    runtime = "savedmodel"
    parallel_calls = 1  # TensorFlow already spreads one call over its intra-op threads
    max_diff: float | None = None
    if image is not None and default is not None:
        concrete = functions[SERVING_SIGNATURE]
        input_name = default.inputs[0].name
        output_name = next(o.name for o in default.outputs if len(o.shape) == 2)

        def run_concrete(batch: Array) -> Array:
            return np.asarray(concrete(**{input_name: tf.constant(batch)})[output_name])

        classify = run_concrete
        if settings.runtime in ("auto", "tflite"):
            try:
                runner, max_diff = _tflite_runner(
                    savedmodel, run_concrete, image, settings, threads
                )
                classify, runtime, parallel_calls = runner, "tflite-xnnpack", runner.workers
            except Exception as error:
                if settings.runtime == "tflite":
                    raise
                log.warning(
                    "Fell back to the SavedModel's concrete function",
                    extra={"reason": str(error)},
                )

    labels = load_labels(directory / LABELS_FILE)
    if labels is not None and image is not None and len(labels) != image.classes:
        raise ValueError(
            f"{directory / LABELS_FILE} has {len(labels)} labels, the model {image.classes} classes"
        )
    digest = content_digest(directory)
    _check_manifest(directory, digest)
    model = LoadedModel(
        name=settings.model_name, directory=directory, digest=digest, signatures=signatures,
        labels=labels, image=image, runtime=runtime, parallel_calls=parallel_calls,
        tflite_max_abs_diff=max_diff,
        _functions=functions, _classify=classify,
    )
    model.warm_up(settings.max_batch_size)
    log.info(
        "Loaded model",
        extra={
            "model": model.name, "digest": digest, "runtime": runtime, "threads": threads,
            "parallel_calls": parallel_calls,
            "signatures": sorted(signatures), "tflite_max_abs_diff": max_diff,
            "seconds": round(time.monotonic() - started, 2),
        },
    )
    return model


def _tflite_runner(
    savedmodel: Path,
    reference: Callable[[Array], Array],
    image: ImageSpec,
    settings: Settings,
    threads: int,
) -> tuple[TFLiteRunner, float]:
    """Convert the default signature to TFLite; refuse it if it disagrees with the SavedModel."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(
        str(savedmodel), signature_keys=[SERVING_SIGNATURE]
    )
    workers = settings.model_workers or threads
    runner = TFLiteRunner(converter.convert(), settings.max_batch_size, threads, workers)
    # Inputs spread like real preprocessed pixels, 3 images so the batch path is checked too.
    rng = np.random.default_rng(0)
    probe = rng.uniform(-1, 1, (3, image.height, image.width, image.channels)).astype(np.float32)
    expected, actual = reference(probe), runner(probe)
    max_diff = float(np.max(np.abs(expected - actual)))
    if not np.allclose(actual, expected, rtol=settings.tflite_rtol, atol=settings.tflite_atol):
        raise ValueError(
            f"TFLite outputs differ from the SavedModel's by up to {max_diff:.3g} "
            f"(atol {settings.tflite_atol}, rtol {settings.tflite_rtol})"
        )
    return runner, max_diff


def _check_manifest(directory: Path, digest: str) -> None:
    manifest = directory / MODEL_MANIFEST
    if not manifest.exists():
        return
    recorded = json.loads(manifest.read_text()).get("digest")
    if recorded and recorded != digest:
        log.warning(
            "Model files differ from model.json",
            extra={"recorded_digest": recorded, "digest": digest},
        )


def check_inputs(signature: Signature, inputs: dict[str, Array]) -> None:
    """Refuse inputs that do not fit the signature, naming the tensor and the mismatch."""
    expected = {tensor.name: tensor for tensor in signature.inputs}
    missing = sorted(set(expected) - set(inputs))
    unknown = sorted(set(inputs) - set(expected))
    if missing or unknown:
        raise InvalidInput(
            f"signature {signature.name!r} takes inputs {sorted(expected)}; "
            f"missing {missing}, unknown {unknown}"
        )
    for name, value in inputs.items():
        if not _shape_fits(expected[name].shape, value.shape):
            raise InvalidInput(
                f"input {name!r} has shape {list(value.shape)}, "
                f"the model takes {list(expected[name].shape)} (-1: any size)"
            )


def _shape_fits(expected: Sequence[int], actual: Sequence[int]) -> bool:
    return len(expected) == len(actual) and all(
        e in (-1, a) for e, a in zip(expected, actual, strict=True)
    )
