"""One lock per environment and service, that can say who holds it.

In-process (asyncio): a lock is held for one command's apply; `/unlock` cancels the holder.
With `leases` (a Kubernetes Lease per environment and service, `leases.Leases`) the lock also
holds between bot replicas; without, it is per process and the bot must run as one replica.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from kakehashi.gitops.leases import Leases, LeaseTimeout


@dataclass(frozen=True)
class Holder:
    actor: str
    command: str
    pull_request: int
    since: datetime

    def describe(self) -> str:
        return f"@{self.actor}'s `{self.command}` on #{self.pull_request} (since {self.since:%H:%M:%S} UTC)"


class LockTimeout(Exception):
    def __init__(self, key: tuple[str, str], holder: Holder | None, who: str | None = None) -> None:
        super().__init__(f"{key[0]}/{key[1]} still locked")
        self.key = key
        self.holder = holder
        self.who = who or (holder.describe() if holder else None)  # another replica's holder, in words


@dataclass
class _Slot:
    lock: asyncio.Lock
    holder: Holder | None = None
    task: asyncio.Task[object] | None = None


class Locks:
    def __init__(self, leases: Leases | None = None) -> None:
        self._slots: dict[tuple[str, str], _Slot] = {}
        self.leases = leases

    def _slot(self, key: tuple[str, str]) -> _Slot:
        return self._slots.setdefault(key, _Slot(asyncio.Lock()))

    def holder(self, environment: str, service: str) -> Holder | None:
        slot = self._slots.get((environment, service))
        return slot.holder if slot and slot.lock.locked() else None

    @asynccontextmanager
    async def hold(
        self, keys: list[tuple[str, str]], holder: Holder, *, timeout_s: float
    ) -> AsyncIterator[None]:
        """Hold every key (taken in sorted order, so two commands never deadlock)."""
        taken: list[_Slot] = []
        try:
            for key in sorted(set(keys)):
                slot = self._slot(key)
                try:
                    await asyncio.wait_for(slot.lock.acquire(), timeout_s)
                except TimeoutError:
                    raise LockTimeout(key, slot.holder) from None
                slot.holder, slot.task = holder, asyncio.current_task()
                taken.append(slot)
            if self.leases is None:
                yield
            else:
                try:
                    async with self.leases.hold(keys, holder.describe(), timeout_s=timeout_s):
                        yield
                except LeaseTimeout as timeout:
                    raise LockTimeout(timeout.key, None, timeout.who) from None
        finally:
            for slot in taken:
                slot.holder = slot.task = None
                slot.lock.release()

    def unlock(self, environment: str) -> list[tuple[str, Holder]]:
        """Cancel whatever holds the environment's locks; (service, holder) for each one."""
        released = []
        for (env, service), slot in self._slots.items():
            if env == environment and slot.lock.locked() and slot.holder is not None:
                released.append((service, slot.holder))
                if slot.task is not None:
                    slot.task.cancel()  # its `hold` releases the lock on the way out
        return released


def now() -> datetime:
    return datetime.now(UTC)
