"""`bake`: a model (a directory or an s3:// prefix) into a serving image, by one layer append.

1. Fetch the model (S3 → a work directory), read its `model.json` and check the files still
   digest to what it says.
2. Make sure it has a verified compiled form (`compiled/record.json` matching the model's
   digest and passed); if not, compile it once (`kakehashi.compile.compile_model`, which needs
   TensorFlow: bake Jobs run in the training image) and, for a model from S3, write `compiled/`
   back beside it, so the next bake of the same model reuses it and gives the same digest.
3. Make one reproducible layer at `/models/<name>/`, append it to the base serving image, push
   it as `<repository>:<service>-<model digest prefix>` and return the image digest.

Nothing here imports kopf or the Kubernetes client: it runs inside the bake Job's container.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from kakehashi.bake.append import AppendResult, append_layer
from kakehashi.bake.layer import Compression, model_layer
from kakehashi.bake.registry import CredentialProvider, Credentials, Reference, Registry
from kakehashi.modelformat import COMPILED_DIR, MODEL_MANIFEST, ModelArtifact
from kakehashi.modelformat.compiled import read_record, why_unverified

Progress = Callable[[str], None]

LABEL_SOURCE: Final = "org.opencontainers.image.source"
LABEL_REVISION: Final = "org.opencontainers.image.revision"
LABEL_MODEL_DIGEST: Final = "kakehashi.dev/model-digest"
LABEL_MODEL_NAME: Final = "kakehashi.dev/model-name"
LABEL_MODEL_URI: Final = "kakehashi.dev/model-uri"
LABEL_TRAINING_RUN: Final = "kakehashi.dev/training-run"
LABEL_METRICS: Final = "kakehashi.dev/metrics"
LABEL_COMPILED: Final = "kakehashi.dev/compiled"
MODEL_NAME_ENV: Final = "KAKEHASHI_MODEL_NAME"


class BakeError(RuntimeError):
    """The bake cannot go on; `reason` is a CamelCase word for the ModelService condition."""

    def __init__(self, message: str, reason: str = "BakeFailed") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class BakeResult:
    image: str
    """`registry/repository@sha256:...`, what the Deployment pins."""
    tag: str
    """`registry/repository:tag`, the human name of the same image."""
    digest: str
    media_type: str
    base_digest: str
    model_digest: str
    layer_digest: str
    layer_diff_id: str
    layer_size: int
    compiled: bool
    compiled_reason: str | None
    bytes_uploaded: int
    seconds: float
    platforms: list[dict[str, str]] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """The few fields the operator reads back, small enough for a termination message
        (Kubernetes keeps 4096 bytes of it)."""
        return {"image": self.image, "tag": self.tag, "digest": self.digest,
                "modelDigest": self.model_digest, "layerDigest": self.layer_digest,
                "bytesUploaded": self.bytes_uploaded, "compiled": self.compiled,
                "seconds": self.seconds}


# -- compile hook ----------------------------------------------------------------------------

CompileHook = Callable[[Path, Progress], None]


def compile_with_tensorflow(model_dir: Path, progress: Progress) -> None:
    """The default compile hook: `kakehashi.compile.compile_model` (imports TensorFlow)."""
    try:
        from kakehashi.compile import CompileError, compile_model
    except ImportError as error:  # numpy missing: not an image that can compile
        raise BakeError(f"the model has no verified compiled form and this image cannot "
                        f"compile it ({error}): bake in the training image",
                        reason="CompileUnavailable") from error
    try:
        compile_model(model_dir, progress=progress)
    except ImportError as error:
        raise BakeError(f"the model has no verified compiled form and TensorFlow is not "
                        f"installed here ({error}): bake in the training image, or bake "
                        "without compiling (the full serving image serves the SavedModel)",
                        reason="CompileUnavailable") from error
    except CompileError as error:
        raise BakeError(f"the model cannot be compiled: {error}", reason="CompileFailed") from error


def ensure_compiled(model_dir: Path, digest: str, hook: CompileHook | None,
                    progress: Progress) -> tuple[bool, str | None, bool]:
    """(verified, why not, compiled now). A model with no SavedModel is taken as it is."""
    record = read_record(model_dir)
    why = "never compiled" if record is None else why_unverified(model_dir, record, digest)
    if why is None:
        progress("Compiled form: verified")
        return True, None, False
    if hook is None or not (model_dir / "savedmodel").is_dir():
        progress(f"Compiled form: none verified ({why}); baking without compiling")
        return False, why, False
    progress(f"Compiled form: {why}; compiling once")
    hook(model_dir, progress)
    record = read_record(model_dir)
    why = "the compile wrote no record" if record is None else why_unverified(
        model_dir, record, digest)
    progress("Compiled form: verified" if why is None else f"Compiled form: {why}")
    return why is None, why, True


# -- labels ----------------------------------------------------------------------------------

def lineage_labels(*, model_name: str, model_digest: str, artifact: ModelArtifact | None,
                   training_run: str | None, metrics: Mapping[str, float] | None,
                   source: str | None, revision: str | None, compiled: bool,
                   extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The labels a baked image carries: where its code and model came from. Only values that
    belong to the model itself (never a local path or a time), so a re-bake is identical."""
    lineage = artifact.lineage if artifact else None
    git = lineage.git if lineage else None
    run = training_run
    if run is None and lineage and lineage.run_name:
        run = f"{lineage.namespace}/{lineage.run_name}" if lineage.namespace else lineage.run_name
    labels = {
        LABEL_MODEL_DIGEST: model_digest,
        LABEL_MODEL_NAME: model_name,
        LABEL_COMPILED: "true" if compiled else "false",
    }
    if source or (git and git.url):
        labels[LABEL_SOURCE] = str(source or (git.url if git else ""))
    if revision or (git and (git.commit or git.revision)):
        labels[LABEL_REVISION] = str(revision or (git.commit or git.revision if git else ""))
    if run:
        labels[LABEL_TRAINING_RUN] = run
    chosen = metrics if metrics is not None else (artifact.metrics if artifact else None)
    if chosen:
        labels[LABEL_METRICS] = json.dumps(dict(chosen), sort_keys=True, separators=(",", ":"))
    if artifact and artifact.uri:
        labels[LABEL_MODEL_URI] = artifact.uri
    labels.update(extra or {})
    return labels


