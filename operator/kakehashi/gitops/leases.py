"""Locks across bot replicas: one coordination.k8s.io/v1 Lease per environment and service on
the production cluster, held while a command applies there.

The in-process locks (`locks.Locks`) order the commands of one replica and let `/unlock`
cancel them; a Lease makes the same lock hold between replicas, so two of them cannot both
apply to one service (a second replica, or an old pod still running beside a new one during a
rollout of the bot itself). The usual Lease protocol, as client-go's leader election: take it
when it is free or its holder stopped renewing it (renewTime + leaseDurationSeconds passed),
every write conditional on the resourceVersion read (a concurrent taker gets 409 and reads
again), renewed at a third of its duration while held, and released on the way out. A holder
that finds its Lease taken (another replica's `/unlock`, or renewals that failed for longer
than the duration) cancels its command rather than go on without the lock.

Every call blocks (the sync client), so each runs in a thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from kakehashi.control.client import Kube
from kakehashi.control.resources import Resource

LEASES: Final = Resource("coordination.k8s.io", "v1", "leases", "Lease")
ANNOTATION_HOLDER: Final = "kakehashi.dev/holder"  # who holds it, in words, for a waiting command
LABEL_ENVIRONMENT: Final = "kakehashi.dev/environment"
LABEL_BOT: Final = "kakehashi.dev/bot-lock"

log = logging.getLogger("kakehashi.gitops")


class LeaseTimeout(Exception):
    def __init__(self, key: tuple[str, str], who: str) -> None:
        super().__init__(f"{key[0]}/{key[1]} still locked by {who}")
        self.key = key
        self.who = who


def lease_name(key: tuple[str, str]) -> str:
    """A DNS name per environment and service; a digest keeps long or odd names apart."""
    readable = re.sub(r"[^a-z0-9-]+", "-", f"{key[0]}-{key[1]}".lower()).strip("-")[:38].strip("-")
    digest = hashlib.sha256(f"{key[0]}\0{key[1]}".encode()).hexdigest()[:10]
    return f"kakehashi-bot-{readable}-{digest}"


def _micro(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # a Lease's MicroTime


def _parse(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _label(environment: str) -> str:
    """The environment as a label value (what /unlock selects the Leases by)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", environment)[:63].strip("-_.") or "env"


def _conflict(error: Exception) -> bool:
    return getattr(error, "status", None) == 409


