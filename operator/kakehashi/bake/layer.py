"""One reproducible tar layer from a model directory: the same model gives the same digests.

Only names and bytes count, as in the model's content digest: entries are sorted by path
component, every mtime is 0, files are 0644 and directories 0755, owned by the serving image's
non-root user (uid/gid 10001, see inference/Dockerfile) under `/models/<name>/`, with empty user
and group names. Directories are the parents of files only: an object store has no empty
directories, so a model downloaded from S3 and the same model on disk make the same layer.

The tar stream is generated, never held: one pass reads every file once and computes the
layer's diff_id and digest and, from the same bytes, the model's content digest (the formula
of `kakehashi.modelformat.compiled.source_digest`), so a 5 GB model never sits in memory. An
uncompressed layer is not even written to disk: the upload generates the same stream again
(restartable at any offset, for a retried chunk), which on this machine saved writing 100 MB
to a temporary file (0.3-0.8 s under load) per bake; the registry checks the digest at the
end, so a file changed between the two passes fails the push instead of corrupting it. A gzip
layer is written to a temporary file once (compressing twice would cost more). The layer is
uncompressed by default, by measurement: on 100 MB of weights (random bytes) writing the layer took 0.2-0.3 s uncompressed
and 5.2-5.6 s with gzip level 1 (zlib), which made it 0.02 % larger, not smaller; `zstd -1`
took 0.21 s and saved nothing either, and would add a dependency and need containerd >= 1.5.
An uncompressed layer also costs nothing to unpack at every pull, and its digest (= its
diff_id) does not depend on the zlib version of the machine that baked it. gzip stays
available, with a fixed header (no name, mtime 0), for registries that insist on it.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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
from kakehashi.modelformat import COMPILED_DIR, DIGEST_ALGORITHM, MODEL_MANIFEST, RUN_DIR

Compression = Literal["none", "gzip"]
COMPRESSIONS: Final[tuple[Compression, ...]] = ("none", "gzip")

MODELS_ROOT: Final = "models"
SERVING_UID: Final = 10001
SERVING_GID: Final = 10001
FILE_MODE: Final = 0o644
DIR_MODE: Final = 0o755
_BUFFER: Final = 4 << 20
_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# What Python's tarfile writes, byte for byte: PAX format, UTF-8 names, 512-byte blocks, two
# zero blocks at the end, padded to a 20-block record (a unit test holds the two equal).
_BLOCK: Final = tarfile.BLOCKSIZE
_RECORD: Final = tarfile.RECORDSIZE
_ENCODING: Final = "utf-8"

Progress = Callable[[str], None]


class LayerError(ValueError):
    """The model directory cannot be made into a layer (missing, empty, unsafe name)."""


@dataclass(frozen=True)
class Entry:
    """One tar entry: its header, and for a file where its bytes are and its model path."""

    info: tarfile.TarInfo
    source: Path | None = None
    relative: str | None = None  # path relative to the model directory (files only)


@dataclass(frozen=True)
class Layer:
    """A layer blob (generated on demand, or on disk) and what manifests and configs say."""

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
    model_digest: str
    """The model's content digest (`compiled/` and `model.json` left out), from the same pass."""
    path: Path | None = None
    """The blob on disk, if it was written (gzip); else it is generated from `entries`."""
    entries: tuple[Entry, ...] = field(default=(), repr=False)

    def media_type(self, manifest_media_type: str) -> str:
        """The layer's media type in a manifest of `manifest_media_type` (Docker or OCI)."""
        docker = manifest_media_type in (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
        if self.compression == "gzip":
            return DOCKER_LAYER_GZIP if docker else OCI_LAYER_GZIP
        return DOCKER_LAYER if docker else OCI_LAYER

    def open(self, offset: int = 0) -> Iterator[bytes]:
        """The blob's bytes from `offset` on, in pieces of at most a few MiB."""
        if self.path is None:
            return tar_stream(self.entries, skip=offset)
        return _read_file(self.path, offset)

    def remove(self) -> None:
        """Delete the blob file, if there is one."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _read_file(path: Path, offset: int) -> Iterator[bytes]:
    with path.open("rb") as stream:
        stream.seek(offset)
        while data := stream.read(_BUFFER):
            yield data


def _split(relative: str) -> tuple[str, ...]:
    return tuple(relative.split("/"))


def model_entries(model_dir: Path) -> list[tuple[str, Path]]:
    """The model's regular files as (posix path relative to `model_dir`, path), sorted by path
    component. Symbolic links to files count as the files they name (their bytes are what the
    model is); special files are refused. `run/` (records of the training run, such as its
    executed notebook) is no part of the model and stays out of the image."""
    if not model_dir.is_dir():
        raise LayerError(f"no model directory at {model_dir}")
    found: list[tuple[str, Path]] = []
    for directory, _, names in os.walk(model_dir):
        for name in names:
            path = Path(directory) / name
            relative = path.relative_to(model_dir).as_posix()
            if relative.startswith(f"{RUN_DIR}/"):
                continue
            if not path.is_file():
                raise LayerError(f"{path} is not a regular file: a model holds files only")
            found.append((relative, path))
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


def layer_entries(model_dir: Path, *, name: str, uid: int = SERVING_UID, gid: int = SERVING_GID,
                  models_root: str = MODELS_ROOT) -> tuple[Entry, ...]:
    """The tar entries of the layer, sorted: `models` (root-owned, as the image's own
    directories are), then the model's directories and files, owned by the serving user."""
    files = model_entries(model_dir)
    prefix = f"{models_root}/{name}"
    directories: set[str] = set()
    for relative, _ in files:
        parts = _split(f"{prefix}/{relative}")[:-1]
        for depth in range(1, len(parts) + 1):
            directories.add("/".join(parts[:depth]))
    entries = [Entry(_info(d, directory=True, uid=0 if d == models_root else uid,
                           gid=0 if d == models_root else gid)) for d in directories]
    for relative, path in files:
        entries.append(Entry(_info(f"{prefix}/{relative}", directory=False,
                                   size=path.stat().st_size, uid=uid, gid=gid), path, relative))
    entries.sort(key=lambda entry: _split(entry.info.name))
    return tuple(entries)


def tar_stream(entries: tuple[Entry, ...] | list[Entry], *, skip: int = 0,
               on_file: Callable[[str, bytes], None] | None = None) -> Iterator[bytes]:
    """The tar of `entries`, from byte `skip` on (files before it are not read). `on_file`
    sees each file's bytes as they pass (for its content digest; only when skip is 0)."""
    position = 0

    def cut(data: bytes) -> bytes:
        nonlocal position
        start = max(0, skip - position)
        position += len(data)
        return data[start:] if start < len(data) else b""

    for entry in entries:
        header = entry.info.tobuf(tarfile.PAX_FORMAT, _ENCODING, "surrogateescape")
        if piece := cut(header):
            yield piece
        size = entry.info.size
        if entry.source is not None:
            if position + size <= skip:
                position += size
            else:
                with entry.source.open("rb") as stream:
                    start = max(0, skip - position)
                    stream.seek(start)
                    position += start
                    left = size - start
                    while left > 0:
                        data = stream.read(min(_BUFFER, left))
                        if not data:
                            raise LayerError(f"{entry.source} shrank while it was read")
                        left -= len(data)
                        position += len(data)
                        if on_file is not None and entry.relative is not None:
                            on_file(entry.relative, data)
                        yield data
            if piece := cut(tarfile.NUL * ((-size) % _BLOCK)):
                yield piece
    if piece := cut(tarfile.NUL * (2 * _BLOCK)):
        yield piece
    if piece := cut(tarfile.NUL * ((-position) % _RECORD)):
        yield piece


class _FileDigests:
    """sha256 of each model file as its bytes pass, and the model digest from them."""

    def __init__(self) -> None:
        self.hashes: dict[str, hashlib._Hash] = {}

    def __call__(self, relative: str, data: bytes) -> None:
        if relative not in self.hashes:
            self.hashes[relative] = hashlib.sha256()
        self.hashes[relative].update(data)

    def model_digest(self, entries: tuple[Entry, ...]) -> str:
        lines = hashlib.sha256()
        relatives = sorted(e.relative for e in entries if e.relative is not None)
        for relative in relatives:
            if relative == MODEL_MANIFEST or relative.startswith(COMPILED_DIR + "/"):
                continue
            known = self.hashes.get(relative)
            value = known.hexdigest() if known is not None else hashlib.sha256().hexdigest()
            lines.update(f"{value}  {relative}\n".encode())
        return f"{DIGEST_ALGORITHM}:{lines.hexdigest()}"


def model_layer(model_dir: Path, name: str, *, output_dir: Path | None = None,
                compression: Compression = "none", gzip_level: int = 1,
                uid: int = SERVING_UID, gid: int = SERVING_GID,
                models_root: str = MODELS_ROOT, spool: bool = False,
                progress: Progress | None = None) -> Layer:
    """The layer holding `model_dir` at `/<models_root>/<name>/`, digested in one pass.

    Uncompressed (the default) and not `spool`: nothing is written, the upload generates the
    bytes again. gzip (or `spool`): the blob is written to a temporary file under `output_dir`
    (default: the system's temporary directory); `Layer.remove()` deletes it.
    """
    if not _NAME.match(name):
        raise LayerError(f"model name {name!r}: letters, digits, '.', '_' and '-' only")
    if compression not in COMPRESSIONS:
        raise LayerError(f"compression {compression!r}: one of {', '.join(COMPRESSIONS)}")
    started = time.monotonic()
    entries = layer_entries(model_dir, name=name, uid=uid, gid=gid, models_root=models_root)
    digests = _FileDigests()
    tar_hash, size = hashlib.sha256(), 0
    path: Path | None = None
    blob_hash, blob_size = tar_hash, 0
    try:
        if compression == "none" and not spool:
            for data in tar_stream(entries, on_file=digests):
                tar_hash.update(data)
                size += len(data)
            blob_size = size
        else:
            handle, temporary = tempfile.mkstemp(prefix=f"layer-{name}-", suffix=".tar",
                                                 dir=output_dir)
            path = Path(temporary)
            with os.fdopen(handle, "wb", buffering=_BUFFER) as raw:
                blob = _Hashing(raw)
                if compression == "gzip":
                    # filename "" and mtime 0: a fixed gzip header, only the bytes decide.
                    with gzip.GzipFile(filename="", mode="wb", compresslevel=gzip_level,
                                       fileobj=blob, mtime=0) as zipped:
                        for data in tar_stream(entries, on_file=digests):
                            tar_hash.update(data)
                            size += len(data)
                            zipped.write(data)
                else:
                    for data in tar_stream(entries, on_file=digests):
                        tar_hash.update(data)
                        size += len(data)
                        blob.write(data)
            blob_hash, blob_size = blob.hash, blob.size
    except BaseException:
        if path is not None:
            path.unlink(missing_ok=True)
        raise
    diff_id = "sha256:" + tar_hash.hexdigest()
    layer = Layer(digest="sha256:" + blob_hash.hexdigest(), diff_id=diff_id, size=blob_size,
                  compression=compression,
                  files=tuple(e.info.name for e in entries if e.source is not None),
                  root=f"/{models_root}/{name}", model_digest=digests.model_digest(entries),
                  path=path, entries=entries)
    if progress is not None:
        progress(f"Layer: {len(layer.files)} files, {layer.size / 1e6:.1f} MB ({compression}"
                 f"{', on disk' if path else ', generated on upload'}), {layer.digest[:19]}…,"
                 f" in {time.monotonic() - started:.2f}s")
    return layer


class _Hashing:
    """A write-only file object that hashes and counts what passes through to `sink`."""

    def __init__(self, sink: IO[bytes]) -> None:
        self.sink = sink
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:  # GzipFile calls write() and flush() only
        self.hash.update(data)
        self.size += len(data)
        self.sink.write(data)
        return len(data)

    def flush(self) -> None:
        self.sink.flush()
