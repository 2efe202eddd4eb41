"""Per-object reconcile requests: coalesced, one at a time per object, retried with backoff.

Every event about an object (or its children) only *requests* a reconcile. A request for an
object that is already queued is dropped (a burst of pod events costs one reconcile), one object
is never reconciled twice at once, and a failed reconcile is retried after a capped, jittered,
growing delay: never a fixed fast loop that hammers an API server which is already failing.
While an object waits out its backoff, further requests for it are absorbed by the scheduled
retry (the periodic resync included), so an outage does not turn into a retry storm.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from kakehashi import metrics
from kakehashi.control.backoff import Backoff
from kakehashi.control.errors import PermanentError, TemporaryError, classify

K = TypeVar("K", bound=Hashable)

logger = logging.getLogger("kakehashi.control")


class ReconcileQueue(Generic[K]):
    def __init__(
        self,
        resource: str,
        reconcile: Callable[[K], Awaitable[None]],
        *,
        backoff: Backoff | None = None,
    ) -> None:
        self.resource = resource
        self._reconcile = reconcile
        self.backoff = backoff or Backoff()
        self._queued: set[K] = set()
        self._locks: dict[K, asyncio.Lock] = {}
        self._attempts: dict[K, int] = {}
        self._retries: dict[K, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def request(self, key: K) -> None:
        """Ask for a reconcile of one object; cheap and idempotent, safe on every event."""
        if key in self._queued or key in self._retries:
            return
        self._queued.add(key)
        task = asyncio.get_running_loop().create_task(self._run(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def request_later(self, key: K, delay_s: float) -> None:
        """Come back to an object after `delay_s` (watching something no event tells us about,
        such as a rollout on another cluster). An earlier scheduled retry wins."""
        if key in self._retries:
            return
        self._retries[key] = asyncio.get_running_loop().call_later(delay_s, self._retry, key)

    def forget(self, key: K) -> None:
        """The object is gone: drop its state, or per-object memory would grow forever. (Its
        lock lives only while a reconcile of it runs or waits: `_run` drops it.)"""
        self._attempts.pop(key, None)
        retry = self._retries.pop(key, None)
        if retry is not None:
            retry.cancel()

    def attempts(self, key: K) -> int:
        """Failed reconciles in a row (0 after a success)."""
        return self._attempts.get(key, 0)

    def waiting(self, key: K) -> float | None:
        """Seconds until the scheduled retry, or None."""
        retry = self._retries.get(key)
        return None if retry is None else max(0.0, retry.when() - asyncio.get_running_loop().time())

    async def drain(self) -> None:
        """Wait for the reconciles in flight (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _retry(self, key: K) -> None:
        self._retries.pop(key, None)
        self.request(key)

    async def _run(self, key: K) -> None:
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                self._queued.discard(key)
                if self._attempts.get(key) and key in self._retries:
                    # Requested while the reconcile before failed: the scheduled retry is the
                    # next attempt, not this request (or every event during an outage would
                    # be one more immediate call to a failing server).
                    return
                await self._timed(key)
        finally:
            # Nobody waits for the lock unless a request is queued (it is discarded only once
            # the lock is held): an idle object keeps no lock, a deleted one none at all, and
            # a lock held by a run still finishing is never replaced under it.
            if key not in self._queued and self._locks.get(key) is lock:
                del self._locks[key]

    async def _timed(self, key: K) -> None:
        started = time.perf_counter()
        result = "success"
        try:
            await self._reconcile(key)
            self._attempts.pop(key, None)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            result = self._failed(key, error)
        finally:
            metrics.RECONCILES.labels(self.resource, result).inc()
            metrics.RECONCILE_SECONDS.labels(self.resource).observe(time.perf_counter() - started)

    def _failed(self, key: K, error: Exception) -> str:
        kind = classify(error)
        attempt = self._attempts.get(key, 0) + 1
        self._attempts[key] = attempt
        extra = {"resource": self.resource, "key": "/".join(map(str, key)) if isinstance(key, tuple) else str(key)}
        if isinstance(kind, PermanentError):
            # The reconciler records refusals it understands in the status itself; one that
            # reaches here (e.g. our own status patch refused) is a bug to read in the log, and
            # asking again would get the same answer. The next event or resync tries anew.
            logger.error("Reconcile refused by the server: %s", kind, extra={**extra, "attempt": attempt})
            self._attempts.pop(key, None)
            return "error"
        if isinstance(kind, TemporaryError) and kind.delay is not None:
            delay = min(kind.delay, self.backoff.cap_s)  # a server's Retry-After, within our cap
        else:
            delay = self.backoff.delay(attempt)
        if isinstance(kind, TemporaryError):
            logger.warning(
                "Reconcile failed temporarily, retrying in %.1fs: %s", delay, kind,
                extra={**extra, "attempt": attempt},
            )
        else:
            logger.exception("Reconcile failed, retrying in %.1fs", delay, extra={**extra, "attempt": attempt})
        earlier = self._retries.pop(key, None)
        if earlier is not None:  # a poll (request_later) pending: the backoff replaces it
            earlier.cancel()
        self._retries[key] = asyncio.get_running_loop().call_later(delay, self._retry, key)
        return "retry"
