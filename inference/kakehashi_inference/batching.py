"""Dynamic batching: images from concurrent requests share one model call.

A worker task takes queued images as soon as a model slot is free (`parallel` slots: model
calls that progress side by side), runs them on a model thread and answers each image's future.
While the slots are busy the next batch queues up, so under load batches form by themselves and
with one client nothing waits; `max_wait` adds an optional deliberate wait for a fuller batch.

The batch size follows the load: a batch takes its share of the images outstanding (queued and
running) per slot, never more than `max_batch_size`. With 32 images outstanding, 2 slots take
16 each and 16 slots take 2 each, so on a many-core node every interpreter stays busy on small
batches (where one interpreter per core at batch 1 ran 1.5x faster than batch 16), while on two
cores the batches grow as wide as the load allows (where batch 16 won).

If a batch fails as a whole, its images are retried one by one, so one image the model chokes
on fails only its own request. Stacking the batch runs on the model thread, not the loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from kakehashi_inference.metrics import Metrics

log = logging.getLogger(__name__)

Array = npt.NDArray[Any]


@dataclass
class _Item:
    tensor: Array
    future: asyncio.Future[Array]
    queued_at: float


class Batcher:
    def __init__(
        self,
        run: Callable[[Array], Array],
        *,
        max_batch_size: int,
        max_wait_s: float,
        executor: Executor,
        metrics: Metrics,
        parallel: int = 1,
        follow_load: bool = True,
    ) -> None:
        self._run = run
        self._max_batch_size = max(1, max_batch_size)
        self._max_wait_s = max(0.0, max_wait_s)
        self._executor = executor
        self._metrics = metrics
        self._parallel = max(1, parallel)
        self._follow_load = follow_load
        self._running: set[asyncio.Task[None]] = set()
        self._in_flight = 0  # images in batches that are running
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _ensure_worker(self) -> asyncio.Queue[_Item]:
        # Started on first use in the running loop: under Mangum (Lambda) there is no lifespan.
        loop = asyncio.get_running_loop()
        if self._queue is None or self._loop is not loop or self._task is None or self._task.done():
            self._loop = loop
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._work(self._queue), name="kakehashi-batcher")
        return self._queue

    async def submit(self, tensor: Array) -> Array:
        """The model's output row for one input row (`tensor` without the batch axis)."""
        queue = self._ensure_worker()
        future: asyncio.Future[Array] = asyncio.get_running_loop().create_future()
        queue.put_nowait(_Item(tensor, future, time.perf_counter()))
        self._metrics.queue_depth.set(queue.qsize())
        return await future

    async def aclose(self) -> None:
        for task in list(self._running):
            task.cancel()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _work(self, queue: asyncio.Queue[_Item]) -> None:
        slots = asyncio.Semaphore(self._parallel)
        while True:
            # Take a slot before the first item: while every slot is busy, images pile up in
            # the queue and the next batch is taken whole.
            await slots.acquire()
            items = [await queue.get()]
            target = self.batch_size(queue.qsize() + 1)
            deadline = time.perf_counter() + self._max_wait_s
            while len(items) < target:
                if not queue.empty():
                    items.append(queue.get_nowait())
                    continue
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(queue.get(), remaining))
                except TimeoutError:
                    break
            self._metrics.queue_depth.set(queue.qsize())
            # A client that went away cancelled its future: do not compute for it.
            items = [item for item in items if not item.future.done()]
            if not items:
                slots.release()
                continue
            self._in_flight += len(items)
            task = asyncio.create_task(self._run_batch(items))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            task.add_done_callback(functools.partial(self._finished, slots, len(items)))

    def _finished(self, slots: asyncio.Semaphore, count: int, _: object) -> None:
        self._in_flight -= count
        slots.release()

    def batch_size(self, queued: int) -> int:
        """How many of `queued` images the next batch takes: its fair share of the outstanding
        images per model slot (so no slot idles while another runs a wide batch), at least 1,
        at most `max_batch_size`. With `max_wait`, or the greedy policy, a batch takes up to
        `max_batch_size` of what is there."""
        if self._max_wait_s > 0 or not self._follow_load:
            return self._max_batch_size
        share = math.ceil((queued + self._in_flight) / self._parallel)
        return max(1, min(self._max_batch_size, share))

    async def _run_batch(self, items: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        for item in items:
            self._metrics.stage_seconds.labels("queue").observe(started - item.queued_at)
        self._metrics.batch_size.observe(len(items))
        try:
            outputs = await loop.run_in_executor(
                self._executor, self._stack_and_run, [item.tensor for item in items]
            )
        except Exception:
            log.warning("Batch failed; retrying its images one by one", exc_info=True,
                        extra={"batch_size": len(items)})
            for item in items:
                await self._run_one(item)
            return
        finally:
            self._metrics.stage_seconds.labels("predict").observe(time.perf_counter() - started)
        for item, output in zip(items, outputs, strict=True):
            if not item.future.done():
                item.future.set_result(output)

    def _stack_and_run(self, tensors: list[Array]) -> Array:
        return self._run(np.stack(tensors))

    async def _run_one(self, item: _Item) -> None:
        loop = asyncio.get_running_loop()
        try:
            output = await loop.run_in_executor(self._executor, self._run, item.tensor[None])
        except Exception as error:
            if not item.future.done():
                item.future.set_exception(error)
            return
        if not item.future.done():
            item.future.set_result(output[0])
