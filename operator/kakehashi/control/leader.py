"""Leader election over a coordination.k8s.io Lease: of the operator's replicas only the one
holding the Lease runs kopf; the others wait as standbys and take over when it stops renewing.

Why a Lease rather than kopf's peering (kopf docs/peering.rst, kopf/_core/engines/peering.py),
which the issue first named:
- peering pauses only kopf's own watch streams. What kopf does not own keeps running in a
  paused operator: our periodic resync and reconcile queue would go on reconciling from the
  indices it filled while it led (kopf discussion #1003: timers fire on the paused replica too).
  A standby here has no kopf, no indices and no queue at all.
- Nothing fences a peering leader that lost contact: it never pauses itself, so after a network
  partition or a long stall two replicas reconcile until their keep-alives meet again. Here a
  leader that could not renew within `renew_deadline_s` exits, before its Lease can expire.
- A Deployment's replicas share their arguments, hence their priority, and same-priority
  operators all pause ("the cluster is not served"). The docs' `--priority=$RANDOM` still
  collides now and then, and a restarted pod that draws a higher number preempts the leader
  mid-work: a handover on every restart.
- Peering needs two cluster-scoped CRDs of another API group (kopf.dev) and cluster-wide
  `patch` on them; a Lease needs a Role on one object in the operator's own namespace.

The algorithm is client-go's (k8s.io/client-go/tools/leaderelection, the one kube-controller-
manager uses), with its default timings: expiry is judged by this process's monotonic clock from
when it last saw the record change, never from timestamps another machine wrote, so clock skew
between nodes cannot shorten a lease. A clean stop releases the Lease, so a rolling update hands
over in one retry period instead of a whole lease.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kakehashi.control.client import Kube
from kakehashi.control.errors import PermanentError, classify, http_status
from kakehashi.control.resources import LEASES

logger = logging.getLogger("kakehashi.leader")

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass(frozen=True)
class Timing:
    """How long a Lease lasts unrenewed, how long a leader may fail to renew before it gives up,
    and how often everyone tries. The defaults are client-go's (15 s, 10 s, 2 s)."""

    lease_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_s: float = 2.0

    def __post_init__(self) -> None:
        # The leader must give up before a standby may take over, and try more than once first.
        if not 0 < self.retry_s < self.renew_deadline_s < self.lease_s:
            raise ValueError(f"need 0 < retry ({self.retry_s}) < renew deadline "
                             f"({self.renew_deadline_s}) < lease ({self.lease_s})")

    @classmethod
    def for_lease(cls, lease_s: float) -> Timing:
        """client-go's proportions for a lease of `lease_s` seconds."""
        return cls(lease_s=lease_s, renew_deadline_s=lease_s * 2 / 3, retry_s=lease_s / 7.5)


@dataclass(frozen=True)
class Record:
    """What a Lease says, and the resourceVersion it said it at."""

    holder: str  # "" once released
    duration_s: float
    transitions: int
    acquire_time: str | None
    version: str

    @classmethod
    def of(cls, lease: dict[str, Any]) -> Record:
        spec = lease.get("spec") or {}
        return cls(
            holder=spec.get("holderIdentity") or "",
            duration_s=float(spec.get("leaseDurationSeconds") or 0),
            transitions=int(spec.get("leaseTransitions") or 0),
            acquire_time=spec.get("acquireTime"),
            version=str(lease.get("metadata", {}).get("resourceVersion") or ""),
        )


def may_take(record: Record | None, me: str, *, seen_since: float, now: float) -> bool:
    """Whether `me` may write itself into the Lease: it does not exist, was released, is ours,
    or has not changed for its whole duration as measured by our own clock since we saw it."""
    if record is None or record.holder in ("", me):
        return True
    return now >= seen_since + record.duration_s


