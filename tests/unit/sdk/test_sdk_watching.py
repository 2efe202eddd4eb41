"""Waiting watches: one LIST, then a WATCH from its resourceVersion; a 410 lists again; the
deadline ends it. The API client and its watch are replaced by scripted ones."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from kakehashi.api.trainingrun import RESOURCE
from kakehashi.sdk import NotFound, watching


def _run(version: str, phase: str | None) -> dict[str, Any]:
    return {"metadata": {"name": "digits", "resourceVersion": version}, "status": {"phase": phase} if phase else {}}


class Script:
    """What the API server answers: LIST results in order, and per watch a list of events (or
    an exception)."""

    def __init__(self, lists: list[list[dict[str, Any]]], watches: list[Any]) -> None:
        self.lists = lists
        self.watches = watches
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def list_namespaced_custom_object(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("list", kwargs))
        items = self.lists.pop(0)
        return {"items": items, "metadata": {"resourceVersion": items[0]["metadata"]["resourceVersion"] if items else "1"}}


@pytest.fixture
def script(monkeypatch: pytest.MonkeyPatch) -> Any:
    holder: dict[str, Script] = {}

    class FakeWatch:
        def stream(self, func: Any, *args: Any, **kwargs: Any) -> Any:
            current = holder["script"]
            current.calls.append(("watch", kwargs))
            events = current.watches.pop(0)
            if isinstance(events, Exception):
                raise events
            yield from events

        def stop(self) -> None:
            pass

    monkeypatch.setattr(watching.client, "CustomObjectsApi", lambda api: holder["script"])
    monkeypatch.setattr(watching.watch, "Watch", FakeWatch)

    def install(lists: list[list[dict[str, Any]]], watches: list[Any]) -> Script:
        holder["script"] = Script(lists, watches)
        return holder["script"]

    return install


def _done(obj: dict[str, Any]) -> bool:
    return obj.get("status", {}).get("phase") == "Succeeded"


def test_a_watch_starts_where_the_list_ended_and_every_change_is_seen(script: Any) -> None:
    fake = script([[_run("10", "Pending")]], [[
        {"type": "MODIFIED", "object": _run("11", "Running")},
        {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "12"}}},
        {"type": "MODIFIED", "object": _run("13", "Succeeded")},
    ]])
    seen: list[str | None] = []
    obj, done = watching.wait_for_object(None, RESOURCE, "team", "digits", _done, 30,
                                         lambda o: seen.append(o["status"].get("phase")))
    assert done and obj["metadata"]["resourceVersion"] == "13"
    assert seen == ["Pending", "Running", "Succeeded"]
    assert [kind for kind, _ in fake.calls] == ["list", "watch"]
    watch_args = fake.calls[1][1]
    assert watch_args["resource_version"] == "10" and watch_args["field_selector"] == "metadata.name=digits"
    assert watch_args["timeout_seconds"] <= 30


def test_a_410_gone_lists_again(script: Any) -> None:
    fake = script([[_run("10", "Running")], [_run("50", "Running")]],
                  [ApiException(status=410, reason="Gone"), [{"type": "MODIFIED", "object": _run("51", "Succeeded")}]])
    _, done = watching.wait_for_object(None, RESOURCE, "team", "digits", _done, 30)
    assert done and [kind for kind, _ in fake.calls] == ["list", "watch", "list", "watch"]
    assert fake.calls[3][1]["resource_version"] == "50"


def test_the_deadline_returns_the_last_version_seen(script: Any) -> None:
    fake = script([[_run("10", "Running")]], [[]] * 100)
    obj, done = watching.wait_for_object(None, RESOURCE, "team", "digits", _done, 0.5)
    assert not done and obj["status"]["phase"] == "Running"
    # Watches the server ended at once are not reopened in a tight loop.
    assert [kind for kind, _ in fake.calls] == ["list", "watch"]


def test_a_missing_or_deleted_object_is_not_waited_for(script: Any) -> None:
    script([[]], [])
    with pytest.raises(NotFound, match="team/digits does not exist"):
        watching.wait_for_object(None, RESOURCE, "team", "digits", _done, 5)
    script([[_run("10", "Running")]], [[{"type": "DELETED", "object": _run("11", "Running")}]])
    with pytest.raises(watching.Deleted, match="was deleted"):
        watching.wait_for_object(None, RESOURCE, "team", "digits", _done, 5)
