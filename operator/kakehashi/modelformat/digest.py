"""The content digest of a model: names and bytes only, so copies and downloads agree."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from kakehashi.modelformat.layout import MODEL_MANIFEST, RUN_DIR

DIGEST_ALGORITHM: Final = "sha256"
_CHUNK: Final = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def model_files(root: Path, *, exclude_dirs: tuple[str, ...] = ()) -> Iterator[tuple[str, Path]]:
    """The files that make up a model under `root`, as (posix relative path, path), sorted.

    `model.json` is excluded: it carries the digest, so it cannot be part of what is digested.
    So are `run/` (records of the run, not the model) and every file under one of
    `exclude_dirs` (relative directory names).
    """
    found: list[tuple[str, Path]] = []
    prefixes = tuple(f"{d.strip('/')}/" for d in (RUN_DIR, *exclude_dirs))
    for directory, _, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            relative = path.relative_to(root).as_posix()
            if relative != MODEL_MANIFEST and not relative.startswith(prefixes):
                found.append((relative, path))
    yield from sorted(found)


def content_digest(root: Path, *, exclude_dirs: tuple[str, ...] = ()) -> str:
    """`sha256:<hex>` over the model files under `root`: their relative paths and contents.

    Only names and bytes count, never mtimes, permissions or the order the filesystem lists
    entries in, so the same model digests the same after a copy, a download or a re-upload.
    Each line is `<sha256 of content>  <path>` (the `sha256sum` format, so the value can be
    checked by hand with `sha256sum` and `sort`), and the digest is the sha256 of those lines.
    """
    manifest = hashlib.sha256()
    for relative, path in model_files(root, exclude_dirs=exclude_dirs):
        manifest.update(f"{file_sha256(path)}  {relative}\n".encode())
    return f"{DIGEST_ALGORITHM}:{manifest.hexdigest()}"
