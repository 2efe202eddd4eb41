"""The contract between the operator and the code running inside a training container.

The operator injects these environment variables into every training container, and the trainer
runtime (`kakehashi.trainer`) reads them; `model.json`, written by the trainer next to the model,
is what the operator reads back into `TrainingRun.status.model`. Both sides import this module,
so the names cannot drift apart.
"""

from __future__ import annotations

from typing import Final

from pydantic import BaseModel, ConfigDict, Field

ENV_RUN_ID: Final = "KAKEHASHI_RUN_ID"  # the TrainingRun's uid
ENV_RUN_NAME: Final = "KAKEHASHI_RUN_NAME"
ENV_NAMESPACE: Final = "KAKEHASHI_NAMESPACE"
ENV_HYPERPARAMETERS: Final = "KAKEHASHI_HYPERPARAMETERS"  # JSON object, flat map
ENV_DATA_URI: Final = "KAKEHASHI_DATA_URI"
ENV_OUTPUT_URI: Final = "KAKEHASHI_OUTPUT_URI"  # s3://bucket/prefix/ where the model goes
ENV_SOURCE_GIT_URL: Final = "KAKEHASHI_SOURCE_GIT_URL"
ENV_SOURCE_GIT_REVISION: Final = "KAKEHASHI_SOURCE_GIT_REVISION"  # as asked in the spec
# The init container that clones the code writes the resolved commit sha into this file,
# because an env var cannot carry a value discovered after the pod was created.
ENV_SOURCE_COMMIT_FILE: Final = "KAKEHASHI_SOURCE_COMMIT_FILE"
ENV_WORKSPACE: Final = "KAKEHASHI_WORKSPACE"  # where the code was cloned
# boto3 (>= 1.28) reads AWS_ENDPOINT_URL_S3 itself; the operator copies the platform's S3
# endpoint and credentials (from a Secret) so the same trainer code works on EKS and locally.
ENV_S3_ENDPOINT: Final = "AWS_ENDPOINT_URL_S3"

MODEL_MANIFEST: Final = "model.json"
METRICS_FILE: Final = "metrics.json"
SAVEDMODEL_DIR: Final = "savedmodel"
LABELS_FILE: Final = "labels.json"


class GitLineage(BaseModel):
    """The code that produced a model."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = None
    revision: str | None = None
    commit: str | None = None


class Lineage(BaseModel):
    """Everything needed to reproduce or audit a model."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    run_id: str | None = Field(default=None, alias="runId")
    run_name: str | None = Field(default=None, alias="runName")
    namespace: str | None = None
    git: GitLineage = Field(default_factory=GitLineage)
    data_uri: str | None = Field(default=None, alias="dataUri")
    hyperparameters: dict[str, str | int | float | bool] = Field(default_factory=dict)
    frameworks: dict[str, str] = Field(default_factory=dict)  # e.g. {"tensorflow": "2.21.0"}


class ModelArtifact(BaseModel):
    """The content of `model.json`, and of `TrainingRun.status.model`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    uri: str  # s3://bucket/prefix/ holding savedmodel/, labels.json, metrics.json, model.json
    digest: str  # "sha256:<hex>" over the model files, order- and mtime-independent
    metrics: dict[str, float] = Field(default_factory=dict)
    lineage: Lineage = Field(default_factory=Lineage)
    created_at: str | None = Field(default=None, alias="createdAt")  # RFC 3339
