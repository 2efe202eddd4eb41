"""The served model: which runtime runs it, its signatures, labels and the digest it proves.

`load_model` picks the runtime (`Settings.runtime`):

- `compiled`: the model's `compiled/` (made once by `kakehashi compile`, verified here against
  its record and the model's digest) on LiteRT. No TensorFlow: this is the light image's path,
  ready in about a second.
- `savedmodel`: the SavedModel's concrete functions on TensorFlow (the full image).
- `convert`: TensorFlow converts the default signature to TFLite at every start, then LiteRT
  runs it (parity-checked); slow to start, kept for models served without a compile step.
- `auto` (default): `compiled` when a verified compiled model is present; the SavedModel when
  the compile failed parity or did not convert; `convert` when the model was never compiled.

Every error raised here that reaches clients (`ModelLoadError`) carries a message without
server paths; the full story goes to the log.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from kakehashi.modelformat import LABELS_FILE, MODEL_MANIFEST, SAVEDMODEL_DIR
from kakehashi.modelformat.compiled import read_record, source_digest, why_unverified
from kakehashi_inference.cgroup import cpu_threads
from kakehashi_inference.errors import InvalidInput
from kakehashi_inference.runtimes import (
    SERVING_SIGNATURE,
    Array,
    ImageSpec,
    LiteRTRuntime,
    ModelLoadError,
    Runtime,
    SavedModelRuntime,
    Signature,
    TensorInfo,
)
from kakehashi_inference.settings import Settings

log = logging.getLogger(__name__)

__all__ = [
    "SERVING_SIGNATURE",
    "Array",
    "ImageSpec",
    "Label",
    "LoadedModel",
    "ModelLoadError",
    "Signature",
    "TensorInfo",
    "check_inputs",
    "load_labels",
    "load_model",
    "start_loading",
]


@dataclass(frozen=True)
class Label:
    category: str
    name: str


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
            raise ModelLoadError(f"{LABELS_FILE}: cannot read label {entry!r}")
    return labels


@dataclass
class LoadedModel:
    """A model ready to answer: its runtime, signatures, labels and digest."""

    name: str
    directory: Path
    digest: str  # the model's content digest as trained (model.json's), compiled/ left out
    labels: list[Label] | None
    runner: Runtime

    @property
    def runtime(self) -> str:
        """What runs the model: `litert-compiled`, `litert-converted` or `savedmodel`."""
        return self.runner.name

    @property
    def signatures(self) -> dict[str, Signature]:
        return self.runner.signatures

    @property
    def image(self) -> ImageSpec | None:
        return self.runner.image

    @property
    def parallel_calls(self) -> int:
        return self.runner.parallel_calls

    @property
    def parity_max_abs_diff(self) -> float | None:
        return self.runner.parity_max_abs_diff

    def classify(self, batch: Array) -> Array:
        """Class scores for a NHWC float32 batch (runs on a worker thread, never the loop)."""
        return self.runner.classify(batch)

    def infer(self, signature: str, inputs: dict[str, Array]) -> dict[str, Array]:
        """Run any signature on numpy inputs already checked against its `Signature`."""
        return self.runner.predict(signature, inputs)

    def label(self, index: int) -> Label:
        if self.labels is not None and index < len(self.labels):
            return self.labels[index]
        return Label(str(index), str(index))


def load_model(settings: Settings, threads: int) -> LoadedModel:
    """Verify, load and warm up the model under `settings.resolved_model_dir`."""
    started = time.monotonic()
    directory = settings.resolved_model_dir
    if not (directory / SAVEDMODEL_DIR).is_dir() and read_record(directory) is None:
        raise ModelLoadError(f"no {SAVEDMODEL_DIR}/ and no compiled model in the model directory",
                             detail=str(directory))
    digest = source_digest(directory)
    _check_manifest(directory, digest, settings.allow_digest_mismatch)
    runner = _choose_runtime(settings, directory, digest, threads)
    runner.load()
    labels = load_labels(directory / LABELS_FILE)
    image = runner.image
    if labels is not None and image is not None and len(labels) != image.classes:
        raise ModelLoadError(
            f"{LABELS_FILE} has {len(labels)} labels, the model {image.classes} classes"
        )
    model = LoadedModel(name=settings.model_name, directory=directory, digest=digest,
                        labels=labels, runner=runner)
    runner.warm_up()
    log.info(
        "Loaded model",
        extra={
            "model": model.name, "digest": digest, "runtime": runner.name, "threads": threads,
            "parallel_calls": runner.parallel_calls, "signatures": sorted(runner.signatures),
            "parity_max_abs_diff": runner.parity_max_abs_diff,
            "seconds": round(time.monotonic() - started, 3),
        },
    )
    return model


def _choose_runtime(settings: Settings, directory: Path, digest: str, threads: int) -> Runtime:
    record = read_record(directory)
    choice = settings.runtime
    workers = settings.model_workers or threads
    if choice in ("auto", "compiled") and record is not None:
        reason = why_unverified(directory, record, digest)
        if reason is None:
            return LiteRTRuntime(directory, record, settings.max_batch_size, threads, workers)
        compile_failed = not record.passed and record.source_digest == digest
        if choice == "compiled" or not (compile_failed or settings.allow_digest_mismatch):
            # Compiled files that are not what their record says, or that came from another
            # model, are never served in this model's name.
            raise ModelLoadError(f"the compiled model cannot be served: {reason}")
        log.warning("Serving the SavedModel: the compiled model is not usable",
                    extra={"reason": reason})
        choice = "savedmodel"
    elif choice == "compiled":
        raise ModelLoadError("no compiled model (compiled/record.json): run `kakehashi compile`")
    elif choice == "auto":
        log.warning("The model was never compiled: converting it at start (slow); "
                    "run `kakehashi compile` on it to be ready in about a second")
        choice = "convert"
    return SavedModelRuntime(
        directory / SAVEDMODEL_DIR,
        convert=choice == "convert",
        strict_convert=settings.runtime == "convert",
        max_batch_size=settings.max_batch_size,
        threads=threads,
        workers=workers,
        atol=settings.parity_atol,
        rtol=settings.parity_rtol,
    )


def _check_manifest(directory: Path, digest: str, allow_mismatch: bool) -> None:
    """The model files must be what `model.json` says: its digest is the model's lineage."""
    manifest = directory / MODEL_MANIFEST
    if not manifest.exists():
        return
    try:
        recorded = json.loads(manifest.read_text()).get("digest")
    except (ValueError, AttributeError):
        raise ModelLoadError(f"{MODEL_MANIFEST} is not a JSON object") from None
    if not recorded or not isinstance(recorded, str):
        # The trainer always writes one: a manifest without it proves nothing.
        if not allow_mismatch:
            raise ModelLoadError(
                f"{MODEL_MANIFEST} names no digest, so the model files cannot be proven "
                "(KAKEHASHI_ALLOW_DIGEST_MISMATCH=true serves them anyway)"
            )
        log.warning("model.json names no digest; serving anyway (allowed by setting)")
    elif recorded != digest:
        if not allow_mismatch:
            raise ModelLoadError(
                f"the model files digest to {digest}, but {MODEL_MANIFEST} says {recorded}: "
                "refusing to serve a model that is not the one recorded "
                "(KAKEHASHI_ALLOW_DIGEST_MISMATCH=true serves it anyway)"
            )
        log.warning("Model files differ from model.json; serving anyway (allowed by setting)",
                    extra={"recorded_digest": recorded, "digest": digest})


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
        shape = expected[name].shape
        if len(shape) != value.ndim or any(e not in (-1, a) for e, a in zip(
                shape, value.shape, strict=True)):
            raise InvalidInput(
                f"input {name!r} has shape {list(value.shape)}, "
                f"the model takes {list(shape)} (-1: any size)"
            )


def start_loading(settings: Settings) -> Future[LoadedModel]:
    """Load the model on a thread now, while the caller goes on importing the web stack:
    reading, verifying and building interpreters overlap the imports (readiness is sooner)."""
    future: Future[LoadedModel] = Future()

    def run() -> None:
        try:
            future.set_result(load_model(settings, settings.threads or cpu_threads()))
        except BaseException as error:
            future.set_exception(error)

    threading.Thread(target=run, name="kakehashi-load", daemon=True).start()
    return future

