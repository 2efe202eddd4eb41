"""Typed errors of the inference server, each carrying its HTTP status, and the one place
where every error becomes an HTTP answer (`install_handlers`), for v1 and v2 alike.

Image errors name the image (`images[2]`) so a client sending twenty images knows which one to
fix; the index is also returned as a field for programs. Answers never echo the request body
(a 20 MB body must not become a 120 MB error) and never show server paths.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


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


V2_PREFIX = "/v2"
MAX_MESSAGE = 1000


def is_v2(path: str) -> bool:
    return path == V2_PREFIX or path.startswith(V2_PREFIX + "/")


def error_response(path: str, status: int, message: str, image: int | None = None) -> JSONResponse:
    """The answer for an error on `path`: v2's `{"error"}` or v1's `{"detail", "image"}`."""
    message = message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE] + "..."
    if is_v2(path):
        # The v2 protocol has no 422: a request it cannot use is a 400.
        return JSONResponse({"error": message}, status_code=400 if status == 422 else status)
    body: dict[str, Any] = {"detail": message}
    if image is not None:
        body["image"] = image
    return JSONResponse(body, status_code=status)


def summarize(errors: Sequence[Any]) -> str:
    """Validation errors as one short line: where and what, never the input itself."""
    parts = []
    for item in list(errors)[:3]:
        where = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
        message = str(item.get("msg", "invalid"))[:200]
        parts.append(f"{where}: {message}" if where else message)
    more = len(errors) - 3
    return "invalid request: " + "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def install_handlers(app: FastAPI) -> None:
    """Map every error the app can raise to its answer, here and nowhere else."""

    @app.exception_handler(InferenceError)
    async def inference_error(request: Request, error: InferenceError) -> JSONResponse:
        log.warning("Refused request", extra={"path": request.url.path,
                                              "status": error.status_code,
                                              "reason": error.message, "image": error.image})
        return error_response(request.url.path, error.status_code, error.message, error.image)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(request.url.path, 422, summarize(error.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = str(error.detail) if error.detail else "error"
        if error.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        return error_response(request.url.path, error.status_code, message)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.error("Request failed", exc_info=error, extra={"path": request.url.path})
        return error_response(request.url.path, 500, "internal error (logged by the server)")
