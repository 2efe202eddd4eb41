"""Images for the local real nodes, pushed to the local registry, built without Docker Hub.

The pause image (every pod's sandbox) is one reproducible layer holding the `pause` binary
built from tools/pause: the same binary always gives the same digest. The base image is
Debian bookworm made by mmdebstrap, one layer, cached across `dev down`.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from kakehashi.dev import tools
from kakehashi.dev.environment import cache_dir
from kakehashi.oci import (
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Registry,
    RegistryError,
    sha256_digest,
)


def reproducible_layer(files: dict[str, tuple[bytes, int]]) -> tuple[bytes, str]:
    """A gzipped tar of `files` (path -> (content, mode)) with sorted entries, owner root and
    mtime 0; returns it and the digest of the uncompressed tar (the config's diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, (data, mode) in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0), sha256_digest(raw.getvalue())


def image_config(config: Mapping[str, object], diff_id: str, created_by: str) -> bytes:
    """A one-layer image's config. The history entry is not decoration: buildah refuses to
    build on an image whose history lists fewer layers than it has."""
    return json.dumps({
        "architecture": "amd64", "os": "linux", "created": EPOCH, "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": EPOCH, "created_by": created_by}],
    }, sort_keys=True).encode()


EPOCH = "1970-01-01T00:00:00Z"


def push_pause_image(registry: str, pause_binary: Path, reference: str) -> str:
    """Push the pause image as `reference` (registry/repository:tag); return its digest."""
    repository, tag = reference.removeprefix(f"{registry}/").rsplit(":", 1)
    layer, diff_id = reproducible_layer({"pause": (pause_binary.read_bytes(), 0o755)})
    config = image_config({"Entrypoint": ["/pause"], "User": "65535:65535"}, diff_id,
                          "pause from tools/pause")
    client = Registry(registry, insecure=True)
    manifest = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "size": len(config),
                   "digest": client.push_blob(repository, config)},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "size": len(layer),
                    "digest": client.push_blob(repository, layer)}],
    }
    return client.push_manifest(repository, tag, manifest)


# --- the Debian base image (no Docker Hub) ---------------------------------------------------

BASE_REPOSITORY = "kakehashi/python"
BASE_TAG = "3.11-bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# A virtualenv at /usr/local makes Debian's python3 look like the python:3.11-slim images the
# Dockerfiles default to: `python` and `pip` in /usr/local/bin, packages (including those of
# `pip install --prefix=/install` copied to /usr/local) in /usr/local/lib/python3.11/
# site-packages, and no PEP 668 refusal.
BASE_HOOKS = (
    'chroot "$1" python3 -m venv /usr/local',
    'rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/usr/local/bin/Activate.ps1',
)
BASE_CONFIG = {
    "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG=C.UTF-8"],
    "Cmd": ["python3"],
}


def base_image(registry: str) -> str:
    return f"{registry}/{BASE_REPOSITORY}:{BASE_TAG}"


def _base_command(output: Path) -> list[str]:
    hooks = [f"--customize-hook={hook}" for hook in BASE_HOOKS]
    return ["mmdebstrap", "--variant=apt", "--quiet", f"--include={','.join(BASE_PACKAGES)}",
            *hooks, "bookworm", str(output)]


def ensure_base_image(registry: str, progress: Callable[[str], None]) -> str:
    """Build (once per recipe, cached across `dev down`) and push the Debian base image;
    return its reference."""
    key = hashlib.sha256(json.dumps([_base_command(Path("-")), BASE_CONFIG]).encode()
                         ).hexdigest()[:12]
    cache = cache_dir() / "images" / f"python-{BASE_TAG}-{key}"
    layer_path, meta_path = cache / "layer.tar.gz", cache / "layer.json"
    if not meta_path.exists():
        progress("Building the base image (Debian bookworm, python3 3.11) with mmdebstrap, "
                 "first time only")
        started = time.monotonic()
        cache.mkdir(parents=True, exist_ok=True)
        raw = cache / "rootfs.tar"
        result = subprocess.run(_base_command(raw), capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"mmdebstrap failed:\n{result.stderr[-3000:]}")
        diff_id = _sha256_file(raw)
        with raw.open("rb") as src, layer_path.open("wb") as out, \
                gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1, mtime=0) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        raw.unlink()
        meta_path.write_text(json.dumps({"diff_id": diff_id}))
        progress(f"Built the base image in {time.monotonic() - started:.0f}s "
                 f"({layer_path.stat().st_size >> 20} MiB compressed)")
    diff_id = json.loads(meta_path.read_text())["diff_id"]
    reference = base_image(registry)
    client = Registry(registry, insecure=True)
    layer = layer_path.read_bytes()
    config = image_config(BASE_CONFIG, diff_id, "mmdebstrap " + " ".join(BASE_PACKAGES))
    manifest = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "size": len(config),
                   "digest": client.push_blob(BASE_REPOSITORY, config)},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "size": len(layer),
                    "digest": client.push_blob(BASE_REPOSITORY, layer)}],
    }
    client.push_manifest(BASE_REPOSITORY, BASE_TAG, manifest)
    return reference


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