def micro_time(moment: datetime) -> str:
    """A MicroTime as the API server parses it (RFC 3339 with exactly six fraction digits)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(
    namespace: str, name: str, me: str, previous: Record | None, *, lease_s: float, now: datetime
) -> dict[str, Any]:
    """The Lease naming `me` holder: renewed if it was ours, a new term (acquireTime, one more
    transition) if it was someone else's or nobody's. Conditional on `previous`'s version."""
    stamp = micro_time(now)
    renewing = previous is not None and previous.holder == me
    metadata: dict[str, Any] = {"namespace": namespace, "name": name}
    if previous is not None:
        metadata["resourceVersion"] = previous.version
    transitions = 0 if previous is None else previous.transitions + (0 if renewing else 1)
    return {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata,
        "spec": {
            "holderIdentity": me,
            "leaseDurationSeconds": max(1, round(lease_s)),
            "acquireTime": previous.acquire_time if renewing and previous else stamp,
            "renewTime": stamp,
            "leaseTransitions": transitions,
        },
    }


def released_body(namespace: str, name: str, mine: Record, *, now: datetime) -> dict[str, Any]:
    """The Lease handed back (client-go's release): no holder, a one-second duration."""
    stamp = micro_time(now)
    return {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"namespace": namespace, "name": name, "resourceVersion": mine.version},
        "spec": {"holderIdentity": "", "leaseDurationSeconds": 1, "acquireTime": stamp,
                 "renewTime": stamp, "leaseTransitions": mine.transitions},
    }


def identity() -> str:
    """This process's name in the Lease: the pod's name (POD_NAME from the downward API, else the
    host name) and a random suffix, as controller-runtime does: a container restarted in the same
    pod is a new candidate, never mistaken for the holder that died."""
    pod = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{pod}_{uuid.uuid4().hex[:8]}"


def default_namespace() -> str:
    """The pod's own namespace when in a cluster, else the install's."""
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "kakehashi-system"
    except OSError:
        return "kakehashi-system"


