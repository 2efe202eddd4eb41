"""Typed errors of the inference server, each carrying its HTTP status; `http_errors.py` is the
one place where they (and every other error) become HTTP answers, for v1 and v2 alike.

Image errors name the image (`images[2]`) so a client sending twenty images knows which one to
fix; the index is also returned as a field for programs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class InferenceError(Exception):
    """A request the server answers with `status_code` and `message`."""

    status_code = 500

    def __init__(self, message: str, *, image: int | None = None) -> None:
        self.image = image
        self.message = f"images[{image}]: {message}" if image is not None else message
        super().__init__(self.message)


class InvalidInput(InferenceError):
    """The request (or one image in it) can never succeed as sent."""

    status_code = 400


class URLRefused(InvalidInput):
    """A URL whose scheme or address the server must not fetch (SSRF protection)."""


class ModelNotFound(InferenceError):
    status_code = 404


class PayloadTooLarge(InferenceError):
    status_code = 413


class UnsupportedMediaType(InferenceError):
    status_code = 415


class ModelNotReady(InferenceError):
    status_code = 503


class DownloadTimeout(InferenceError):
    status_code = 504


class NotAnImageModel(InferenceError):
    """`/v1/predict` on a model whose default signature is not an image classifier."""

    status_code = 409


class InvalidRequest(InferenceError):
    """A well-formed JSON body that does not fit the request schema (422; 400 on v2)."""

    status_code = 422

def summarize(errors: Sequence[Any]) -> str:
    """Validation errors as one short line: where and what, never the input itself."""
    parts = []
    for item in list(errors)[:3]:
        where = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
        message = str(item.get("msg", "invalid"))[:200]
        parts.append(f"{where}: {message}" if where else message)
    more = len(errors) - 3
    return "invalid request: " + "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
