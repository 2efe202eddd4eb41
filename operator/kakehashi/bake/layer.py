"""One reproducible tar layer from a model directory: the same model gives the same digests.

Only names and bytes count, as in the model's content digest: entries are sorted by path
component, every mtime is 0, files are 0644 and directories 0755, owned by the serving image's
non-root user (uid/gid 10001, see inference/Dockerfile) under `/models/<name>/`, with empty user
and group names. Directories are the parents of files only: an object store has no empty
directories, so a model downloaded from S3 and the same model on disk make the same layer.

The layer is streamed to a file while its diff_id (sha256 of the tar) and digest (sha256 of the
blob) are computed, so a 5 GB model never sits in memory. It is uncompressed by default:
weights are random-looking bytes that gzip barely shrinks, gzip costs a pass over every byte at
bake time and again at every pull, and an uncompressed layer's digest does not depend on the
zlib version (`benchmarks/baking.py` and the bake package's README record the measurement).
gzip is available with a fixed header (no name, mtime 0) for registries that insist on it.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final, Literal

from kakehashi.bake.mediatypes import (
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_LAYER,
    OCI_LAYER_GZIP,
)

Compression = Literal["none", "gzip"]
COMPRESSIONS: Final[tuple[Compression, ...]] = ("none", "gzip")

MODELS_ROOT: Final = "models"
SERVING_UID: Final = 10001
SERVING_GID: Final = 10001
FILE_MODE: Final = 0o644
DIR_MODE: Final = 0o755
_BUFFER: Final = 1 << 20
_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

Progress = Callable[[str], None]


class LayerError(ValueError):
    """The model directory cannot be made into a layer (missing, empty, unsafe name)."""


@dataclass(frozen=True)
class Layer:
    """A layer blob on disk and what a manifest and an image config say about it."""

    path: Path
    digest: str
    """sha256 of the blob as pushed (the manifest's layer digest)."""
    diff_id: str
    """sha256 of the uncompressed tar (the image config's rootfs.diff_ids entry)."""
    size: int
    compression: Compression
    files: tuple[str, ...]
    """Paths of the regular files inside the image, e.g. `models/digits/labels.json`."""
    root: str
    """Where the model sits in the image, e.g. `/models/digits`."""

    def media_type(self, manifest_media_type: str) -> str:
        """The layer's media type in a manifest of `manifest_media_type` (Docker or OCI)."""
        docker = manifest_media_type in (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
        if self.compression == "gzip":
            return DOCKER_LAYER_GZIP if docker else OCI_LAYER_GZIP
        return DOCKER_LAYER if docker else OCI_LAYER


class _Hashing:
    """A write-only file object that hashes and counts what passes through to `sink`."""

    def __init__(self, sink: IO[bytes] | None) -> None:
        self.sink = sink
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:  # tarfile and GzipFile call only write() and tell()
        self.hash.update(data)
        self.size += len(data)
        if self.sink is not None:
            self.sink.write(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        if self.sink is not None:
            self.sink.flush()

    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


def _split(relative: str) -> tuple[str, ...]:
    return tuple(relative.split("/"))


def model_entries(model_dir: Path) -> list[tuple[str, Path]]:
    """The model's regular files as (posix path relative to `model_dir`, path), sorted by path
    component. Symbolic links to files count as the files they name (their bytes are what the
    model is); special files are refused."""
    if not model_dir.is_dir():
        raise LayerError(f"no model directory at {model_dir}")
    found: list[tuple[str, Path]] = []
    for directory, _, names in os.walk(model_dir):
        for name in names:
            path = Path(directory) / name
            if not path.is_file():
                raise LayerError(f"{path} is not a regular file: a model holds files only")
            found.append((path.relative_to(model_dir).as_posix(), path))
    if not found:
        raise LayerError(f"{model_dir} holds no files")
    return sorted(found, key=lambda entry: _split(entry[0]))


def _info(name: str, *, directory: bool, size: int = 0, uid: int, gid: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = DIR_MODE if directory else FILE_MODE
    info.size = 0 if directory else size
    info.mtime = 0
    info.uid, info.gid = uid, gid
    info.uname = info.gname = ""
    return info


def write_tar(model_dir: Path, sink: _Hashing, *, name: str, uid: int, gid: int,
              models_root: str = MODELS_ROOT) -> tuple[str, ...]:
    """Write the layer's tar stream into `sink`; return the files' paths in the image."""
    entries = model_entries(model_dir)
    prefix = f"{models_root}/{name}"
    # Parents first: `models` (root-owned, as the image's own directories are), then the
    # model's directories, owned by the serving user.
    directories: set[str] = set()
    for relative, _ in entries:
        parts = _split(f"{prefix}/{relative}")[:-1]
        for depth in range(1, len(parts) + 1):
            directories.add("/".join(parts[:depth]))
    items: list[tuple[str, Path | None]] = [(d, None) for d in directories]
    items += [(f"{prefix}/{relative}", path) for relative, path in entries]
    items.sort(key=lambda item: _split(item[0]))
    files: list[str] = []
    with tarfile.TarFile(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT,  # type: ignore[arg-type]
                         copybufsize=_BUFFER) as tar:
        for path_in_image, source in items:
            owner = (0, 0) if path_in_image == models_root else (uid, gid)
            if source is None:
                tar.addfile(_info(path_in_image, directory=True, uid=owner[0], gid=owner[1]))
                continue
            with source.open("rb") as stream:
                size = os.fstat(stream.fileno()).st_size
                tar.addfile(_info(path_in_image, directory=False, size=size, uid=uid, gid=gid),
                            stream)
            files.append(path_in_image)
    return tuple(files)


def model_layer(model_dir: Path, name: str, *, output_dir: Path | None = None,
                compression: Compression = "none", gzip_level: int = 1,
                uid: int = SERVING_UID, gid: int = SERVING_GID,
                models_root: str = MODELS_ROOT, progress: Progress | None = None) -> Layer:
    """Make the layer holding `model_dir` at `/<models_root>/<name>/` in a temporary file
    under `output_dir` (default: the system's temporary directory); the caller removes it."""
    if not _NAME.match(name):
        raise LayerError(f"model name {name!r}: letters, digits, '.', '_' and '-' only")
    if compression not in COMPRESSIONS:
        raise LayerError(f"compression {compression!r}: one of {', '.join(COMPRESSIONS)}")
    started = time.monotonic()
    handle, temporary = tempfile.mkstemp(prefix=f"layer-{name}-", suffix=".tar",
                                         dir=output_dir)
    path = Path(temporary)
    try:
        with os.fdopen(handle, "wb", buffering=_BUFFER) as raw:
            blob = _Hashing(raw)
            if compression == "gzip":
                # filename "" and mtime 0: a fixed header, so only the bytes decide the digest.
                with gzip.GzipFile(filename="", mode="wb", compresslevel=gzip_level,
                                   fileobj=blob, mtime=0) as zipped:
                    tar = _Hashing(zipped)  # type: ignore[arg-type]
                    files = write_tar(model_dir, tar, name=name, uid=uid, gid=gid,
                                      models_root=models_root)
                diff_id = tar.digest()
            else:
                files = write_tar(model_dir, blob, name=name, uid=uid, gid=gid,
                                  models_root=models_root)
                diff_id = blob.digest()
        layer = Layer(path=path, digest=blob.digest(), diff_id=diff_id, size=blob.size,
                      compression=compression, files=files, root=f"/{models_root}/{name}")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if progress is not None:
        progress(f"Layer: {len(files)} files, {layer.size / 1e6:.1f} MB ({compression}), "
                 f"{layer.digest[:19]}…, in {time.monotonic() - started:.2f}s")
    return layer