def image_tag(service: str, model_digest: str) -> str:
    """`<service>-<first 16 hex digits of the model digest>`: one tag per model of a service."""
    hexdigits = model_digest.partition(":")[2] or model_digest
    tag = f"{service}-{hexdigits[:16]}"
    if len(tag) > 128:
        tag = f"{service[:128 - 17]}-{hexdigits[:16]}"
    return tag


# -- the bake --------------------------------------------------------------------------------

def _read_artifact(model_dir: Path) -> ModelArtifact | None:
    path = model_dir / MODEL_MANIFEST
    if not path.exists():
        return None
    return ModelArtifact.model_validate_json(path.read_bytes())


def _fetch(model: str, workdir: Path, s3_client: Any, progress: Progress) -> Path:
    from kakehashi.artifacts import download_directory

    if s3_client is None:
        import boto3  # the bake image has it; endpoint from AWS_ENDPOINT_URL_S3 when set

        s3_client = boto3.client("s3")
    started = time.monotonic()
    shutil.rmtree(workdir / "model", ignore_errors=True)  # never files of an earlier download
    destination = download_directory(s3_client, model, workdir / "model")
    size = sum(p.stat().st_size for p in destination.rglob("*") if p.is_file())
    progress(f"Model: downloaded {model} ({size / 1e6:.1f} MB) in "
             f"{time.monotonic() - started:.1f}s")
    return destination


def _write_back(model: str, model_dir: Path, s3_client: Any, progress: Progress) -> None:
    """Upload `compiled/` beside the model in S3, so the next bake needs no compile."""
    from kakehashi.artifacts import parse_s3_uri

    if s3_client is None:
        import boto3

        s3_client = boto3.client("s3")
    bucket, prefix = parse_s3_uri(model)
    compiled = model_dir / COMPILED_DIR
    files = sorted(p for p in compiled.rglob("*") if p.is_file())
    # record.json last: its presence means the compiled form is complete.
    files.sort(key=lambda p: p.name == "record.json")
    for path in files:
        key = prefix + path.relative_to(model_dir).as_posix()
        s3_client.upload_file(str(path), bucket, key)
    progress(f"Compiled form: written back to {model}{COMPILED_DIR}/")


def registry_for(address: str, *, credentials: Credentials | CredentialProvider | None,
                 insecure: bool | None, chunk_size: int | None) -> Registry:
    kwargs: dict[str, Any] = {"credentials": credentials, "insecure": insecure}
    if chunk_size:
        kwargs["chunk_size"] = chunk_size
    return Registry(address, **kwargs)


