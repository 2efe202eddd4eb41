"""A tiny real SavedModel for cluster tests that need a model but not a training run."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def tiny_savedmodel(directory: Path) -> None:
    import tensorflow as tf

    class Scorer(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.weights = tf.Variable([[1.0], [2.0], [3.0]])

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="features")])
        def score(self, features: Any) -> Any:
            return {"score": tf.matmul(features, self.weights)}

    module = Scorer()
    tf.saved_model.save(module, str(directory / "savedmodel"),
                        signatures={"serving_default": module.score})
    (directory / "labels.json").write_text("[]")
