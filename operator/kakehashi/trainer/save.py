"""Saving a trained model as a Kakehashi model artifact: SavedModel, labels, metrics, lineage.

TensorFlow is imported only inside `save` and `export_savedmodel`: this module is importable
(and `write_artifact` usable) where TensorFlow is not installed, such as the operator image.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import kakehashi
from kakehashi import contract, modelformat
from kakehashi.artifacts import upload_directory
from kakehashi.modelformat import Lineage, ModelArtifact, content_digest, rfc3339
from kakehashi.trainer.context import TrainingContext
from kakehashi.trainer.context import context as read_context
from kakehashi.trainer.data import local_path, s3_client


def _json_file(path: Path, value: Any) -> None:
    # Sorted keys and a fixed layout: the same labels and metrics give the same bytes, and so
    # the same digest.
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def clean_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """Metrics as plain floats (numpy and tensor scalars included), non-finite ones dropped.

    A NaN loss is not a number a gate can compare against, and JSON cannot carry it: leaving it
    out makes a gate on that metric fail visibly rather than pass by accident.
    """
    cleaned: dict[str, float] = {}
    for name, value in (metrics or {}).items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"metric {name}={value!r} is not a number") from None
        if math.isfinite(number):
            cleaned[str(name)] = number
        else:
            print(f"kakehashi: metric {name}={number} is not finite; left out", file=sys.stderr)
    return cleaned


def framework_versions(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Python, kakehashi and the installed ML libraries' versions, for lineage."""
    versions = {"python": platform.python_version(), "kakehashi": kakehashi.__version__}
    for distribution in ("tensorflow", "keras", "numpy", "scikit-learn"):
        try:
            versions[distribution] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            pass
    versions.update(extra or {})
    return versions


def write_artifact(
    root: Path,
    uri: str,
    *,
    ctx: TrainingContext,
    labels: Sequence[str | int] | None = None,
    metrics: Mapping[str, Any] | None = None,
    frameworks: Mapping[str, str] | None = None,
    created_at: datetime | None = None,
) -> ModelArtifact:
    """Write labels.json, metrics.json and model.json next to `root/savedmodel`; return model.json.

    The digest covers every file under `root` except model.json itself.
    """
    if not (root / modelformat.SAVEDMODEL_DIR).is_dir():
        raise FileNotFoundError(f"no {modelformat.SAVEDMODEL_DIR}/ under {root}")
    cleaned = clean_metrics(metrics)
    _json_file(root / modelformat.LABELS_FILE, [str(label) for label in labels or []])
    _json_file(root / modelformat.METRICS_FILE, cleaned)
    artifact = ModelArtifact(
        uri=uri,
        digest=content_digest(root),
        metrics=cleaned,
        lineage=Lineage(
            runId=ctx.run_id,
            runName=ctx.run_name,
            namespace=ctx.namespace,
            git=ctx.git,
            dataUri=ctx.data_uri,
            hyperparameters=ctx.hyperparameters,
            frameworks=dict(frameworks) if frameworks is not None else framework_versions(),
        ),
        createdAt=rfc3339(created_at or datetime.now(UTC)),
    )
    (root / modelformat.MODEL_MANIFEST).write_text(
        artifact.model_dump_json(by_alias=True, indent=2) + "\n"
    )
    return artifact


def export_savedmodel(model: Any, path: Path, signatures: Any = None) -> None:
    """Save `model` (a Keras model or a tf.Module) as a SavedModel servable by its signature.

    Keras models go through `model.export`, which traces the inference function and registers
    it as `serving_default`; anything else through `tf.saved_model.save` with `signatures`.
    The result is loaded back once, so a model the inference server could not serve fails here,
    in the training log, rather than at deploy time.
    """
    import tensorflow as tf

    if signatures is None and hasattr(model, "export") and hasattr(model, "predict"):
        model.export(str(path), verbose=False)
    else:
        tf.saved_model.save(model, str(path), signatures=signatures)
    loaded = tf.saved_model.load(str(path))
    if "serving_default" not in loaded.signatures:
        raise ValueError(
            "the saved model has no serving_default signature: pass signatures="
            "{'serving_default': fn.get_concrete_function(...)} to trainer.save"
        )


def publish(root: Path, uri: str, *, client: Any = None) -> None:
    """Copy the artifact under `root` to `uri` (s3://, file:// or a path), model.json last."""
    destination = local_path(uri)
    if destination is None:
        upload_directory(client or s3_client(), root, uri)
        return
    destination.mkdir(parents=True, exist_ok=True)
    for item in sorted(root.iterdir(), key=lambda p: p.name == modelformat.MODEL_MANIFEST):
        target = destination / item.name
        if item.is_dir():
            shutil.copytree(item, target, dirs_exist_ok=True)
        else:
            shutil.copy2(item, target)


def save(
    model: Any,
    labels: Sequence[str | int] | None = None,
    metrics: Mapping[str, Any] | None = None,
    *,
    output_uri: str | None = None,
    ctx: TrainingContext | None = None,
    signatures: Any = None,
    client: Any = None,
) -> ModelArtifact:
    """Save `model` with its labels and metrics to the run's output URI; return its model.json.

    Every replica must call this in distributed training (saving runs collective operations
    under MultiWorkerMirroredStrategy), but only the chief uploads; the others save to a
    scratch directory that is then removed. `output_uri` defaults to KAKEHASHI_OUTPUT_URI.
    """
    ctx = ctx or read_context()
    uri = output_uri or ctx.output_uri
    if not uri:
        raise ValueError(
            f"no output URI: set {contract.ENV_OUTPUT_URI} (the operator does) or pass output_uri="
        )
    with tempfile.TemporaryDirectory(prefix="kakehashi-model-") as scratch:
        root = Path(scratch)
        export_savedmodel(model, root / modelformat.SAVEDMODEL_DIR, signatures)
        artifact = write_artifact(root, uri, ctx=ctx, labels=labels, metrics=metrics)
        if ctx.is_chief:
            publish(root, uri, client=client)
            print(f"kakehashi: saved model {artifact.digest} to {uri}", file=sys.stderr)
    return artifact
