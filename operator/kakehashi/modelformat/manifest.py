"""`model.json`: what a model is, where it came from, and the digest that proves it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


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