def bake(model: str | Path, base_image: str, target_repository: str, *, service: str,
         model_name: str = "model", tag: str | None = None,
         training_run: str | None = None, metrics: Mapping[str, float] | None = None,
         source: str | None = None, revision: str | None = None,
         labels: Mapping[str, str] | None = None,
         expected_digest: str | None = None, verify_digest: bool = True,
         compile_hook: CompileHook | None = compile_with_tensorflow, write_back: bool = True,
         compression: Compression = "none",
         credentials: Credentials | CredentialProvider | None = None,
         base_credentials: Credentials | CredentialProvider | None = None,
         insecure: bool | None = None, chunk_size: int | None = None,
         s3_client: Any = None, workdir: Path | None = None,
         progress: Progress | None = None,
         registries: Mapping[str, Registry] | None = None) -> BakeResult:
    """Bake `model` onto `base_image` and push it to `target_repository` (host/repository).

    `registries` may hand in ready clients by host (tests count their bytes with them).
    Raises BakeError (model problems) or RegistryError (registry problems; `temporary` says
    whether baking again later can succeed: uploaded blobs are kept, so it resumes).
    """
    started = time.monotonic()
    say = progress or (lambda _: None)
    own_workdir = workdir is None
    work = Path(tempfile.mkdtemp(prefix="kakehashi-bake-")) if workdir is None else workdir
    work.mkdir(parents=True, exist_ok=True)
    clients: dict[str, Registry] = dict(registries or {})
    opened: list[Registry] = []
    cleanup: list[Callable[[], None]] = []
    try:
        from_s3 = isinstance(model, str) and model.startswith("s3://")
        model_dir = _fetch(str(model), work, s3_client, say) if from_s3 else Path(model)
        artifact = _read_artifact(model_dir)
        # One pass over the model: the layer's digests and the model's content digest.
        layer = model_layer(model_dir, model_name, output_dir=work, compression=compression,
                            progress=say)
        cleanup.append(layer.remove)
        digest = layer.model_digest
        claimed = expected_digest or (artifact.digest if artifact else None)
        if verify_digest and claimed and claimed != digest:
            raise BakeError(f"the model files digest to {digest}, not {claimed} as recorded: "
                            "the artifact is incomplete or was changed after training",
                            reason="ModelDigestMismatch")
        say(f"Model {model_name}: {digest}")
        compiled, why, compiled_now = ensure_compiled(model_dir, digest, compile_hook, say)
        if compiled_now:  # compiled/ is new: the layer holds it too
            layer.remove()
            layer = model_layer(model_dir, model_name, output_dir=work,
                                compression=compression, progress=say)
            cleanup.append(layer.remove)
            if from_s3 and write_back:
                _write_back(str(model), model_dir, s3_client, say)

        base = Reference.parse(base_image)
        target = Reference.parse(f"{target_repository}:{tag or image_tag(service, digest)}")

        def client(host: str, creds: Credentials | CredentialProvider | None) -> Registry:
            if host not in clients:
                clients[host] = registry_for(host, credentials=creds, insecure=insecure,
                                             chunk_size=chunk_size)
                opened.append(clients[host])
            return clients[host]

        target_client = client(target.registry, credentials)
        # The target's credentials never go to another registry the base comes from.
        source_client = client(base.registry, base_credentials or (
            credentials if base.registry == target.registry else None))
        before = target_client.stats.bytes_uploaded
        before_source = (source_client.stats.bytes_uploaded
                         if source_client is not target_client else 0)

        all_labels = lineage_labels(model_name=model_name, model_digest=digest,
                                    artifact=artifact, training_run=training_run,
                                    metrics=metrics, source=source, revision=revision,
                                    compiled=compiled, extra=labels)
        result: AppendResult = append_layer(
            source_client, target_client, base, target, layer, labels=all_labels,
            env={MODEL_NAME_ENV: model_name},
            created_by=f"kakehashi bake: COPY model {model_name} {digest} {layer.root}/",
            comment="kakehashi.dev", created=artifact.created_at if artifact else None,
            progress=say)
        uploaded = target_client.stats.bytes_uploaded - before
        if source_client is not target_client:
            uploaded += source_client.stats.bytes_uploaded - before_source
        seconds = round(time.monotonic() - started, 3)
        say(f"Image: {result.image} ({target}), {uploaded / 1e6:.1f} MB uploaded, "
            f"{seconds:.2f}s")
        return BakeResult(
            image=result.image, tag=str(target), digest=result.digest,
            media_type=result.media_type, base_digest=result.base_digest, model_digest=digest,
            layer_digest=layer.digest, layer_diff_id=layer.diff_id, layer_size=layer.size,
            compiled=compiled, compiled_reason=why, bytes_uploaded=uploaded, seconds=seconds,
            platforms=[{"platform": p.platform, "digest": p.digest} for p in result.platforms],
            labels=all_labels, stats=target_client.stats.as_dict())
    finally:
        for undo in cleanup:
            undo()
        for opened_client in opened:
            opened_client.close()
        if own_workdir:
            shutil.rmtree(work, ignore_errors=True)