class LeaderElector:
    """One candidate for one Lease. `acquire` blocks until this process leads; `hold` renews on a
    thread of its own and reports a loss; `release` hands the Lease over on a clean stop."""

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        me: str,
        timing: Timing | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.me = me
        self.timing = timing or Timing()
        self.clock = clock
        self.holder = ""  # as last read: who leads, for the logs
        self.last_attempt = clock()  # the election loop's heartbeat, for the standby's liveness
        self._seen: tuple[str, float] | None = None  # (resourceVersion, when we first saw it)
        self._mine: Record | None = None  # what we last wrote, while we hold the Lease
        self._renewed_at = 0.0

    @property
    def leading(self) -> bool:
        return self._mine is not None

    def try_acquire_or_renew(self) -> bool:
        """One attempt: True if this process holds the Lease afterwards. API errors propagate;
        a conflicting writer (409) is an answer: someone else got there first."""
        lease = self.kube.get(LEASES, self.namespace, self.name)
        now = self.clock()
        record = Record.of(lease) if lease is not None else None
        if record is not None and (self._seen is None or self._seen[0] != record.version):
            self._seen = (record.version, now)
        self.holder = record.holder if record else ""
        seen_since = self._seen[1] if self._seen else now
        if not may_take(record, self.me, seen_since=seen_since, now=now):
            self._mine = None
            return False
        body = lease_body(self.namespace, self.name, self.me, record, lease_s=self.timing.lease_s,
                          now=datetime.now(UTC))
        try:
            if record is None:
                written, created = self.kube.create(LEASES, body)
                if not created:  # another candidate created it between our read and our write
                    return False
            else:
                written = self.kube.replace(LEASES, body)
        except Exception as error:
            if http_status(error) == 409:  # written by someone since our read: ask again
                return False
            raise
        self._mine = Record.of(written)
        self._seen = (self._mine.version, now)
        self._renewed_at = now
        self.holder = self.me
        return True

    def acquire(self, stop: threading.Event) -> bool:
        """Wait as a standby until this process holds the Lease (True) or `stop` is set (False).
        Temporary API failures are retried; a refusal (RBAC missing) raises, naming the Lease."""
        announced = ""
        while not stop.is_set():
            self.last_attempt = self.clock()
            try:
                if self.try_acquire_or_renew():
                    logger.info("Acquired the leader Lease", extra=self._fields())
                    return True
                if self.holder != announced:
                    announced = self.holder
                    logger.info("Waiting as standby: the leader Lease is held", extra=self._fields())
            except Exception as error:
                self._raise_if_refused(error)
                logger.warning("Reading the leader Lease failed; retrying",
                               extra={**self._fields(), "error": f"{type(error).__name__}: {error}"[:300]})
            # A little jitter, so that standbys started together do not write together.
            stop.wait(self.timing.retry_s * (1 + 0.2 * random.random()))
        return False

    def hold(self, on_lost: Callable[[str], None], stop: threading.Event) -> threading.Thread:
        """Renew every retry period on a thread of its own (a busy event loop cannot starve it)
        until `stop` is set; call `on_lost` once if another candidate took the Lease or it could
        not be renewed within the renew deadline."""

        def renew_forever() -> None:
            while not stop.wait(self.timing.retry_s):
                failure = "a conflicting write"
                try:
                    if self.try_acquire_or_renew():
                        continue
                    if not self.leading:
                        reason = f"the Lease is now held by {self.holder!r}"
                        break
                except Exception as error:
                    failure = f"{type(error).__name__}: {str(error)[:200]}"
                late = self.clock() - self._renewed_at
                if late >= self.timing.renew_deadline_s:
                    reason = f"not renewed for {late:.1f}s ({failure})"
                    break
                logger.warning("Renewing the leader Lease failed; retrying", extra={**self._fields(), "error": failure})
            else:
                return  # stopped: kopf has ended, and release() follows
            self._mine = None
            if not stop.is_set():
                on_lost(reason)

        thread = threading.Thread(target=renew_forever, name="kakehashi-leader-lease", daemon=True)
        thread.start()
        return thread

    def release(self) -> None:
        """Hand the Lease back after a clean stop (call only once kopf has stopped and the renew
        thread has ended): a standby takes over at its next try instead of after the lease."""
        mine, self._mine = self._mine, None
        if mine is None:
            return
        try:
            self.kube.replace(LEASES, released_body(self.namespace, self.name, mine, now=datetime.now(UTC)))
            logger.info("Released the leader Lease", extra=self._fields())
        except Exception as error:  # taken meanwhile, or the API is away: it expires on its own
            logger.warning("Releasing the leader Lease failed; it expires on its own",
                           extra={**self._fields(), "error": f"{type(error).__name__}: {error}"[:300]})

    def _raise_if_refused(self, error: Exception) -> None:
        kind = classify(error)
        if isinstance(kind, PermanentError):
            raise RuntimeError(f"the leader Lease {self.namespace}/{self.name} is refused to this "
                               f"operator ({kind}): check its Role") from error

    def _fields(self) -> dict[str, str]:
        return {"lease": f"{self.namespace}/{self.name}", "identity": self.me, "holder": self.holder}


class StandbyProbe:
    """The liveness endpoint while this replica waits (kopf serves it once this one leads): 200
    while the election loop is turning, 503 if it has been stuck for `stale_s`."""

    def __init__(self, url: str, elector: LeaderElector, stale_s: float) -> None:
        parsed = urlparse(url)
        self.address = (parsed.hostname or "0.0.0.0", parsed.port or 80)
        self.path = parsed.path or "/"
        self.elector = elector
        self.stale_s = stale_s
        self._server: ThreadingHTTPServer | None = None

    def __enter__(self) -> StandbyProbe:
        probe = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != probe.path:
                    self.send_error(404)
                    return
                stuck = probe.elector.clock() - probe.elector.last_attempt > probe.stale_s
                body = b'{"standby": "stuck"}' if stuck else b'{"standby": "waiting for the leader Lease"}'
                self.send_response(503 if stuck else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # a probe every few seconds is not worth a log line

        self._server = ThreadingHTTPServer(self.address, Handler)
        threading.Thread(target=self._server.serve_forever, name="kakehashi-standby-probe", daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        # Closed before kopf starts: kopf's own liveness endpoint binds the same port.
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
