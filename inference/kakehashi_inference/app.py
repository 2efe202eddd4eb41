"""The FastAPI application: `/v1/predict`, health, readiness, metrics and the v2 protocol.

Nothing heavy runs on the event loop: downloads are async, decoding runs on a thread pool, the
model on its own thread through the batcher. The loop only parses, routes and answers, which is
what keeps latency flat while the CPUs are busy with the model.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from kakehashi_inference import __version__
from kakehashi_inference.batching import Batcher
from kakehashi_inference.cgroup import cpu_threads
from kakehashi_inference.errors import (
    InferenceError,
    InvalidInput,
    ModelNotReady,
    NotAnImageModel,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from kakehashi_inference.fetch import Downloader
from kakehashi_inference.images import decode_image
from kakehashi_inference.metrics import Metrics
from kakehashi_inference.model import Array, LoadedModel, load_model
from kakehashi_inference.schemas import (
    ErrorResponse,
    ImageInput,
    ImageResult,
    Prediction,
    PredictRequest,
    PredictResponse,
)
from kakehashi_inference.settings import Settings

log = logging.getLogger(__name__)

IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp")
ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


class Server:
    """Everything one serving process holds: settings, model, batcher, pools, metrics."""

    def __init__(self, settings: Settings, model: LoadedModel | None = None) -> None:
        self.settings = settings
        self.threads = settings.threads or cpu_threads()
        self.metrics = Metrics()
        self.downloader = Downloader(settings, self.metrics)
        self.model_executor: ThreadPoolExecutor | None = None
        self.cpu_executor = ThreadPoolExecutor(self.threads, thread_name_prefix="kakehashi-cpu")
        self.model: LoadedModel | None = None
        self.batcher: Batcher | None = None
        self.load_error: str | None = None
        self.metrics.model_ready.set(0)
        if model is not None:
            self.use(model)

    def use(self, model: LoadedModel) -> None:
        if model.image is not None:
            # As many model threads as calls the model can progress at once, no more: extra
            # calls would only fight over the same CPUs.
            self.model_executor = ThreadPoolExecutor(
                model.parallel_calls, thread_name_prefix="kakehashi-model"
            )
            self.batcher = Batcher(
                model.classify,
                max_batch_size=self.settings.max_batch_size,
                max_wait_s=self.settings.max_wait_ms / 1000,
                executor=self.model_executor,
                metrics=self.metrics,
                parallel=model.parallel_calls,
            )
        self.model = model
        self.metrics.model_info.info({
            "name": model.name,
            "digest": model.digest,
            "runtime": model.runtime,
            "threads": str(self.threads),
            "parallel_calls": str(model.parallel_calls),
            "max_batch_size": str(self.settings.max_batch_size),
        })
        self.metrics.model_ready.set(1)

    async def load(self) -> None:
        """Load and warm up the model off the loop; readiness turns on only after this."""
        try:
            model = await asyncio.to_thread(load_model, self.settings, self.threads)
        except Exception as error:
            self.load_error = f"{type(error).__name__}: {error}"
            log.error("Failed to load model", exc_info=True,
                      extra={"model_dir": str(self.settings.resolved_model_dir)})
            return
        self.use(model)

    def require_model(self) -> LoadedModel:
        if self.model is None:
            raise ModelNotReady(self.load_error or "the model is still loading")
        return self.model

    async def aclose(self) -> None:
        if self.batcher is not None:
            await self.batcher.aclose()
        await self.downloader.aclose()
        if self.model_executor is not None:
            self.model_executor.shutdown(wait=False, cancel_futures=True)
        self.cpu_executor.shutdown(wait=False, cancel_futures=True)

    async def predict(self, images: list[bytes | ImageInput], top_k: int) -> PredictResponse:
        model = self.require_model()
        if model.image is None or self.batcher is None:
            raise NotAnImageModel(
                f"model {model.name!r} is not an image classifier; use /v2/models/{model.name}/infer"
            )
        if len(images) > self.settings.max_images:
            raise PayloadTooLarge(
                f"{len(images)} images in one request, over the {self.settings.max_images} allowed"
            )
        # Every image is fetched and decoded before any reaches the model, so a request with
        # a bad image never occupies a batch slot, and the error names the first bad image.
        prepared = await asyncio.gather(
            *(self._prepare(index, image) for index, image in enumerate(images)),
            return_exceptions=True,
        )
        tensors: list[Array] = []
        for outcome in prepared:
            if isinstance(outcome, BaseException):
                self.metrics.images.labels("rejected").inc(len(images))
                raise outcome
            tensors.append(outcome)
        scores = await asyncio.gather(*(self.batcher.submit(tensor) for tensor in tensors))
        self.metrics.images.labels("predicted").inc(len(images))
        return PredictResponse(images=[_top(model, row, top_k) for row in scores])

    async def _prepare(self, index: int, image: bytes | ImageInput) -> Array:
        limit = self.settings.max_image_bytes
        if isinstance(image, bytes):
            data = image
        elif image.url is not None:
            data = await self.downloader.fetch(image.url, index)
        else:
            encoded = image.data or ""
            if encoded.startswith("data:"):  # a data: URL pasted as is
                encoded = encoded.partition(",")[2]
            if len(encoded) * 3 // 4 > limit + 3:
                raise PayloadTooLarge(f"image is over the {limit} bytes allowed", image=index)
            try:
                data = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidInput("`data` is not valid base64", image=index) from None
        if len(data) > limit:
            raise PayloadTooLarge(
                f"image is {len(data)} bytes, over the {limit} allowed", image=index
            )
        model = self.require_model()
        assert model.image is not None
        started = time.perf_counter()
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self.cpu_executor, decode_image, data, index, model.image,
                self.settings.preprocess, self.settings.max_image_pixels,
            )
        finally:
            self.metrics.stage_seconds.labels("decode").observe(time.perf_counter() - started)


def _top(model: LoadedModel, row: Array, top_k: int) -> ImageResult:
    scores = np.asarray(row, dtype=np.float64)
    # Classifiers exported without their final softmax return logits; scores must still be
    # probabilities for clients that threshold them.
    if scores.min() < 0 or abs(scores.sum() - 1.0) > 1e-3:
        exp = np.exp(scores - scores.max())
        scores = exp / exp.sum()
    k = min(top_k, len(scores))
    best = np.argsort(-scores, kind="stable")[:k]
    predictions = [
        Prediction(score=round(float(scores[i]), 4), category=model.label(int(i)).category,
                   name=model.label(int(i)).name)
        for i in best
    ]
    return ImageResult(
        **predictions[0].model_dump(), predictions=predictions if top_k > 1 else None
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` (never buffered whole)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes, over the {limit} allowed")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"request body is over the {limit} bytes allowed")
    return bytes(body)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


_PREDICT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
            **{kind: {"schema": {"type": "string", "format": "binary"}} for kind in IMAGE_TYPES},
        },
    }
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": description}
    for code, description in {
        400: "An image is undecodable, its URL refused or unreachable (names the image)",
        409: "The model is not an image classifier",
        413: "Request, image or image count over the limits",
        415: "Body is neither JSON nor an image",
        503: "The model is not loaded yet",
        504: "An image URL did not answer in time",
    }.items()
}


class MetricsMiddleware:
    """Request latency by route template (not raw path, so cardinality stays bounded)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.request_seconds.labels(path, scope["method"], str(status)).observe(
                time.perf_counter() - started
            )


