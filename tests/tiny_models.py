"""A tiny real SavedModel for cluster tests that need a model but not a training run."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kakehashi.modelformat.compiled import compiled_dir, read_record, record_path
from kakehashi.modelformat.digest import file_sha256

# The signature's one input, for predictions: a batch of three features.
FEATURES = "features"


def tiny_savedmodel(directory: Path, weights: Sequence[float] = (1.0, 2.0, 3.0)) -> None:
    """A scorer `features @ weights`; other weights make a model with another digest."""
    import tensorflow as tf

    class Scorer(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.weights = tf.Variable([[float(w)] for w in weights])

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name=FEATURES)])
        def score(self, features: Any) -> Any:
            return {"score": tf.matmul(features, self.weights)}

    module = Scorer()
    tf.saved_model.save(module, str(directory / "savedmodel"),
                        signatures={"serving_default": module.score})
    (directory / "labels.json").write_text("[]")


def compiled_tiny_model(directory: Path, weights: Sequence[float] = (1.0, 2.0, 3.0)) -> None:
    """The tiny model with its verified compiled form, as `kakehashi compile` leaves it: a bake
    then needs no TensorFlow and no compile."""
    from kakehashi.compile import compile_model

    tiny_savedmodel(directory, weights)
    compile_model(directory)


def corrupt_compiled_model(directory: Path) -> None:
    """Overwrite the compiled model with random bytes and re-record their sha256: every check
    before loading passes (what a bad converter or a flipped disk leaves), and the runtime then
    cannot load it. The image baked from it cannot start."""
    record = read_record(directory)
    assert record is not None, "compile the model first"
    for signature in record.signatures:
        assert signature.file is not None
        path = compiled_dir(directory) / signature.file
        path.write_bytes(os.urandom(path.stat().st_size))
        signature.sha256 = file_sha256(path)
    record_path(directory).write_text(record.model_dump_json(indent=1))
