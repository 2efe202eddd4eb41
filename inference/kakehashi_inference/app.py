"""The FastAPI application: health, readiness and metrics here; `/v1` and `/v2` from their
modules, which share `server.py` and not each other; every error answered by `errors.py`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from concurrent.futures import Future
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kakehashi_inference import __version__
from kakehashi_inference.http_errors import install_handlers
from kakehashi_inference.metrics import Metrics
from kakehashi_inference.model import LoadedModel
from kakehashi_inference.server import Server
from kakehashi_inference.settings import Settings
from kakehashi_inference.v1 import v1_router
from kakehashi_inference.v2 import v2_router

ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


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


def create_app(settings: Settings | None = None, model: LoadedModel | None = None,
               loading: Future[LoadedModel] | None = None) -> FastAPI:
    """The server as an ASGI app. Without `model`, it loads in the background at start-up (or
    waits for `loading`, a load the caller started earlier)."""
    settings = settings or Settings()
    server = Server(settings, model, loading)

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
        "over one model (compiled TFLite on LiteRT, or a TensorFlow SavedModel), with dynamic "
        "batching.",
        lifespan=lifespan,
    )
    app.state.server = server
    app.add_middleware(MetricsMiddleware, metrics=server.metrics)
    install_handlers(app)

    @app.get("/health", tags=["health"], summary="Liveness")
    async def health() -> JSONResponse:
        # A model that failed to load makes the pod unhealthy, so Kubernetes restarts it and
        # the load error shows in its logs rather than in a never-ready pod. Both keys: the
        # design this replaces answered {"message": "OK"}, and clients check it.
        if server.load_error is not None:
            return JSONResponse({"status": "failed", "message": "model failed to load",
                                 "error": server.load_error}, status_code=503)
        return JSONResponse({"status": "ok", "message": "OK"})

    @app.get("/ready", tags=["health"], summary="Readiness: model verified, loaded, warmed up")
    async def ready() -> JSONResponse:
        if server.model is None:
            status = "failed" if server.load_error else "loading"
            return JSONResponse({"status": status, "error": server.load_error}, status_code=503)
        return JSONResponse({"status": "ready", "model": server.model.name,
                             "digest": server.model.digest, "runtime": server.model.runtime})

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(v1_router(server))
    app.include_router(v2_router(server))
    return app
