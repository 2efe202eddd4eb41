"""File names inside a model artifact."""

from __future__ import annotations

from typing import Final

MODEL_MANIFEST: Final = "model.json"  # written last: its presence means the artifact is complete
METRICS_FILE: Final = "metrics.json"
SAVEDMODEL_DIR: Final = "savedmodel"
LABELS_FILE: Final = "labels.json"
COMPILED_DIR: Final = "compiled"  # the model compiled once (TFLite), with its parity record
