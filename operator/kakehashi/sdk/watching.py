"""Wait for a resource by watching it (the API server pushes each change), never by polling.

One LIST for the current state and its resourceVersion, then a WATCH from exactly there, so no
change between the two is missed; a watch the server ends (its timeout, a 410 Gone after a
compaction) is resumed from a fresh LIST. The deadline is the caller's: every watch asks the
server to end by then, and the client's read timeout is a little longer than that.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, Final

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from kakehashi.control.resources import Resource
from kakehashi.sdk.errors import NotFound

# One watch request lasts at most this long; the loop opens the next one (a proxy or load
# balancer may cut longer idle connections silently).
WATCH_CHUNK_S: Final = 60


class Deleted(NotFound):
    """The object was deleted while it was being waited for."""


def wait_for_object(
    api: client.ApiClient,
    resource: Resource,
    namespace: str,
    name: str,
    done: Callable[[dict[str, Any]], bool],
    timeout: float | None,
    on_change: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[dict[str, Any], bool]:
    """(the object, True) once `done(object)`; (the last object seen, False) at the deadline.
    `on_change` sees every version of the object, the first one included."""
    custom = client.CustomObjectsApi(api)
    deadline = math.inf if timeout is None else time.monotonic() + timeout
    selector = f"metadata.name={name}"
    last: dict[str, Any] | None = None

    def seen(obj: dict[str, Any]) -> bool:
        nonlocal last
        last = obj
        if on_change is not None:
            on_change(obj)
        return done(obj)

    while True:
        listed = custom.list_namespaced_custom_object(
            resource.group, resource.version, namespace, resource.plural, field_selector=selector)
        items = listed.get("items") or []
        if not items:
            raise (Deleted if last is not None else NotFound)(f"{resource.kind} {namespace}/{name} does not exist")
        if seen(items[0]):
            return items[0], True
        version = listed["metadata"]["resourceVersion"]
        while (remaining := deadline - time.monotonic()) > 0:
            chunk = max(1, math.ceil(min(remaining, WATCH_CHUNK_S)))
            watcher = watch.Watch()
            opened = time.monotonic()
            try:
                for event in watcher.stream(
                    custom.list_namespaced_custom_object, resource.group, resource.version, namespace,
                    resource.plural, field_selector=selector, resource_version=version,
                    timeout_seconds=chunk, allow_watch_bookmarks=True, _request_timeout=chunk + 10,
                ):
                    obj = event["object"]
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    if event["type"] == "BOOKMARK":
                        continue
                    if event["type"] == "DELETED":
                        raise Deleted(f"{resource.kind} {namespace}/{name} was deleted")
                    if seen(obj):
                        return obj, True
                    if time.monotonic() >= deadline:
                        break
            except ApiException as error:
                if error.status != 410:  # Gone: history compacted; list again
                    raise
                break
            finally:
                watcher.stop()
            # A watch that ended at once (a proxy closing it, a server restarting) is not
            # reopened in a tight loop.
            if time.monotonic() - opened < 1:
                time.sleep(max(0.0, min(1.0, deadline - time.monotonic())))
        else:
            assert last is not None
            return last, False
