"""Model runtimes: classes with `load()` and `predict()` (and `classify()` for image models).

- `LiteRTRuntime` runs a model compiled once by `kakehashi compile` on LiteRT (XNNPACK). It
  imports LiteRT and numpy only: the light serving image has no TensorFlow.
- `SavedModelRuntime` runs the SavedModel's concrete functions on TensorFlow (the full image),
  optionally with the default signature converted to TFLite at start.

Neither goes through `keras.Model.predict`, which rebuilds its data pipeline on every call and
costs more than the arithmetic of one MobileNetV2 image.
"""

from __future__ import annotations

import logging
import queue
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from kakehashi.modelformat.compiled import CompiledRecord, TensorSpec, compiled_dir

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


class ModelLoadError(Exception):
    """The model cannot be served. `message` is safe to show clients (no server paths);
    `detail` (paths, the underlying error) goes to the log only."""

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


@dataclass(frozen=True)
class TensorInfo:
    name: str
    datatype: str  # v2 name: FP32, INT64 ...
    shape: tuple[int, ...]  # -1 where the model accepts any size

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        return np.dtype(V2_DATATYPES[self.datatype])

    @classmethod
    def of(cls, spec: TensorSpec) -> TensorInfo:
        return cls(spec.name, spec.datatype, tuple(spec.shape))


@dataclass(frozen=True)
class Signature:
    name: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]

    @classmethod
    def of(cls, name: str, inputs: Any, outputs: Any) -> Signature:
        return cls(name, tuple(TensorInfo.of(t) for t in inputs),
                   tuple(TensorInfo.of(t) for t in outputs))


@dataclass(frozen=True)
class ImageSpec:
    """What `/v1/predict` feeds the default signature: one NHWC float tensor."""

    height: int
    width: int
    channels: int
    classes: int
    input_name: str = "input"
    output_name: str = "output"


def image_spec(signature: Signature | None) -> ImageSpec | None:
    """The default signature read as an image classifier, if it is one."""
    if signature is None or len(signature.inputs) != 1 or not signature.outputs:
        return None
    tensor = signature.inputs[0]
    if tensor.datatype != "FP32" or len(tensor.shape) != 4:
        return None
    _, height, width, channels = tensor.shape
    if height <= 0 or width <= 0 or channels not in (1, 3):
        return None
    scores = [output for output in signature.outputs if len(output.shape) == 2]
    if len(scores) != 1 or scores[0].shape[1] <= 0:
        return None
    return ImageSpec(height, width, channels, scores[0].shape[1], tensor.name, scores[0].name)


class Runtime(ABC):
    """One way of running a model. `load()` once (off the event loop), then `predict()` and
    `classify()` from worker threads."""

    name: str
    signatures: dict[str, Signature]
    image: ImageSpec | None = None
    parallel_calls: int = 1  # classify() calls that progress side by side
    parity_max_abs_diff: float | None = None

    @abstractmethod
    def load(self) -> None: ...

    @abstractmethod
    def predict(self, signature: str, inputs: dict[str, Array]) -> dict[str, Array]:
        """Run `signature` on inputs already checked against it."""

    @abstractmethod
    def classify(self, batch: Array) -> Array:
        """Class scores for a NHWC float32 batch of the default (image) signature."""

    def warm_up(self) -> None:  # noqa: B027 - optional step, nothing to do by default
        """Run what load() built once, so no client pays for lazy set-up."""

    def complete(self) -> None:  # noqa: B027 - optional step, nothing to do by default
        """Build what can wait until after readiness (larger batch interpreters)."""


def interpreter_class() -> Any:
    # LiteRT is TFLite's maintained home; tf.lite.Interpreter is deprecated but kept as a
    # fallback so an image with TensorFlow alone still serves.
    try:
        from ai_edge_litert.interpreter import Interpreter  # type: ignore[import-untyped]

        return Interpreter
    except ImportError:  # pragma: no cover - depends on the image
        import tensorflow as tf

        return tf.lite.Interpreter


class _Worker:
    """One worker's interpreters by batch size; replaced whole when sizes are added."""

    def __init__(self, interpreters: dict[int, _Sized]) -> None:
        self.interpreters = interpreters


