"""The per-object reconcile queue every controller shares: bursts coalesce, one reconcile per
object at a time (others in parallel), failures come back after growing, capped delays however
often the object is asked for meanwhile, and a deleted object leaves nothing behind.

Timing is checked from below only (a loaded machine stretches every gap, never shrinks one);
what the queue scheduled is read from `waiting()`.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable

from kakehashi.control.backoff import Backoff
from kakehashi.control.errors import PermanentError, TemporaryError
from kakehashi.control.queue import ReconcileQueue

Key = tuple[str, str]
A, B = ("team", "a"), ("team", "b")


class Recorder:
    """A reconcile that records when it ran and how many ran at once; call n ends with
    `on_call(n)`, then raises `outcomes[n - 1]` when that is an exception (None, or past the
    list: success)."""

    def __init__(
        self,
        *,
        seconds: float = 0.0,
        outcomes: list[Exception | None] | None = None,
        on_call: Callable[[int], None] | None = None,
    ) -> None:
        self.seconds = seconds
        self.outcomes = outcomes or []
        self.on_call = on_call
        self.calls: list[tuple[Key, float]] = []
        self.running: Counter[Key] = Counter()
        self.most_at_once: Counter[Key] = Counter()
        self.keys_at_once = 0
        self._called = asyncio.Event()

    async def __call__(self, key: Key) -> None:
        self.calls.append((key, time.monotonic()))
        self._called.set()
        number = len(self.calls)
        self.running[key] += 1
        self.most_at_once[key] = max(self.most_at_once[key], self.running[key])
        self.keys_at_once = max(self.keys_at_once, sum(1 for n in self.running.values() if n))
        try:
            await asyncio.sleep(self.seconds)
            if self.on_call is not None:  # at the end of the reconcile, as controllers do
                self.on_call(number)
            outcome = self.outcomes[number - 1] if number <= len(self.outcomes) else None
            if outcome is not None:
                raise outcome
        finally:
            self.running[key] -= 1

    async def wait_calls(self, count: int, within_s: float = 10.0) -> None:
        """Until `count` reconciles have started (each is running once it has)."""
        async with asyncio.timeout(within_s):
            while len(self.calls) < count:
                self._called.clear()
                await self._called.wait()

    def times(self, key: Key = A) -> list[float]:
        return [t for k, t in self.calls if k == key]


def test_a_burst_coalesces_and_a_request_during_a_run_is_not_lost() -> None:
    rec = Recorder(seconds=0.05)

    async def scenario() -> None:
        queue = ReconcileQueue("test", rec)
        for _ in range(100):
            queue.request(A)
        queue.request(B)
        await rec.wait_calls(1)  # A is running now
        for _ in range(100):  # events arriving while A runs: one more reconcile after it
            queue.request(A)
        await queue.drain()
        assert queue._locks == {}  # idle objects keep no per-object state

    asyncio.run(scenario())
    assert len(rec.times(A)) == 2 and len(rec.times(B)) == 1
    assert rec.most_at_once[A] == 1  # never two reconciles of one object at once
    assert rec.keys_at_once == 2  # but different objects in parallel


def test_failures_back_off_growing_and_capped_however_often_the_object_is_asked_for() -> None:
    rec = Recorder(outcomes=[TemporaryError("HTTP 503: etcd leader changed")] * 6)
    waits: list[float] = []

    async def scenario() -> ReconcileQueue[Key]:
        queue = ReconcileQueue("test", rec, backoff=Backoff(base_s=0.05, factor=2.0, cap_s=0.2, jitter=0.0))
        queue.request(A)
        # Every event and the resync ask again, every 5 ms (at most 10 s): the backoff absorbs
        # them all, until the seventh call succeeds.
        for _ in range(2000):
            await asyncio.sleep(0.005)
            if len(rec.calls) == 7:
                break
            queue.request(A)
            waits.append(queue.waiting(A) or 0.0)
        await queue.drain()
        return queue

    queue = asyncio.run(scenario())
    times = rec.times()
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # 0.05, 0.1, 0.2, 0.2 (capped), 0.2, 0.2, then the success: seven calls, not one per request.
    assert len(times) == 7, gaps
    assert all(g >= d - 0.01 for g, d in zip(gaps, [0.05, 0.1, 0.2, 0.2, 0.2, 0.2], strict=True)), gaps
    assert 0.15 < max(waits) <= 0.2, max(waits)
    assert queue.attempts(A) == 0 and queue.waiting(A) is None  # the success reset it


def test_an_event_during_a_failing_reconcile_does_not_skip_the_backoff() -> None:
    rec = Recorder(seconds=0.05, outcomes=[TemporaryError("HTTP 500")])

    async def scenario() -> None:
        queue = ReconcileQueue("test", rec, backoff=Backoff(base_s=0.3, cap_s=1.0, jitter=0.0))
        queue.request(A)
        await rec.wait_calls(1)
        queue.request(A)  # arrives while the first attempt is still running, then fails
        await rec.wait_calls(2)
        await queue.drain()

    asyncio.run(scenario())
    first, second = rec.times()
    assert second - first >= 0.05 + 0.3 - 0.01, second - first  # the retry, after its delay


def test_retry_after_is_honoured_within_the_cap_and_a_refusal_is_not_retried() -> None:
    rec = Recorder(outcomes=[TemporaryError("HTTP 429", delay=3600.0), PermanentError("invalid", "Invalid")])

    async def scenario() -> None:
        queue = ReconcileQueue("test", rec, backoff=Backoff(base_s=1.0, cap_s=0.1, jitter=0.0))
        queue.request(A)
        await queue.drain()
        waiting = queue.waiting(A)
        assert waiting is not None and waiting <= 0.1  # not an hour
        await rec.wait_calls(2)
        await queue.drain()
        # The permanent answer: recorded by the controller, not asked again.
        assert queue.waiting(A) is None and queue.attempts(A) == 0
        await asyncio.sleep(0.2)

    asyncio.run(scenario())
    assert len(rec.calls) == 2


def test_a_forgotten_object_is_not_retried_and_leaves_no_state() -> None:
    rec = Recorder(outcomes=[TemporaryError("HTTP 503")] * 3)

    async def scenario() -> None:
        queue = ReconcileQueue("test", rec, backoff=Backoff(base_s=0.1, cap_s=1.0, jitter=0.0))
        queue.request(A)
        await queue.drain()
        assert queue.attempts(A) == 1 and queue.waiting(A) is not None
        queue.forget(A)  # deleted while waiting out its backoff
        assert queue.attempts(A) == 0 and queue.waiting(A) is None
        await asyncio.sleep(0.25)
        await queue.drain()
        assert (queue._attempts, queue._retries, queue._locks, queue._queued) == ({}, {}, {}, set())

    asyncio.run(scenario())
    assert len(rec.calls) == 1


def test_a_failure_replaces_a_pending_poll_instead_of_adding_a_second_timer() -> None:
    queue: ReconcileQueue[Key]

    def first_run_polls(number: int) -> None:
        if number == 1:  # a rollout on another cluster to watch: look again soon
            queue.request_later(A, 0.1)

    rec = Recorder(seconds=0.02, outcomes=[None, TemporaryError("HTTP 503")], on_call=first_run_polls)

    async def scenario() -> None:
        queue.request(A)
        await rec.wait_calls(1)
        queue.request(A)  # an event during the first run: a second run right after, which fails
        await rec.wait_calls(3)
        await asyncio.sleep(0.2)  # no fourth call (from a second timer) follows
        await queue.drain()

    queue = ReconcileQueue("test", rec, backoff=Backoff(base_s=0.3, cap_s=1.0, jitter=0.0))
    asyncio.run(scenario())
    times = rec.times()
    # The poll due at 0.1 s gave way to the backoff: the third call is 0.3 s after the failure.
    assert len(times) == 3 and times[2] - times[1] >= 0.02 + 0.3 - 0.01, times
