"""kopf's settings and the periodic resync, the same for every resource's controller.

Controllers are reached through kopf's `memo` (set by the runner with `kopf.run(memo=...)`),
never through module globals: each handler gets the memo of the operator that runs it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable, Iterable
from typing import Protocol

import kopf

from kakehashi import GROUP


class Resyncable(Protocol):
    def pending_keys(self) -> Iterable[Hashable]: ...

    def request(self, key: tuple[str, str]) -> None: ...


class Closable(Resyncable, Protocol):
    def close(self) -> None: ...


def configure(settings: kopf.OperatorSettings) -> None:
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    # Only our explicit Events are posted; handler logs stay in the operator's log.
    settings.posting.level = logging.WARNING
    # Watches can freeze silently behind proxies: have both ends time them out and restart.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    settings.batching.batch_window = 0.05


async def resync_forever(controller: Resyncable, every_s: float) -> None:
    """The safety net of level-based control: every unfinished object is recomputed
    periodically, so even an event lost by a broken watch cannot leave a status wrong for long.
    Objects waiting out a backoff are not hurried by it (the queue absorbs the request)."""
    while True:
        await asyncio.sleep(every_s)
        for key in controller.pending_keys():
            controller.request(key)  # type: ignore[arg-type]


def start(memo: kopf.Memo, name: str, controller: Resyncable, every_s: float) -> None:
    """Start a controller's resync, once, from inside a kopf event handler (not from startup).

    kopf's Event poster (`kopf.event`) is found through context variables that kopf sets only
    in the task handling one object's events, not in startup handlers; a task inherits the
    context it is created in. Started from startup, the resync and every reconcile it asked
    for (a PR merged, a deletion's next step: nothing a watch tells about) failed on posting
    their Event with LookupError and were retried forever. The task is kept in the memo: the
    event loop holds tasks only weakly, and `stop` needs it."""
    if getattr(memo, f"{name}_resync", None) is None:
        setattr(memo, f"{name}_resync", asyncio.get_running_loop().create_task(resync_forever(controller, every_s)))


def stop(memo: kopf.Memo, name: str, controller: Closable) -> None:
    """kopf's cleanup: stop the resync and the controller's worker threads."""
    task: asyncio.Task[None] | None = getattr(memo, f"{name}_resync", None)
    if task is not None:
        task.cancel()
    controller.close()
