"""`compiled/record.json`: what `kakehashi compile` made of a SavedModel, and the proof.

A compiled model sits beside the SavedModel it came from:

```
<model-dir>/
  savedmodel/ labels.json model.json      the model as trained (model.json: its digest)
  compiled/
    <signature>.tflite                    one TFLite flatbuffer per serving signature
    record.json                           a `CompiledRecord`: versions, tolerances, parity, digests
```

The record names the content digest of the model it was compiled from (`source_digest`: every
file but `model.json` and `compiled/`), and the sha256 of each file it wrote. The digest in
`model.json` therefore stays the digest of the model as trained: it is written by the trainer,
recorded in `TrainingRun.status.model` and named by `ModelService.spec.model.digest` long before
any compile, and a compile (whose bytes depend on the converter's version) must not change a
model's identity. The server proves what it serves by checking both: the model files against
`model.json`, the compiled files against this record, and the record against the model files.

Pydantic and the standard library only: the light serving image reads this without TensorFlow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from kakehashi.modelformat.digest import content_digest, file_sha256
from kakehashi.modelformat.layout import COMPILED_DIR

RECORD_FILE: Final = "record.json"
RECORD_FORMAT: Final = 1

Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64",
]


class TensorSpec(BaseModel):
    """One input or output of a signature, in Open Inference Protocol v2 terms."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    datatype: Datatype
    shape: tuple[int, ...]  # -1 where any size is accepted


class ParityProbe(BaseModel):
    """The deterministic inputs the compiled form was compared on (reproducible from these)."""

    model_config = ConfigDict(extra="forbid")

    seed: int
    batch: int  # the size given to every -1 dimension
    kind: Literal["image", "tensor"]
    distribution: str  # e.g. "uniform(-1, 1)" for float inputs, "integers[0, 10)" for ints


class CompiledSignature(BaseModel):
    """One serving signature: its file and how closely it matched the SavedModel."""

    model_config = ConfigDict(extra="forbid")

    name: str
    file: str | None  # relative to compiled/; None when it did not convert
    sha256: str | None
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    probe: ParityProbe | None = None
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    passed: bool
    error: str | None = None  # why it did not convert or failed parity


class Tolerance(BaseModel):
    model_config = ConfigDict(extra="forbid")

    atol: float
    rtol: float


class CompiledRecord(BaseModel):
    """The content of `compiled/record.json`."""

    model_config = ConfigDict(extra="forbid")

    format: int = RECORD_FORMAT
    source_digest: str  # content digest of the model it came from (== model.json's digest)
    passed: bool  # every signature converted and matched: the server may serve it without TF
    tensorflow_version: str
    converter: str  # e.g. "tf.lite.TFLiteConverter.from_saved_model"
    converter_version: str
    interpreter: str  # what ran the parity check, e.g. "ai-edge-litert 2.3.0"
    tolerance: Tolerance
    signatures: list[CompiledSignature]
    created_at: str = Field(description="RFC 3339")
    seconds: float  # how long the compile (conversion and parity check) took

    def signature(self, name: str) -> CompiledSignature | None:
        return next((s for s in self.signatures if s.name == name), None)


def compiled_dir(model_dir: Path) -> Path:
    return model_dir / COMPILED_DIR


def record_path(model_dir: Path) -> Path:
    return model_dir / COMPILED_DIR / RECORD_FILE


def read_record(model_dir: Path) -> CompiledRecord | None:
    """The compile record under `model_dir`, or None when the model was never compiled."""
    path = record_path(model_dir)
    if not path.exists():
        return None
    return CompiledRecord.model_validate_json(path.read_bytes())


def source_digest(root: Path) -> str:
    """The content digest of the model under `root` as trained: `compiled/` left out.

    `content_digest` with `compiled/` excluded, so on a directory without `compiled/` the two
    are equal.
    """
    return content_digest(root, exclude_dirs=(COMPILED_DIR,))


def why_unverified(model_dir: Path, record: CompiledRecord, digest: str) -> str | None:
    """Why the compiled files under `model_dir` cannot be served, or None when they can.

    `digest` is the model's `source_digest`. Paths in the answer are relative to the model
    directory, so it can be shown to clients.
    """
    if record.format != RECORD_FORMAT:
        return f"compiled record format {record.format}, this server reads {RECORD_FORMAT}"
    if record.source_digest != digest:
        return (f"compiled from {record.source_digest}, but the model files digest to {digest}: "
                "compile again")
    if not record.passed:
        failed = [s.name for s in record.signatures if not s.passed]
        return f"the compiled form failed its parity check (signatures {failed})"
    for signature in record.signatures:
        if signature.file is None or signature.sha256 is None:
            return f"signature {signature.name!r} has no compiled file"
        path = compiled_dir(model_dir) / signature.file
        if Path(signature.file).name != signature.file or not path.is_file():
            return f"{COMPILED_DIR}/{signature.file} is missing"
        if file_sha256(path) != signature.sha256:
            return f"{COMPILED_DIR}/{signature.file} does not match its recorded sha256"
    return None
