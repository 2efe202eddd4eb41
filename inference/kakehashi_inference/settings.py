"""Server settings: one frozen dataclass, filled from the environment and the command line.

Every setting has an environment variable (`KAKEHASHI_<FIELD>`) so the same image is tuned by a
Deployment's `env:` (the operator renders `ModelService.spec.batching` into it), by Lambda's
function configuration, or by `kakehashi-serve` flags, which win over the environment.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ENV_PREFIX = "KAKEHASHI_"
MODELS_ROOT = Path("/models")

Runtime = Literal["auto", "tflite", "savedmodel"]
Preprocess = Literal["tf", "unit", "raw"]


@dataclass(frozen=True)
class Settings:
    """How one server process loads, batches and guards its model."""

    model_name: str = "model"
    """The name clients see (`/v2/models/{name}`, metrics); also names the default model dir."""

    model_dir: Path | None = None
    """Holds `savedmodel/` and `labels.json`; defaults to `/models/<model_name>`."""

    max_batch_size: int = 16
    """Most images one model call takes. On 2 vCPUs with MobileNetV2, 16 gave 135-146 images/s at
    concurrency 32 against 119-128 for 8 (wider GEMMs for XNNPACK), with no worse p99; the
    queue only fills that far under load, so light traffic is not slowed."""

    max_wait_ms: float = 0.0
    """How long the first queued image waits for company. On CPU, 0 is usually best: the queue
    fills while the previous batch runs, so batches form without anyone waiting on purpose."""

    threads: int | None = None
    """Model threads; None means the container's CPU quota (cgroup), not the host's cores."""

    model_workers: int | None = None
    """Model calls run side by side, each on `threads // model_workers` threads (TFLite).
    None: one per thread, the best throughput under load; 1: the lowest latency when idle."""

    runtime: Runtime = "auto"
    """`tflite`: TFLite + XNNPACK converted at load; `savedmodel`: the signature's concrete
    function; `auto`: TFLite when it converts and matches the SavedModel within tolerance."""

    preprocess: Preprocess = "tf"
    """Pixel scaling the model was trained with: `tf` [-1, 1] (MobileNet, EfficientNetV2 off),
    `unit` [0, 1], `raw` [0, 255] (models that rescale inside, like EfficientNet)."""

    tflite_atol: float = 1e-5
    """Absolute tolerance of TFLite outputs against the SavedModel's, checked at load."""

    tflite_rtol: float = 1e-3
    """Relative tolerance of that check (float reassociation in XNNPACK kernels)."""

    max_images: int = 32
    """Most images in one request."""

    max_image_bytes: int = 8 * 1024 * 1024
    """Largest encoded image (inline or downloaded)."""

    max_request_bytes: int = 24 * 1024 * 1024
    """Largest request body."""

    max_image_pixels: int = 36_000_000
    """Largest decoded image (width x height): refuses decompression bombs before decoding."""

    download_timeout_s: float = 5.0
    """Deadline for fetching one URL, DNS, redirects and body included."""

    max_downloads: int = 16
    """Downloads in flight at once across all requests."""

    max_redirects: int = 3
    """Redirects followed per URL; each target is checked again."""

    url_allowlist: tuple[str, ...] = field(default_factory=tuple)
    """CIDRs or host names that may be fetched although they are not public addresses."""

    @property
    def resolved_model_dir(self) -> Path:
        return self.model_dir if self.model_dir is not None else MODELS_ROOT / self.model_name

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, **overrides: Any
    ) -> Settings:
        """Settings from `KAKEHASHI_*` variables, then `overrides` (None values ignored)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for item in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + item.name.upper())
            if raw is not None and raw != "":
                values[item.name] = _parse(item.name, raw)
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)


_INTS = {"max_batch_size", "threads", "model_workers", "max_images", "max_image_bytes", "max_request_bytes",
         "max_image_pixels", "max_downloads", "max_redirects"}
_FLOATS = {"max_wait_ms", "tflite_atol", "tflite_rtol", "download_timeout_s"}


def _parse(name: str, raw: str) -> Any:
    if name in _INTS:
        return int(raw)
    if name in _FLOATS:
        return float(raw)
    if name == "model_dir":
        return Path(raw)
    if name == "url_allowlist":
        return parse_allowlist(raw)
    return raw


def parse_allowlist(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())
