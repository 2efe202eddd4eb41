"""The serving process's state and the work both protocols share: loading the model, reading
bodies, running CPU work off the event loop, classifying images through the batcher.

`v1.py` and `v2.py` each depend on this module and on nothing of each other; `app.py` puts
them together. Nothing heavy runs on the event loop: JSON parsing, base64 decoding, image
decoding, CSV parsing, stacking batches and building answers all run on the CPU pool, the model
on its own threads through the batcher. The loop only routes, awaits and sends, which keeps
health checks and latency flat while every CPU is busy.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from kakehashi_inference.batching import Batcher
from kakehashi_inference.cgroup import cpu_threads
from kakehashi_inference.errors import (
    InvalidInput,
    InvalidRequest,
    ModelNotReady,
    PayloadTooLarge,
    UnsupportedMediaType,
    summarize,
)
from kakehashi_inference.fetch import Downloader
from kakehashi_inference.images import decode_image, preload
from kakehashi_inference.metrics import Metrics
from kakehashi_inference.model import Array, LoadedModel, ModelLoadError, load_model
from kakehashi_inference.schemas import ImageInput
from kakehashi_inference.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


class Server:
    """Everything one serving process holds: settings, model, batcher, pools, metrics."""

    def __init__(self, settings: Settings, model: LoadedModel | None = None,
                 loading: Future[LoadedModel] | None = None) -> None:
        self.settings = settings
        self._loading = loading  # a load already under way (started before the app imported)
        self.threads = settings.threads or cpu_threads()
        self.metrics = Metrics()
        self.downloader = Downloader(settings, self.metrics)
        self.model_executor: ThreadPoolExecutor | None = None
        self.cpu_executor = ThreadPoolExecutor(self.threads, thread_name_prefix="kakehashi-cpu")
        self.model: LoadedModel | None = None
        self.batcher: Batcher | None = None
        self.load_error: str | None = None  # shown to clients: never a server path
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
                follow_load=self.settings.batch_policy == "follow-load",
            )
        self.model = model
        self.metrics.model_info.info({
            "name": model.name,
            "digest": model.digest,
            "runtime": model.runtime,
            "threads": str(self.threads),
            "parallel_calls": str(model.parallel_calls),
            "max_batch_size": str(self.settings.max_batch_size),
            "batch_policy": self.settings.batch_policy,
        })
        self.metrics.model_ready.set(1)

    async def load(self) -> None:
        """Load and warm up the model off the loop; readiness turns on only after this."""
        try:
            if self._loading is not None:
                model = await asyncio.wrap_future(self._loading)
            else:
                model = await asyncio.to_thread(load_model, self.settings, self.threads)
        except ModelLoadError as error:
            self.load_error = error.message
            log.error("Failed to load model", extra={
                "model_dir": str(self.settings.resolved_model_dir), "reason": error.message,
                "detail": error.detail})
            return
        except Exception as error:
            # Unexpected errors may carry paths and internals: the log has them, clients get
            # the kind of error only.
            self.load_error = f"the model failed to load ({type(error).__name__}; see the log)"
            log.error("Failed to load model", exc_info=True,
                      extra={"model_dir": str(self.settings.resolved_model_dir)})
            return
        self.use(model)
        # Larger batch interpreters are built after readiness, so starting stays fast.
        threading.Thread(target=self._complete, args=(model,), daemon=True,
                         name="kakehashi-complete").start()

    @staticmethod
    def _complete(model: LoadedModel) -> None:
        try:
            preload()
            model.runner.complete()
        except Exception:
            log.warning("Could not build the larger batch interpreters", exc_info=True)

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

    async def read_request(self, request: Request) -> bytes:
        """The request body within `max_request_bytes`, decompressed when it came with
        `Content-Encoding: gzip` or `deflate` (what tritonclient's
        `request_compression_algorithm` sends); decompressing runs on the CPU pool."""
        limit = self.settings.max_request_bytes
        body = await read_body(request, limit)
        encoding = request.headers.get("content-encoding", "").strip().lower()
        if encoding in ("", "identity"):
            return body
        if encoding not in ("gzip", "x-gzip", "deflate"):
            raise UnsupportedMediaType(
                f"Content-Encoding {encoding!r}: send the body as is, gzip or deflate"
            )
        return await self.run_cpu(decompress, body, encoding, limit)

    async def run_cpu(self, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` on the CPU pool, so the event loop stays free."""
        return await asyncio.get_running_loop().run_in_executor(self.cpu_executor, function, *args)

    async def classify(self, images: list[bytes | ImageInput]) -> list[Array]:
        """Each image's class scores. Every image is fetched and decoded before any reaches the
        model, so a request with a bad image never occupies a batch slot; the error names the
        first bad image and fails this request only, never the requests batched beside it."""
        model = self.require_model()
        if len(images) > self.settings.max_images:
            raise PayloadTooLarge(
                f"{len(images)} images in one request, over the {self.settings.max_images} allowed"
            )
        assert self.batcher is not None
        prepared = await asyncio.gather(
            *(self._prepare(model, index, image) for index, image in enumerate(images)),
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
        return list(scores)

    async def _prepare(self, model: LoadedModel, index: int, image: bytes | ImageInput) -> Array:
        data: bytes | str
        if isinstance(image, bytes):
            data = image
        elif image.url is not None:
            data = await self.downloader.fetch(image.url, index)
        else:
            data = image.data or ""
        started = time.perf_counter()
        try:
            return await self.run_cpu(self._decode, model, data, index)
        finally:
            self.metrics.stage_seconds.labels("decode").observe(time.perf_counter() - started)

    def _decode(self, model: LoadedModel, data: bytes | str, index: int) -> Array:
        """base64 (when `data` is text) and image decoding, on a CPU thread."""
        limit = self.settings.max_image_bytes
        if isinstance(data, str):
            if data.startswith("data:"):  # a data: URL pasted as is
                data = data.partition(",")[2]
            if len(data) * 3 // 4 > limit + 3:
                raise PayloadTooLarge(f"image is over the {limit} bytes allowed", image=index)
            try:
                data = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidInput("`data` is not valid base64", image=index) from None
        if len(data) > limit:
            raise PayloadTooLarge(f"image is {len(data)} bytes, over the {limit} allowed",
                                  image=index)
        assert model.image is not None
        return decode_image(data, index, model.image, self.settings.preprocess,
                            self.settings.max_image_pixels)


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


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """A gzip or deflate body, never inflated past `limit` bytes (a few KiB of zeros can
    inflate to gigabytes)."""
    # 32 + MAX_WBITS reads a gzip or a zlib header, whichever is there: "deflate" in HTTP is
    # zlib-wrapped, and clients are known to mix the two up.
    inflater = zlib.decompressobj(32 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as error:
        raise InvalidInput(f"the body is not valid {encoding} data ({error})") from None
    if len(data) > limit:
        raise PayloadTooLarge(f"the request body inflates to over the {limit} bytes allowed")
    if not inflater.eof:
        raise InvalidInput(f"the {encoding} body is truncated")
    return data


def media_type(request: Request) -> tuple[str, dict[str, str]]:
    """The Content-Type's media type (lower case) and its parameters."""
    kind, _, rest = request.headers.get("content-type", "").partition(";")
    parameters = {}
    for part in rest.split(";"):
        key, _, value = part.partition("=")
        if key.strip():
            parameters[key.strip().lower()] = value.strip().strip('"').lower()
    return kind.strip().lower(), parameters


def parse_json(model: type[M], body: bytes | memoryview) -> M:
    """`body` as `model`: 400 if it is not UTF-8 JSON, 422 (400 on v2) if it does not fit.
    Runs on a CPU thread (a body can be tens of MiB). Errors never carry the body."""
    try:
        return model.model_validate_json(bytes(body))
    except ValidationError as error:
        errors = error.errors(include_url=False, include_input=False, include_context=False)
    if any(item["type"] == "json_invalid" for item in errors):
        try:
            bytes(body).decode("utf-8")
        except UnicodeDecodeError as undecodable:
            raise InvalidInput(
                f"the body is not UTF-8 (byte {undecodable.start}): send UTF-8 JSON"
            ) from None
        raise InvalidInput(f"the body is not valid JSON: {errors[0]['msg']}")
    raise InvalidRequest(summarize(errors))
