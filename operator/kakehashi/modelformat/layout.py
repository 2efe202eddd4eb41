"""File names inside a model artifact."""

from __future__ import annotations

from typing import Final

MODEL_MANIFEST: Final = "model.json"  # written last: its presence means the artifact is complete
METRICS_FILE: Final = "metrics.json"
SAVEDMODEL_DIR: Final = "savedmodel"
LABELS_FILE: Final = "labels.json"
COMPILED_DIR: Final = "compiled"  # the model compiled once (TFLite), with its parity record
# Records of the run that trained the model, kept beside it but no part of it (the executed
# notebook of a notebook run): left out of the model's digest and of every baked image, so a
# record written after the model (the notebook finishes after it saved the model) changes
# neither.
RUN_DIR: Final = "run"
EXECUTED_NOTEBOOK: Final = f"{RUN_DIR}/notebook.ipynb"
