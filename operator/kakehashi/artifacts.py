"""Model artifacts in object storage: their layout, content digest, upload and read-back.

A model artifact is a prefix (`s3://bucket/prefix/`) holding `savedmodel/`, `labels.json`,
`metrics.json` and, written last, `model.json` (a `ModelArtifact`). The trainer writes it; the
operator reads `model.json` back into `TrainingRun.status.model`; baking downloads it. This module
needs only boto3-shaped clients and the standard library, never TensorFlow, because the operator
image has no TensorFlow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kakehashi.modelformat import MODEL_MANIFEST, ModelArtifact, model_files


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split `s3://bucket/some/prefix` into `("bucket", "some/prefix/")`.

    The key prefix always ends with `/` (or is empty), so an output URI given with or without
    its trailing slash names the same objects and never matches a sibling like `prefix-2/`.
    """
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI without a bucket: {uri!r}")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def upload_directory(s3_client: Any, root: Path, output_uri: str) -> list[str]:
    """Upload every file under `root` to `output_uri`, `model.json` last; return the keys.

    `model.json` goes last because its presence is what tells the operator the artifact is
    complete: a reader never sees a manifest whose files are still uploading.
    """
    bucket, prefix = parse_s3_uri(output_uri)
    keys: list[str] = []
    for relative, path in model_files(root):
        key = prefix + relative
        s3_client.upload_file(str(path), bucket, key)
        keys.append(key)
    manifest = root / MODEL_MANIFEST
    if manifest.exists():
        key = prefix + MODEL_MANIFEST
        s3_client.upload_file(str(manifest), bucket, key)
        keys.append(key)
    return keys


def download_directory(s3_client: Any, uri: str, destination: Path) -> Path:
    """Download every object under the `uri` prefix into `destination`; return `destination`."""
    bucket, prefix = parse_s3_uri(uri)
    destination.mkdir(parents=True, exist_ok=True)
    paginator = s3_client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            key: str = item["Key"]
            relative = key[len(prefix):]
            if not relative or relative.endswith("/"):
                continue  # "directory" placeholder objects some tools create
            target = (destination / relative).resolve()
            if destination.resolve() not in target.parents:
                raise ValueError(f"object key {key!r} escapes {destination}")
            target.parent.mkdir(parents=True, exist_ok=True)
            s3_client.download_file(bucket, key, str(target))
    return destination


def is_not_found(error: Exception) -> bool:
    """True for S3's answers that say the key (not the bucket) does not exist."""
    response = getattr(error, "response", None)
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    # A missing bucket is not "not written yet": it is a misconfiguration, and must surface.
    return code in {"NoSuchKey", "404", "NotFound"}


def read_model_artifact(s3_client: Any, output_uri: str) -> ModelArtifact | None:
    """Read `model.json` under `output_uri`; None while it does not exist (yet).

    Raises `ValueError` (a pydantic `ValidationError`) when `model.json` exists but is not a
    valid `ModelArtifact`, so the caller can report a broken artifact instead of waiting forever.
    Other storage errors (access denied, endpoint down) propagate unchanged.
    """
    bucket, prefix = parse_s3_uri(output_uri)
    try:
        response = s3_client.get_object(Bucket=bucket, Key=prefix + MODEL_MANIFEST)
    except Exception as error:
        if is_not_found(error):
            return None
        raise
    body: bytes = response["Body"].read()
    return ModelArtifact.model_validate_json(body)
