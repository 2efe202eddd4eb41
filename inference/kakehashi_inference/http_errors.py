"""The one place where every error becomes an HTTP answer, for v1 and v2 alike.

v2 paths answer the protocol's `{"error": "..."}` (with 400 where FastAPI would say 422), v1
paths `{"detail": "...", "image": i}`. Answers never echo the request body (a 20 MB body must
not become a 120 MB error), stay short, and never show server paths or tracebacks.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from kakehashi_inference.errors import InferenceError, summarize

log = logging.getLogger(__name__)


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