class TFLiteRunner:
    """An image signature's flatbuffer run by XNNPACK, on `workers` interpreter sets.

    Resizing an interpreter's input re-plans its memory and re-packs XNNPACK weights (tens of
    milliseconds for MobileNetV2), far too slow per batch. So each worker keeps one interpreter
    per power of two up to the largest batch, and a batch of 7 runs as 4 + 2 + 1: no padding
    is computed. Only one worker's batch-1 interpreter is built before readiness; `complete()`
    builds the other workers and the larger sizes right after (until then a batch runs as
    several calls of the sizes there are, on the workers there are).

    Workers are independent interpreter sets, each on `threads // workers` threads, that run
    batches side by side. One worker per CPU beats one interpreter spread over all CPUs under
    load: a multi-threaded op waits for its slowest thread, and any other work on the machine
    (decoding, the event loop, a noisy neighbour) makes some thread the slow one every time.
    """

    def __init__(self, flatbuffer: bytes, output_name: str, max_batch_size: int, threads: int,
                 workers: int, *, eager: bool = False) -> None:
        self._flatbuffer = flatbuffer
        self._output_name = output_name
        self.workers = max(1, min(workers, threads))
        self._threads = max(1, threads // self.workers)
        self._sizes = [1 << i for i in range(max(1, max_batch_size).bit_length())]
        self._all: list[_Worker] = []
        self._free: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        # Before readiness only what the first request needs: one worker at batch 1.
        for _ in range(self.workers if eager else 1):
            self._add_worker(self._sizes if eager else self._sizes[:1])

    def _add_worker(self, sizes: list[int], warm: bool = False) -> None:
        worker = _Worker({size: self._make(size) for size in sizes})
        if warm:  # before any caller can take it: interpreters are not thread-safe
            for sized in worker.interpreters.values():
                sized(np.zeros(sized.shape, np.float32))
        self._all.append(worker)
        self._free.put(worker)

    def _make(self, batch: int) -> _Sized:
        interpreter = interpreter_class()(model_content=self._flatbuffer, num_threads=self._threads)
        detail = interpreter.get_input_details()[0]
        shape = list(detail["shape"])
        shape[0] = batch
        interpreter.resize_tensor_input(detail["index"], shape, strict=False)
        interpreter.allocate_tensors()
        signatures = interpreter.get_signature_list()
        if signatures:
            key = next(iter(signatures))
            outputs = interpreter.get_signature_runner(key).get_output_details()
            output = outputs.get(self._output_name) or next(iter(outputs.values()))
            output_index = output["index"]
        else:  # a flatbuffer without signatures: its only output
            output_index = interpreter.get_output_details()[0]["index"]
        return _Sized(interpreter, detail["index"], output_index, tuple(shape))

    def warm_up(self) -> None:
        for worker in self._all:
            for sized in worker.interpreters.values():
                sized(np.zeros(sized.shape, np.float32))

    def complete(self) -> None:
        while len(self._all) < self.workers:
            self._add_worker(self._sizes[:1], warm=True)
        for worker in list(self._all):
            for size in self._sizes:
                if size not in worker.interpreters:
                    sized = self._make(size)
                    sized(np.zeros(sized.shape, np.float32))
                    # One assignment: a call in progress keeps the dict it started with.
                    worker.interpreters = {**worker.interpreters, size: sized}

    def __call__(self, batch: Array) -> Array:
        worker = self._free.get()  # blocks only if callers outnumber workers
        try:
            interpreters = worker.interpreters
            outputs: list[Array] = []
            start = 0
            while start < len(batch):
                size = max(s for s in interpreters if s <= len(batch) - start)
                outputs.append(interpreters[size](batch[start:start + size]))
                start += size
            return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)
        finally:
            self._free.put(worker)


@dataclass(frozen=True)
class _Sized:
    """An interpreter allocated for one batch size, and where its input and output are."""

    interpreter: Any
    input_index: int
    output_index: int
    shape: tuple[int, ...]

    def __call__(self, batch: Array) -> Array:
        self.interpreter.set_tensor(self.input_index, np.ascontiguousarray(batch, np.float32))
        self.interpreter.invoke()
        # Copy: the interpreter reuses its output buffer on the next invoke.
        return np.array(self.interpreter.get_tensor(self.output_index))


class _SignatureRunner:
    """Any signature of a single-signature flatbuffer, one call at a time (interpreters are
    not thread-safe), resized to each call's shapes.

    Built at load, not on first use: a flatbuffer the runtime cannot read must fail the load,
    so the pod never turns ready on a model that cannot answer (its record's sha256 proves the
    bytes are the ones recorded, not that they are a model)."""

    def __init__(self, flatbuffer: bytes, name: str, threads: int) -> None:
        self._lock = threading.Lock()
        interpreter = interpreter_class()(model_content=flatbuffer, num_threads=threads)
        self._runner: Any = interpreter.get_signature_runner(name)

    def __call__(self, inputs: dict[str, Array]) -> dict[str, Array]:
        with self._lock:
            return {key: np.array(value) for key, value in self._runner(**inputs).items()}


class LiteRTRuntime(Runtime):
    """A compiled model (verified against its record before this is built) on LiteRT."""

    name = "litert-compiled"

    def __init__(self, directory: Path, record: CompiledRecord, max_batch_size: int,
                 threads: int, workers: int) -> None:
        self._directory = directory
        self._record = record
        self._max_batch_size = max_batch_size
        self._threads = threads
        self._workers = workers
        self.signatures = {
            s.name: Signature.of(s.name, s.inputs, s.outputs) for s in record.signatures
        }
        self.image = image_spec(self.signatures.get(SERVING_SIGNATURE))
        default = record.signature(SERVING_SIGNATURE)
        self.parity_max_abs_diff = default.max_abs_diff if default is not None else None
        self._runners: dict[str, _SignatureRunner] = {}
        self._classify: TFLiteRunner | None = None

    def load(self) -> None:
        for entry in self._record.signatures:
            assert entry.file is not None  # verified: every signature has its file
            flatbuffer = (compiled_dir(self._directory) / entry.file).read_bytes()
            self._runners[entry.name] = _SignatureRunner(flatbuffer, entry.name, self._threads)
            if entry.name == SERVING_SIGNATURE and self.image is not None:
                self._classify = TFLiteRunner(flatbuffer, self.image.output_name,
                                              self._max_batch_size, self._threads, self._workers)
                self.parallel_calls = self._classify.workers

    def predict(self, signature: str, inputs: dict[str, Array]) -> dict[str, Array]:
        return self._runners[signature](inputs)

    def classify(self, batch: Array) -> Array:
        if self._classify is None:
            raise RuntimeError("not an image classifier")
        return self._classify(batch)

    def warm_up(self) -> None:
        if self._classify is not None:
            self._classify.warm_up()

    def complete(self) -> None:
        if self._classify is not None:
            self._classify.complete()


