"""Server settings: one declaration each, read from the environment and the command line.

Every field is a `KAKEHASHI_<FIELD>` environment variable (pydantic-settings) and a
`kakehashi-serve --<field>` flag generated from the same field (`cli.py`), with the default and
the help text written once, here. The same image is tuned by a Deployment's `env:` (the
operator renders `ModelService.spec.batching` into it), by Lambda's function configuration, or
by flags, which win over the environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "KAKEHASHI_"
MODELS_ROOT = Path("/models")

Runtime = Literal["auto", "compiled", "convert", "savedmodel"]
BatchPolicy = Literal["follow-load", "greedy"]
Preprocess = Literal["tf", "unit", "raw"]
LogLevel = Literal["debug", "info", "warning", "error"]


class Settings(BaseSettings):
    """How one server process loads, batches and guards its model."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="forbid", env_ignore_empty=True,
        protected_namespaces=(),
    )

    model_name: str = Field(default="model", description="Name in /v2/models/{name} and metrics; "
                            "also names the default model directory")
    model_dir: Path | None = Field(
        default=None, description="Directory with savedmodel/, compiled/ and labels.json")
    host: str = Field(default="0.0.0.0", description="Address to listen on")
    port: int = Field(default=8080, ge=0, le=65535, description="Port to listen on")
    max_batch_size: int = Field(default=16, ge=1, description=(
        "Most images one model call takes. Batches are also never larger than what keeps "
        "every model worker busy (queued images / workers), so on many cores batches stay small"))
    batch_policy: BatchPolicy = Field(default="follow-load", description=(
        "follow-load: a batch takes its share of the outstanding images per model worker; "
        "greedy: everything queued, up to the maximum (one worker may run a full batch while "
        "others idle)"))
    max_wait_ms: float = Field(default=0.0, ge=0, description=(
        "How long the first queued image waits for company; on CPU 0 is best: the queue fills "
        "while the previous batch runs"))
    threads: int | None = Field(default=None, ge=1, description=(
        "Model threads (default: the container's cgroup CPU quota, not the host's cores)"))
    model_workers: int | None = Field(default=None, ge=1, description=(
        "Model calls side by side, threads split among them (default: one per thread, the best "
        "throughput; 1: the lowest latency when idle)"))
    runtime: Runtime = Field(default="auto", description=(
        "compiled: the verified compiled/ model on LiteRT, no TensorFlow; savedmodel: the "
        "SavedModel on TensorFlow; convert: convert to TFLite at every start; auto: compiled "
        "if verified, the SavedModel if the compile failed, convert if never compiled"))
    preprocess: Preprocess = Field(default="tf", description=(
        "Pixel scaling the model was trained with: tf [-1, 1], unit [0, 1], raw [0, 255]"))
    parity_atol: float = Field(default=1e-5, ge=0, description=(
        "Absolute tolerance of TFLite outputs against the SavedModel's (runtime convert)"))
    parity_rtol: float = Field(default=1e-3, ge=0, description="Relative tolerance of that check")
    max_images: int = Field(default=32, ge=1, description="Most images in one request")
    max_image_bytes: int = Field(default=8 * 1024 * 1024, ge=1, description=(
        "Largest encoded image, inline or downloaded (bytes)"))
    max_request_bytes: int = Field(default=24 * 1024 * 1024, ge=1, description=(
        "Largest request body (bytes)"))
    max_image_pixels: int = Field(default=36_000_000, ge=1, description=(
        "Largest decoded image (width x height), refused before decoding (413)"))
    download_timeout_s: float = Field(default=5.0, gt=0, description=(
        "Deadline for fetching one image URL, DNS, redirects and body included"))
    max_downloads: int = Field(default=16, ge=1, description="Downloads in flight across all requests")
    max_redirects: int = Field(default=3, ge=0, description="Redirects followed per URL, each checked")
    url_allowlist: Annotated[tuple[str, ...], NoDecode] = Field(default=(), description=(
        "Comma-separated CIDRs or host names fetched although not public addresses"))
    allow_digest_mismatch: bool = Field(default=False, description=(
        "Serve a model whose files do not match model.json's digest (or a compiled model made "
        "from other files): the digest is the model's lineage, so only for debugging"))
    allow_non_finite: bool = Field(default=False, description=(
        "Accept nan, inf and out-of-range numbers in v2 tensors and CSV (default: 400)"))
    log_level: LogLevel = Field(default="info", description="Log level")
    access_log: bool = Field(default=False, description=(
        "One log line per request (costs throughput at high request rates)"))

    @field_validator("url_allowlist", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return parse_allowlist(value) if isinstance(value, str) else value

    @property
    def resolved_model_dir(self) -> Path:
        return self.model_dir if self.model_dir is not None else MODELS_ROOT / self.model_name

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from `env` (default: the process environment), then `overrides` (None
        values ignored), as the command line gives them."""
        given = {key: value for key, value in overrides.items() if value is not None}
        if env is None:
            return cls(**given)
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = env.get(ENV_PREFIX + name.upper())
            if raw:
                values[name] = raw
        # Validated as the environment would be (strings), then the overrides on top.
        from_mapping = cls.model_validate({**values, **given})
        return from_mapping


def parse_allowlist(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())