class Leases:
    def __init__(self, kube: Kube, namespace: str, identity: str, *, duration_s: float = 30.0,
                 poll_s: float = 1.0) -> None:
        self.kube = kube
        self.namespace = namespace
        self.identity = identity  # this replica: its pod name and a random suffix
        self.duration_s = duration_s
        self.poll_s = poll_s

    # ---- one Lease, blocking ------------------------------------------------------------------

    def _spec(self, lease: dict[str, Any] | None, now: datetime) -> dict[str, Any]:
        spec = (lease or {}).get("spec") or {}
        transitions = int(spec.get("leaseTransitions") or 0) + (1 if spec.get("holderIdentity") != self.identity else 0)
        return {"holderIdentity": self.identity, "leaseDurationSeconds": max(1, round(self.duration_s)),
                "acquireTime": _micro(now), "renewTime": _micro(now), "leaseTransitions": transitions}

    @staticmethod
    def _who(lease: dict[str, Any]) -> str:
        annotations = lease["metadata"].get("annotations") or {}
        return str(annotations.get(ANNOTATION_HOLDER) or (lease.get("spec") or {}).get("holderIdentity") or "?")

    def _held_by_other(self, lease: dict[str, Any], now: datetime) -> bool:
        holder = (lease.get("spec") or {}).get("holderIdentity")
        return bool(holder) and holder != self.identity and not self._expired(lease, now)

    def try_take(self, key: tuple[str, str], description: str) -> str | None:
        """Take the Lease; None when taken, else who holds it."""
        name, now = lease_name(key), datetime.now(UTC)
        lease = self.kube.get(LEASES, self.namespace, name)
        metadata = {"annotations": {ANNOTATION_HOLDER: f"{description} (bot replica {self.identity})"}}
        if lease is None:
            body = {"apiVersion": LEASES.api_version, "kind": LEASES.kind,
                    "metadata": {"name": name, "namespace": self.namespace,
                                 "labels": {LABEL_BOT: "true", LABEL_ENVIRONMENT: _label(key[0])}, **metadata},
                    "spec": self._spec(None, now)}
            existing, created = self.kube.create(LEASES, body)
            return None if created else self._who(existing)  # another replica created it first
        if self._held_by_other(lease, now):
            return self._who(lease)
        patch = {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"], **metadata},
                 "spec": self._spec(lease, now)}
        try:
            self.kube.patch(LEASES, self.namespace, name, patch)
        except Exception as error:
            if _conflict(error):  # someone wrote it since the read: read again next time
                return "another bot replica (it was taken at the same moment)"
            raise
        return None

    def renew(self, key: tuple[str, str]) -> bool:
        """Still ours (and renewed)?"""
        name = lease_name(key)
        lease = self.kube.get(LEASES, self.namespace, name)
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return False
        patch = {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                 "spec": {"renewTime": _micro(datetime.now(UTC))}}
        try:
            self.kube.patch(LEASES, self.namespace, name, patch)
        except Exception as error:
            if _conflict(error):  # written by someone else since the read: look again
                return self.renew(key)
            raise
        return True

    def release(self, key: tuple[str, str]) -> None:
        """Free the Lease if this replica holds it."""
        name = lease_name(key)
        lease = self.kube.get(LEASES, self.namespace, name)
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return
        try:
            self._free(name, lease)
        except Exception as error:
            if not _conflict(error):
                raise
            self.release(key)  # a renewal still in flight wrote it: read again

    def unlock(self, environment: str) -> list[str]:
        """`/unlock` across replicas: free the environment's Leases whoever holds them (the
        holder's renewal then finds it lost and cancels its command); who held each."""
        now = datetime.now(UTC)
        released = []
        for lease in self.kube.list_objects(LEASES, self.namespace, f"{LABEL_BOT},{LABEL_ENVIRONMENT}={_label(environment)}"):
            if (lease.get("spec") or {}).get("holderIdentity") and not self._expired(lease, now):
                try:
                    self._free(lease["metadata"]["name"], lease)
                except Exception as error:
                    if not _conflict(error):
                        raise
                    continue  # renewed or released meanwhile; /unlock again if still held
                released.append(self._who(lease))
        return released

    def _free(self, name: str, lease: dict[str, Any]) -> None:
        patch = {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"],
                              "annotations": {ANNOTATION_HOLDER: None}},
                 "spec": {"holderIdentity": None, "renewTime": None, "acquireTime": None}}
        self.kube.patch(LEASES, self.namespace, name, patch)

    def _expired(self, lease: dict[str, Any], now: datetime) -> bool:
        spec = lease.get("spec") or {}
        renewed = _parse(spec.get("renewTime")) or _parse(spec.get("acquireTime"))
        return renewed is None or renewed + timedelta(seconds=float(spec.get("leaseDurationSeconds") or 0)) <= now

    # ---- holding, async -------------------------------------------------------------------------

    @asynccontextmanager
    async def hold(self, keys: list[tuple[str, str]], description: str, *, timeout_s: float) -> AsyncIterator[None]:
        """Hold every key's Lease (sorted order, as the in-process locks) while the block runs;
        renewed meanwhile; the block is cancelled if one is lost."""
        taken: list[tuple[str, str]] = []
        deadline = time.monotonic() + timeout_s
        try:
            for key in sorted(set(keys)):
                while (who := await asyncio.to_thread(self.try_take, key, description)) is not None:
                    if time.monotonic() > deadline:
                        raise LeaseTimeout(key, who)
                    await asyncio.sleep(self.poll_s)
                taken.append(key)
            current = asyncio.current_task()
            assert current is not None
            renewer = asyncio.create_task(self._renew(taken, current), name="lease-renewer")
            try:
                yield
            finally:
                renewer.cancel()
                with suppress(asyncio.CancelledError):
                    await renewer
        finally:
            for key in taken:
                # Shielded: a cancelled command (/unlock) still gives its Leases back.
                try:
                    await asyncio.shield(asyncio.to_thread(self.release, key))
                except Exception:
                    log.exception("lease not released; it expires by itself", extra={"lease": lease_name(key)})

    async def _renew(self, keys: list[tuple[str, str]], holder: asyncio.Task[Any]) -> None:
        interval = self.duration_s / 3
        while True:
            await asyncio.sleep(interval)
            for key in keys:
                try:
                    ours = await asyncio.to_thread(self.renew, key)
                except Exception:
                    # The API server away for a moment: the Lease outlives a few misses.
                    log.warning("lease renewal failed; trying again", extra={"lease": lease_name(key)}, exc_info=True)
                    continue
                if not ours:
                    log.error("lease lost: cancelling the command that held it", extra={"lease": lease_name(key)})
                    holder.cancel()
                    return
