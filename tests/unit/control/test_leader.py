"""Leader election over a Lease: one candidate leads, a standby takes over only when the Lease
has gone unrenewed for its whole duration by the standby's own clock (or was released), and a
leader that cannot renew gives up before anyone may take over.

The Lease store here keeps the one rule the API server enforces and the election relies on: a
write naming an old resourceVersion is refused with 409. tests/cluster/test_operator_in_cluster.py
runs the same elector against the real API server and the operator's real pods.
"""

from __future__ import annotations

import copy
import threading
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from kakehashi.control.leader import (
    LeaderElector,
    Record,
    StandbyProbe,
    Timing,
    lease_body,
    may_take,
    micro_time,
    released_body,
)
from kakehashi.control.resources import LEASES, Resource

NS, NAME = "kakehashi-system", "kakehashi-operator"


class Leases:
    """An API server's Lease storage: resourceVersions, and 409 for a stale write."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.version = 100
        self.down = False

    def _check(self, resource: Resource) -> None:
        assert resource == LEASES
        if self.down:
            raise ApiException(status=503, reason="Service Unavailable")

    def _store(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.objects[(body["metadata"]["namespace"], body["metadata"]["name"])] = stored
        return copy.deepcopy(stored)

    def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        self._check(resource)
        found = self.objects.get((namespace, name))
        return copy.deepcopy(found) if found else None

    def create(self, resource: Resource, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        self._check(resource)
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        if key in self.objects:
            return copy.deepcopy(self.objects[key]), False
        return self._store(body), True

    def replace(self, resource: Resource, body: dict[str, Any]) -> dict[str, Any]:
        self._check(resource)
        current = self.objects[(body["metadata"]["namespace"], body["metadata"]["name"])]
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        return self._store(body)

    def holder(self) -> str:
        return str(self.objects[(NS, NAME)]["spec"]["holderIdentity"])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def leases() -> Leases:
    return Leases()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _candidate(leases: Leases, clock: Clock, me: str) -> LeaderElector:
    return LeaderElector(leases, NS, NAME, me, Timing(), clock=clock)  # type: ignore[arg-type]


def test_timings_must_let_the_leader_give_up_before_anyone_takes_over() -> None:
    assert Timing() == Timing.for_lease(15.0) == Timing(15.0, 10.0, 2.0)
    for bad in [(15, 15, 2), (15, 10, 10), (10, 15, 2), (15, 10, 0)]:
        with pytest.raises(ValueError, match="renew deadline"):
            Timing(*bad)


def test_a_lease_may_be_taken_only_when_missing_released_ours_or_expired_by_our_clock() -> None:
    held = Record(holder="a_1", duration_s=15, transitions=0, acquire_time=None, version="7")
    assert may_take(None, "b_1", seen_since=0, now=0)
    assert may_take(held, "a_1", seen_since=100, now=100)
    assert may_take(Record("", 1, 3, None, "8"), "b_1", seen_since=100, now=100)
    assert not may_take(held, "b_1", seen_since=100, now=114.9)
    assert may_take(held, "b_1", seen_since=100, now=115)


def test_lease_bodies_renew_keep_the_term_and_a_new_holder_starts_one() -> None:
    now = datetime(2026, 11, 27, 1, 2, 3, tzinfo=UTC)
    assert micro_time(now) == "2026-11-27T01:02:03.000000Z"  # six digits even when zero
    first = lease_body(NS, NAME, "a_1", None, lease_s=15, now=now)
    assert "resourceVersion" not in first["metadata"]
    assert first["spec"] == {"holderIdentity": "a_1", "leaseDurationSeconds": 15, "acquireTime": micro_time(now),
                             "renewTime": micro_time(now), "leaseTransitions": 0}
    mine = Record("a_1", 15, 0, "2026-11-27T01:00:00.000000Z", "41")
    renewed = lease_body(NS, NAME, "a_1", mine, lease_s=15, now=now)
    assert renewed["metadata"]["resourceVersion"] == "41"
    assert (renewed["spec"]["acquireTime"], renewed["spec"]["leaseTransitions"]) == ("2026-11-27T01:00:00.000000Z", 0)
    taken = lease_body(NS, NAME, "b_1", mine, lease_s=15, now=now)
    assert (taken["spec"]["acquireTime"], taken["spec"]["leaseTransitions"]) == (micro_time(now), 1)
    released = released_body(NS, NAME, mine, now=now)
    assert released["spec"]["holderIdentity"] == "" and released["spec"]["leaseDurationSeconds"] == 1
    assert released["metadata"]["resourceVersion"] == "41"


def test_one_leads_and_the_standby_waits_a_whole_lease_from_when_it_saw_the_last_renewal(
    leases: Leases, clock: Clock
) -> None:
    a, b = _candidate(leases, clock, "a_1"), _candidate(leases, clock, "b_1")
    assert a.try_acquire_or_renew() and a.leading
    assert not b.try_acquire_or_renew() and b.holder == "a_1"
    for _ in range(10):  # a renews every 2 s: b never sees an unchanged Lease for 15 s
        clock.now += 2
        assert a.try_acquire_or_renew()
        assert not b.try_acquire_or_renew()
    # a dies (SIGKILL: no release). b saw its last renewal at this instant.
    clock.now += 14.9
    assert not b.try_acquire_or_renew()
    clock.now += 0.1
    assert b.try_acquire_or_renew() and leases.holder() == "b_1"
    assert leases.objects[(NS, NAME)]["spec"]["leaseTransitions"] == 1


def test_a_newcomer_waits_a_whole_lease_even_for_a_long_dead_holder(leases: Leases, clock: Clock) -> None:
    """Expiry is never computed from renewTime (another machine's clock): a candidate that has
    just started cannot tell a dead holder from a live one until the record stays still."""
    a = _candidate(leases, clock, "a_1")
    assert a.try_acquire_or_renew()
    clock.now += 3600
    c = _candidate(leases, clock, "c_1")
    assert not c.try_acquire_or_renew()
    clock.now += 15
    assert c.try_acquire_or_renew()


def test_a_released_lease_is_taken_at_the_next_try(leases: Leases, clock: Clock) -> None:
    a, b = _candidate(leases, clock, "a_1"), _candidate(leases, clock, "b_1")
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    a.release()
    assert not a.leading and leases.holder() == ""
    assert b.try_acquire_or_renew() and leases.holder() == "b_1"
    a.release()  # no longer ours: nothing written
    assert leases.holder() == "b_1"


def test_two_candidates_racing_for_an_expired_lease_get_one_winner(leases: Leases, clock: Clock) -> None:
    a, b, c = (_candidate(leases, clock, f"{x}_1") for x in "abc")
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew() and not c.try_acquire_or_renew()
    clock.now += 15
    # c reads the expired record, then b writes before c does: c's write names a stale version.
    original_replace = leases.replace

    def b_writes_first(resource: Resource, body: dict[str, Any]) -> dict[str, Any]:
        leases.replace = original_replace  # type: ignore[method-assign]
        assert b.try_acquire_or_renew()
        return original_replace(resource, body)

    leases.replace = b_writes_first  # type: ignore[method-assign]
    assert not c.try_acquire_or_renew()  # 409: an answer, not an error
    assert leases.holder() == "b_1" and b.leading and not c.leading


def test_the_leader_reports_the_loss_when_another_took_the_lease(leases: Leases, clock: Clock) -> None:
    a, b = _candidate(leases, clock, "a_1"), _candidate(leases, clock, "b_1")
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    clock.now += 15  # a stalled (a long pause, a partition) and b took over
    assert b.try_acquire_or_renew()
    a.timing = Timing(15, 10, 0.01)
    lost: list[str] = []
    stop = threading.Event()
    a.hold(lost.append, stop).join(timeout=5)
    assert lost == ["the Lease is now held by 'b_1'"] and not a.leading


def test_the_leader_gives_up_when_it_cannot_renew_within_the_deadline(leases: Leases, clock: Clock) -> None:
    a = _candidate(leases, clock, "a_1")
    a.timing = Timing(15, 10, 0.01)
    assert a.try_acquire_or_renew()
    leases.down = True
    lost: list[str] = []
    thread = a.hold(lost.append, threading.Event())
    thread.join(timeout=0.2)
    assert thread.is_alive() and not lost  # failures within the deadline are retried
    clock.now += 10
    thread.join(timeout=5)
    assert len(lost) == 1 and lost[0].startswith("not renewed for 10.0s (ApiException")


def test_a_stopped_leader_reports_nothing(leases: Leases, clock: Clock) -> None:
    a = _candidate(leases, clock, "a_1")
    a.timing = Timing(15, 10, 0.01)
    assert a.try_acquire_or_renew()
    stop, lost = threading.Event(), []
    thread = a.hold(lost.append, stop)
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive() and lost == [] and a.leading  # release() comes next


def test_acquire_waits_as_standby_and_stops_on_request(leases: Leases, clock: Clock) -> None:
    a, b = _candidate(leases, clock, "a_1"), _candidate(leases, clock, "b_1")
    b.timing = Timing(15, 10, 0.01)
    assert a.try_acquire_or_renew()
    stop = threading.Event()
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(b.acquire(stop)))
    thread.start()
    thread.join(timeout=0.2)
    assert thread.is_alive()
    a.release()
    thread.join(timeout=5)
    assert result == [True] and leases.holder() == "b_1"
    c = _candidate(leases, clock, "c_1")
    stop.set()
    assert c.acquire(stop) is False


def test_acquire_names_the_lease_when_rbac_refuses_it(leases: Leases, clock: Clock) -> None:
    def forbidden(*_: Any) -> None:
        raise ApiException(status=403, reason="Forbidden")

    leases.get = forbidden  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="kakehashi-system/kakehashi-operator is refused"):
        _candidate(leases, clock, "a_1").acquire(threading.Event())


def test_the_standby_answers_liveness_until_its_loop_is_stuck(leases: Leases, clock: Clock) -> None:
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    elector = _candidate(leases, clock, "b_1")
    with StandbyProbe(f"http://127.0.0.1:{port}/healthz", elector, stale_s=60):
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/other").status_code == 404
        clock.now += 61
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 503
    # Closed: kopf binds the same port once this replica leads (aiohttp sets SO_REUSEADDR, as
    # here: the probe's closed connections linger in TIME_WAIT).
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
