"""The model artifact format, shared by the trainer, the operator and the inference server.

A model artifact is a directory (or an object-store prefix) holding `savedmodel/`, `labels.json`,
`metrics.json`, optionally `compiled/`, and `model.json` (a `ModelArtifact`) written last;
`run/` beside them holds records of the run (its executed notebook), no part of the model. This
package imports nothing of the project and nothing heavier than pydantic, so a serving image can
verify what it serves without installing the operator's dependencies.
"""

from kakehashi.modelformat.digest import DIGEST_ALGORITHM, content_digest, model_files
from kakehashi.modelformat.layout import (
    COMPILED_DIR,
    EXECUTED_NOTEBOOK,
    LABELS_FILE,
    METRICS_FILE,
    MODEL_MANIFEST,
    RUN_DIR,
    SAVEDMODEL_DIR,
)
from kakehashi.modelformat.manifest import GitLineage, Lineage, ModelArtifact
from kakehashi.modelformat.timestamps import now_rfc3339, rfc3339

__all__ = [
    "COMPILED_DIR",
    "DIGEST_ALGORITHM",
    "EXECUTED_NOTEBOOK",
    "LABELS_FILE",
    "METRICS_FILE",
    "MODEL_MANIFEST",
    "RUN_DIR",
    "SAVEDMODEL_DIR",
    "GitLineage",
    "Lineage",
    "ModelArtifact",
    "content_digest",
    "model_files",
    "now_rfc3339",
    "rfc3339",
]