class SavedModelRuntime(Runtime):
    """The SavedModel's concrete functions on TensorFlow; with `convert`, the default image
    signature is converted to TFLite at start and used when it matches within tolerance."""

    name = "savedmodel"

    def __init__(self, savedmodel: Path, *, convert: bool, strict_convert: bool,
                 max_batch_size: int, threads: int, workers: int, atol: float,
                 rtol: float) -> None:
        self._savedmodel = savedmodel
        self._convert = convert
        self._strict_convert = strict_convert
        self._max_batch_size = max_batch_size
        self._threads = threads
        self._workers = workers
        self._atol, self._rtol = atol, rtol
        self.signatures = {}
        self._functions: dict[str, Any] = {}
        self._classify: Any = None
        self._tf: Any = None

    def load(self) -> None:
        from kakehashi import compile as compiler

        try:
            tf = compiler.import_tensorflow()
        except ImportError:
            raise ModelLoadError(
                "no verified compiled model, and this image has no TensorFlow to serve the "
                "SavedModel: run `kakehashi compile` on the model, or use the full serving image"
            ) from None
        self._tf = tf
        try:
            tf.config.threading.set_intra_op_parallelism_threads(self._threads)
            tf.config.threading.set_inter_op_parallelism_threads(max(1, self._threads // 2))
        except RuntimeError:
            # TensorFlow fixes its pools at its first op; a second model in the same process
            # (or a notebook that already ran TensorFlow) keeps them, which is harmless.
            pass
        try:
            loaded = tf.saved_model.load(str(self._savedmodel))
        except Exception as error:
            raise ModelLoadError("the SavedModel cannot be loaded",
                                 detail=f"{self._savedmodel}: {error}") from error
        found, skipped = compiler.savedmodel_signatures(loaded)
        for name, reason in skipped.items():
            log.warning("Skipped signature", extra={"signature": name, "reason": reason})
        if not found:
            raise ModelLoadError("the SavedModel has no signature with numeric tensors to serve")
        self._loaded = loaded  # keeps the functions' variables alive
        self._functions = {name: s.function for name, s in found.items()}
        self.signatures = {
            name: Signature.of(name, s.inputs, s.outputs) for name, s in found.items()
        }
        self.image = image_spec(self.signatures.get(SERVING_SIGNATURE))
        if self.image is None:
            return
        function = self._functions[SERVING_SIGNATURE]
        input_name, output_name = self.image.input_name, self.image.output_name

        def run_concrete(batch: Array) -> Array:
            return np.asarray(function(**{input_name: tf.constant(batch)})[output_name])

        self._classify = run_concrete
        if self._convert:
            try:
                runner = self._converted(found[SERVING_SIGNATURE], compiler)
            except Exception as error:
                if self._strict_convert:
                    raise
                log.warning("Fell back to the SavedModel's concrete function",
                            extra={"reason": str(error)})
            else:
                self._classify, self.parallel_calls = runner, runner.workers
                self.name = "litert-converted"

    def _converted(self, signature: Any, compiler: Any) -> TFLiteRunner:
        assert self.image is not None
        flatbuffer = compiler.convert_signature(self._savedmodel, SERVING_SIGNATURE)
        _, max_abs, _, passed, problem = compiler.check_signature(
            signature, flatbuffer, self._atol, self._rtol
        )
        self.parity_max_abs_diff = max_abs
        if not passed:
            raise ModelLoadError(f"TFLite conversion failed its parity check: {problem}")
        return TFLiteRunner(flatbuffer, self.image.output_name, self._max_batch_size,
                            self._threads, self._workers, eager=True)

    def predict(self, signature: str, inputs: dict[str, Array]) -> dict[str, Array]:
        tf = self._tf
        result = self._functions[signature](
            **{name: tf.constant(value) for name, value in inputs.items()}
        )
        return {name: np.asarray(tensor) for name, tensor in result.items()}

    def classify(self, batch: Array) -> Array:
        if self._classify is None:
            raise RuntimeError("not an image classifier")
        result: Array = self._classify(batch)
        return result

    def warm_up(self) -> None:
        if isinstance(self._classify, TFLiteRunner):
            self._classify.warm_up()
        elif self.image is not None and self._classify is not None:
            image = self.image
            self._classify(np.zeros((1, image.height, image.width, image.channels), np.float32))
