"""What every resource's controller has: worker threads for blocking calls, kopf's indices, the
per-object queue. A controller subclasses this and writes `reconcile(key)`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from kakehashi.control.backoff import Backoff
from kakehashi.control.queue import ReconcileQueue

Key = tuple[str, str]  # (namespace, name)
Index = Mapping[Key, Iterable[Any]]
T = TypeVar("T")


def items(index: Index | None, key: Key) -> list[dict[str, Any]]:
    """The objects a kopf index holds under `key`, as plain dicts (empty if none)."""
    if index is None:
        return []
    try:
        return [dict(v) for v in index.get(key, ())]
    except KeyError:
        return []


def resource_version(obj: Mapping[str, Any] | None) -> int:
    try:
        return int((obj or {}).get("metadata", {}).get("resourceVersion", 0))
    except ValueError:
        return 0


class Controller:
    def __init__(self, resource: str, *, threads: int, backoff: Backoff | None = None) -> None:
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"kakehashi-{resource}")
        # The lambda looks the method up at call time, so tests can wrap `reconcile`.
        self.queue: ReconcileQueue[Key] = ReconcileQueue(resource, lambda key: self.reconcile(key), backoff=backoff)
        self.indices: dict[str, Index] = {}
        self._written: dict[Key, dict[str, Any]] = {}  # our last status patch result per object

    async def reconcile(self, key: Key) -> None:
        raise NotImplementedError

    async def io(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking call (API, S3) on a worker thread: the event loop never waits on I/O."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def bind(self, **indices: Index) -> None:
        self.indices.update(indices)

    def request(self, key: Key) -> None:
        """Ask for a reconcile of one object; cheap and idempotent, safe to call on every event."""
        self.queue.request(key)

    def forget(self, key: Key) -> None:
        """The object is gone: drop per-object memory, or it would grow forever."""
        self.queue.forget(key)
        self._written.pop(key, None)

    def written(self, key: Key, result: dict[str, Any] | None) -> None:
        """Remember what our own status patch returned (None: the object was gone)."""
        if result is not None:
            self._written[key] = result

    def current(self, index: str, key: Key) -> dict[str, Any] | None:
        """The object from its index, with our own last status if the watch has not caught up:
        a reconcile must never compute from a status older than the one it wrote."""
        bodies = items(self.indices.get(index), key)
        if not bodies:
            return None
        body = bodies[0]
        mine = self._written.get(key)
        if (mine and mine.get("metadata", {}).get("uid") == body["metadata"].get("uid")
                and resource_version(mine) > resource_version(body)):
            body = {**body, "status": mine.get("status") or {}}
        return body

    def close(self) -> None:
        """Stop the worker threads (kopf's cleanup): calls in flight finish, no new ones start."""
        self.executor.shutdown(wait=False, cancel_futures=True)
