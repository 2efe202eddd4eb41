"""The operator's settings, read once from the environment (12-factor, as a Deployment sets them)."""

from __future__ import annotations

import os

from pydantic import BaseModel, Field


class OperatorSettings(BaseModel):
    model_bucket: str = Field(default="kakehashi-models", description="Default bucket for models.")
    s3_endpoint: str | None = Field(
        default=None, description="S3 endpoint handed to training containers (unset on AWS)."
    )
    s3_secret: str = Field(
        default="kakehashi-s3",
        description="Secret in the run's namespace with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
        "for training containers (optional: IRSA needs none).",
    )
    resync_seconds: float = Field(
        default=30.0,
        description="How often an unfinished run is recomputed even without events.",
    )

    @classmethod
    def from_env(cls) -> OperatorSettings:
        env = os.environ
        return cls(
            model_bucket=env.get("KAKEHASHI_MODEL_BUCKET", "kakehashi-models"),
            s3_endpoint=env.get("KAKEHASHI_S3_ENDPOINT") or env.get("AWS_ENDPOINT_URL_S3") or None,
            s3_secret=env.get("KAKEHASHI_S3_SECRET", "kakehashi-s3"),
            resync_seconds=float(env.get("KAKEHASHI_RESYNC_SECONDS", "30")),
        )
