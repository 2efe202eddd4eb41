"""Payload helpers shared by the inference tests."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

ClientFactory = Callable[..., TestClient]


def jpeg(color: tuple[int, int, int] = (200, 40, 40), size: tuple[int, int] = (64, 48),
         fmt: str = "JPEG") -> bytes:
    """A small photo-like image: a gradient, so JPEG has real content to decode."""
    width, height = size
    x = np.linspace(0, 1, width)[None, :, None]
    y = np.linspace(0, 1, height)[:, None, None]
    pixels = np.clip(np.array(color)[None, None, :] * (0.5 + 0.5 * x * y), 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, fmt)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class ImageServer:
    """A real HTTP server on loopback: what image URLs point at in the tests."""

    port: int
    host: str = "127.0.0.1"
    in_flight: dict[str, int] = field(default_factory=dict)
    max_in_flight: dict[str, int] = field(default_factory=dict)
    """Requests in progress, per `group` query parameter (tests overlap on one server)."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"