# --- the project's images, built daemonlessly from its own Dockerfiles -----------------------

@dataclass(frozen=True)
class ProjectImage:
    """One image the repository's Dockerfiles make."""

    name: str
    repository: str
    dockerfile: str
    target: str | None = None
    binaries: tuple[str, ...] = ()
    """Binaries of the dev environment's Go tools the Dockerfile copies, each from a named
    build context of that name (`COPY --from=kubectl kubectl ...`)."""

    @property
    def ignorefile(self) -> Path:
        return tools.repo_root() / f"{self.dockerfile}.dockerignore"


NOTEBOOK_DOCKERFILE = "notebook-images/Dockerfile"
PROJECT_IMAGES = {
    image.name: image for image in (
        # The Jupyter notebook image is also the default training image (TensorFlow and all).
        ProjectImage("training", "kakehashi/notebook-jupyter", NOTEBOOK_DOCKERFILE,
                     target="jupyter"),
        # The other notebook images share its layers up to the server (the same Dockerfile).
        ProjectImage("code-server", "kakehashi/notebook-code-server", NOTEBOOK_DOCKERFILE,
                     target="code-server"),
        ProjectImage("jupyter-code-server", "kakehashi/notebook-jupyter-code-server",
                     NOTEBOOK_DOCKERFILE, target="jupyter-code-server"),
        # The light serving image, no model: what the operator bakes models onto.
        ProjectImage("serving", "kakehashi/inference", "inference/Dockerfile",
                     target="runtime"),
        ProjectImage("operator", "kakehashi/operator", "operator/Dockerfile", target="operator"),
        ProjectImage("gitops-bot", "kakehashi/gitops-bot", "operator/Dockerfile", target="gitops-bot",
                     binaries=("kubectl",)),
    )
}
DEFAULT_IMAGES = ("training", "serving")
"""What the tests and the demo run; `kakehashi dev images operator` builds the others."""
SKIPPED_DIRS = frozenset((".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache",
                          ".pytest_cache"))
BASE_ARG = "PYTHON_IMAGE"
"""The build argument every Dockerfile takes its Python base image from."""


def _ignore_rules(ignorefile: Path) -> list[tuple[bool, str]]:
    rules: list[tuple[bool, str]] = []
    if not ignorefile.exists():
        return rules
    for line in ignorefile.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.removeprefix("!").strip("/")
        rules.append((negated, pattern))
    return rules