def create_app(settings: Settings | None = None, model: LoadedModel | None = None) -> FastAPI:
    """The server as an ASGI app. Without `model`, it loads in the background at start-up."""
    from kakehashi_inference.v2 import v2_router

    settings = settings or Settings.from_env()
    server = Server(settings, model)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = None
        if server.model is None:
            loading = asyncio.create_task(server.load())
        yield
        if loading is not None:
            loading.cancel()
        await server.aclose()

    app = FastAPI(
        title="Kakehashi inference",
        version=__version__,
        description="Image classification (`/v1/predict`) and the Open Inference Protocol v2 "
        "over one TensorFlow SavedModel, with dynamic batching.",
        lifespan=lifespan,
    )
    app.state.server = server
    app.add_middleware(MetricsMiddleware, metrics=server.metrics)

    @app.exception_handler(InferenceError)
    async def inference_error(request: Request, error: InferenceError) -> JSONResponse:
        log.warning("Refused request", extra={"path": request.url.path, "status": error.status_code,
                                              "reason": error.message, "image": error.image})
        if request.url.path.startswith("/v2"):
            return JSONResponse({"error": error.message}, status_code=error.status_code)
        return JSONResponse(
            ErrorResponse(detail=error.message, image=error.image).model_dump(),
            status_code=error.status_code,
        )

    @app.get("/health", tags=["health"], summary="Liveness")
    async def health() -> JSONResponse:
        # A model that failed to load makes the pod unhealthy, so Kubernetes restarts it and
        # the load error shows in its logs rather than in a never-ready pod.
        if server.load_error is not None:
            return JSONResponse({"status": "failed", "error": server.load_error}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/ready", tags=["health"], summary="Readiness: model loaded and warmed up")
    async def ready() -> JSONResponse:
        if server.model is None:
            status = "failed" if server.load_error else "loading"
            return JSONResponse({"status": status, "error": server.load_error}, status_code=503)
        return JSONResponse({"status": "ready", "model": server.model.name,
                             "digest": server.model.digest, "runtime": server.model.runtime})

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        response_model_exclude_none=True,
        responses=_ERRORS,
        openapi_extra=_PREDICT_BODY,
        tags=["predict"],
        summary="Classify images",
        description="JSON `{\"images\": [{\"url\": ...} | {\"data\": base64}]}`, or one raw "
        "image as the body (`Content-Type: image/jpeg` or `image/png`). One result per image, "
        "in order.",
    )
    async def predict(
        request: Request,
        top_k: int = Query(1, ge=1, le=1000, description="Also list the k best classes"),
    ) -> PredictResponse:
        body = await read_body(request, settings.max_request_bytes)
        kind = media_type(request)
        images: list[bytes | ImageInput]
        if kind.startswith("image/"):
            images = [body]
        elif kind in ("", "application/json") or kind.endswith("+json"):
            try:
                images = list(PredictRequest.model_validate_json(body).images)
            except ValidationError as error:
                raise RequestValidationError(error.errors(include_url=False)) from None
        else:
            raise UnsupportedMediaType(
                f"Content-Type {kind!r}: send application/json or an image ({', '.join(IMAGE_TYPES)})"
            )
        return await server.predict(images, top_k)

    app.include_router(v2_router(server))
    return app
