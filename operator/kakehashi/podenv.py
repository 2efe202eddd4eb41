"""Environment the operator hands to the pods it creates (training, baking): object storage.

boto3 (>= 1.28) reads AWS_ENDPOINT_URL_S3 itself; the keys come from an optional per-namespace
Secret, so the same pod works with IRSA on EKS (no Secret) and with the local MinIO.
"""

from __future__ import annotations

from typing import Any

from kakehashi import contract
from kakehashi.settings import OperatorSettings


def s3_env(settings: OperatorSettings) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = []
    if settings.s3_endpoint:
        env.append({"name": contract.ENV_S3_ENDPOINT, "value": settings.s3_endpoint})
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.append(
            {"name": key, "valueFrom": {"secretKeyRef": {"name": settings.s3_secret, "key": key, "optional": True}}}
        )
    return env