def _ignored(path: str, rules: list[tuple[bool, str]]) -> bool:
    """Docker's .dockerignore semantics: the last rule matching the path or one of its
    parent directories decides; `**` matches any number of directories."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for negated, pattern in rules:
        candidates = {pattern}
        if pattern.startswith("**/"):
            candidates.add(pattern[3:])
        if any(fnmatch.fnmatchcase(prefix, c) for prefix in prefixes for c in candidates):
            ignored = not negated
    return ignored


def context_files(image: ProjectImage) -> list[str]:
    """The build context's files (relative to the repository root), as the ignore file
    leaves them."""
    root = tools.repo_root()
    rules = _ignore_rules(image.ignorefile)
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS)
        for filename in sorted(filenames):
            rel = filename if rel_dir == "." else f"{rel_dir}/{filename}"
            if not _ignored(rel, rules):
                files.append(rel)
    return files


def binary_contexts(image: ProjectImage) -> dict[str, Path]:
    """The named build contexts of `image`: for each binary it copies, the directory of the
    dev environment's build of it (built now if missing, cached by its tool's content key)."""
    contexts: dict[str, Path] = {}
    for binary in image.binaries:
        tool = next((t for t in tools.TOOLS if binary in t.binaries), None)
        if tool is None:
            raise RuntimeError(f"image {image.name}: no tool in tools.TOOLS builds {binary!r}")
        contexts[binary] = tools.build(tool)
    return contexts


def content_key(image: ProjectImage, build_args: dict[str, str],
                contexts: dict[str, Path] | None = None) -> str:
    """Hash of the Dockerfile, its ignore file, every context file, the build arguments and
    the named contexts (their directories are named by their tool's content key): an
    unchanged image is not rebuilt."""
    root = tools.repo_root()
    digest = hashlib.sha256()
    digest.update(json.dumps([image.dockerfile, image.target, sorted(build_args.items()),
                              sorted((k, str(v)) for k, v in (contexts or {}).items())]).encode())
    for rel in [image.dockerfile, *context_files(image)]:
        path = root / rel
        digest.update(rel.encode() + b"\0")
        if path.is_file():
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    if image.ignorefile.exists():
        digest.update(image.ignorefile.read_bytes())
    return digest.hexdigest()[:16]


def _buildah(*args: str) -> list[str]:
    storage = cache_dir() / "containers"
    return ["buildah", "--root", str(storage / "storage"), "--runroot", str(BUILDAH_RUNROOT),
            "--storage-driver", "overlay", *args]


BUILDAH_RUNROOT = Path("/run/kakehashi/buildah")


def _build_mounts() -> list[str]:
    """The host's CA bundle and pip configuration, for `RUN pip install` behind this
    machine's TLS setup: mounted read-only at build time, never part of the image."""
    mounts = []
    for path in (Path("/etc/ssl/certs/ca-certificates.crt"), Path("/etc/pip.conf")):
        if path.is_file():
            mounts += ["-v", f"{path}:{path}:ro"]
    return mounts


def in_registry(registry: str, reference: str) -> bool:
    if not reference.startswith(f"{registry}/"):
        return False
    repository, tag = reference.removeprefix(f"{registry}/").rsplit(":", 1)
    return _registry_has(registry, repository, tag)


def _registry_has(registry: str, repository: str, tag: str) -> bool:
    try:
        Registry(registry, insecure=True).pull_manifest(repository, tag)
    except RegistryError:
        return False
    return True


def build_images(registry: str, names: Iterable[str], progress: Callable[[str], None]
                 ) -> dict[str, str]:
    """Build (unless unchanged) and push each named project image; name -> reference."""
    if shutil.which("buildah") is None:
        raise RuntimeError("buildah is missing (scripts/bootstrap.sh installs it)")
    base = base_image(registry)
    built: dict[str, str] = {}
    for name in names:
        image = PROJECT_IMAGES[name]
        build_args = {BASE_ARG: base}
        contexts = binary_contexts(image)
        key = content_key(image, build_args, contexts)
        reference = f"{registry}/{image.repository}:{key}"
        built[name] = reference
        if _registry_has(registry, image.repository, key):
            progress(f"Image {name}: {reference} unchanged, in the registry")
            continue
        local = subprocess.run(_buildah("images", "--quiet", reference), capture_output=True,
                               text=True)
        if local.returncode != 0 or not local.stdout.strip():
            progress(f"Image {name}: building {image.dockerfile}"
                     f"{f' (target {image.target})' if image.target else ''} with buildah")
            started = time.monotonic()
            cmd = _buildah(
                "build", "--isolation", "chroot", "--network", "host", "--layers",
                "--ulimit", "nofile=16384:16384", "--ulimit", "nproc=16384:16384",
                "--tls-verify=false", *_build_mounts(),
                *(arg for k, v in build_args.items() for arg in ("--build-arg", f"{k}={v}")),
                *(arg for k, v in contexts.items() for arg in ("--build-context", f"{k}={v}")),
                *(("--target", image.target) if image.target else ()),
                "--ignorefile", str(image.ignorefile),
                "-f", str(tools.repo_root() / image.dockerfile), "-t", reference,
                str(tools.repo_root()))
            _run_with_progress(cmd, f"image {name}", progress)
            progress(f"Image {name}: built in {time.monotonic() - started:.0f}s")
            _prune(registry, image.repository, keep=reference)
        started = time.monotonic()
        # Uncompressed: the registry is on this machine, and gzip of the training image's
        # 3 GB took 100 s here (containerd then skips decompressing it too).
        _run_with_progress(_buildah("push", "--tls-verify=false", "--disable-compression",
                                    reference, f"docker://{reference}"), f"push {name}",
                           progress)
        progress(f"Image {name}: pushed {reference} in {time.monotonic() - started:.0f}s")
    return built


def _prune(registry: str, repository: str, keep: str) -> None:
    """Drop the repository's earlier builds, so the build cache keeps one build of each
    image plus the intermediate layers `--layers` reuses (not pruned: they are the cache)."""
    listed = subprocess.run(_buildah("images", "--format", "{{.Name}}:{{.Tag}}"),
                            capture_output=True, text=True)
    stale = [ref for ref in listed.stdout.split()
             if ref.rsplit(":", 1)[0].endswith(f"/{repository}") and ref != keep]
    if stale:
        subprocess.run(_buildah("rmi", *stale), capture_output=True)


def _run_with_progress(cmd: list[str], what: str, progress: Callable[[str], None]) -> None:
    """Run `cmd`, reporting its latest step (a Dockerfile's STEP line) every 20 s."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    tail: list[str] = []
    last_report, last_step = time.monotonic(), ""
    for line in proc.stdout:
        tail = [*tail[-60:], line.rstrip()]
        if line.startswith("STEP "):
            last_step = line.strip()[:120]
        if time.monotonic() - last_report > 20 and last_step:
            progress(f"  {what}: {last_step}")
            last_report = time.monotonic()
    if proc.wait() != 0:
        raise RuntimeError(f"{what} failed ({' '.join(cmd[:8])} ...):\n" + "\n".join(tail))


def release_build_mounts() -> None:
    """buildah's overlay storage keeps a private bind mount of its own directory: undone
    at `dev down` (the storage itself is a cache, kept)."""
    from kakehashi.dev.node import unmount_under

    unmount_under(cache_dir() / "containers", BUILDAH_RUNROOT)
