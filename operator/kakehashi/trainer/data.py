"""Reading training data from where the run says it lives: s3://, file:// or a local path.

The same call works in a notebook (a local path) and in a training container (an s3:// URI
with the platform's endpoint and credentials in the environment, which boto3 reads itself).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from kakehashi.artifacts import download_directory, is_not_found, parse_s3_uri


def s3_client() -> Any:
    """A boto3 S3 client configured from the environment (AWS_ENDPOINT_URL_S3, credentials)."""
    import boto3

    return boto3.client("s3")


def local_path(uri: str) -> Path | None:
    """The filesystem path a file:// URI or plain path names; None for other schemes."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "":
        return Path(uri)
    return None


def read_bytes(uri: str, *, client: Any = None) -> bytes:
    """The content of one object or file: `s3://bucket/key`, `file:///path` or a path."""
    path = local_path(uri)
    if path is not None:
        return path.read_bytes()
    if not uri.startswith("s3://"):
        raise ValueError(f"unsupported data URI {uri!r}: use s3://, file:// or a path")
    bucket, prefix = parse_s3_uri(uri)
    response = (client or s3_client()).get_object(Bucket=bucket, Key=prefix.rstrip("/"))
    body: bytes = response["Body"].read()
    return body


def download(uri: str, destination: Path | None = None, *, client: Any = None) -> Path:
    """A local path holding the data at `uri`: a file for one object, a directory for a prefix.

    Local URIs are returned as they are, without a copy. An s3:// URI ending in `/` is a
    prefix; otherwise it is tried as one object first, then as a prefix.
    """
    path = local_path(uri)
    if path is not None:
        if not path.exists():
            raise FileNotFoundError(f"no data at {uri}")
        return path
    if not uri.startswith("s3://"):
        raise ValueError(f"unsupported data URI {uri!r}: use s3://, file:// or a path")
    client = client or s3_client()
    destination = destination or Path(tempfile.mkdtemp(prefix="kakehashi-data-"))
    bucket, prefix = parse_s3_uri(uri)
    key = prefix.rstrip("/")
    if key and not uri.endswith("/"):
        try:
            client.head_object(Bucket=bucket, Key=key)
        except Exception as error:
            if not is_not_found(error):
                raise
        else:
            destination.mkdir(parents=True, exist_ok=True)
            target = destination / key.rsplit("/", 1)[-1]
            client.download_file(bucket, key, str(target))
            return target
    download_directory(client, uri, destination)
    if not any(destination.iterdir()):
        raise FileNotFoundError(f"no data at {uri}")
    return destination
