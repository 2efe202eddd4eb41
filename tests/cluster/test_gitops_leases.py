"""The bot's locks between replicas: Kubernetes Leases on the local production cluster's API
server. Two replicas cannot both apply to one service; a replica that died lets go when its
Lease expires; `/unlock` on one replica cancels the command another one runs."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from github_standin.harness import GitOpsRepo, open_pr, payload, running_bot, start_standin

from kakehashi.control.client import Kube, api_client
from kakehashi.gitops.cluster import ApplyResult, Origin, ServiceChange, TrainResult
from kakehashi.gitops.leases import LEASES, Leases, LeaseTimeout, lease_name

KEY = ("production", "web")
CONFIG = "environments:\n  production: {path: production, approvals: 1}\n"


@pytest.fixture
def kube(dev_env: Any) -> Kube:
    return Kube(api_client(dev_env.production.kubeconfig))


def test_a_lease_is_held_renewed_expired_and_unlocked_between_replicas(kube: Kube, production_namespace: str) -> None:
    a = Leases(kube, production_namespace, "replica-a", duration_s=3, poll_s=0.2)
    b = Leases(kube, production_namespace, "replica-b", duration_s=3, poll_s=0.2)

    async def main() -> None:
        async with a.hold([KEY], "@alice's `/deploy production` on #7", timeout_s=5):
            await asyncio.sleep(4)  # longer than the Lease's duration: renewals keep it
            with pytest.raises(LeaseTimeout) as refused:
                async with b.hold([KEY], "@bob's `/deploy production` on #8", timeout_s=1):
                    raise AssertionError("two replicas held one service's lock")
            assert "@alice's `/deploy production` on #7" in refused.value.who and "replica-a" in refused.value.who
        # Given back on the way out: the other replica takes it at once.
        started = time.monotonic()
        async with b.hold([KEY], "@bob's `/deploy production` on #8", timeout_s=5):
            assert time.monotonic() - started < 1.5

        # A replica that died holding it (no renewals, no release): free once it expires.
        assert await asyncio.to_thread(a.try_take, KEY, "a replica about to die") is None
        started = time.monotonic()
        async with b.hold([KEY], "after the crash", timeout_s=10):
            waited = time.monotonic() - started
        assert 1.5 < waited < 6, waited

        # /unlock on replica b cancels the command replica a runs.
        async def long_deploy() -> None:
            async with a.hold([KEY], "@carol's `/deploy production` on #9", timeout_s=5):
                await asyncio.sleep(60)

        task = asyncio.create_task(long_deploy())
        await asyncio.sleep(0.5)
        released = await asyncio.to_thread(b.unlock, "production")
        assert len(released) == 1 and "@carol's" in released[0]
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)  # its next renewal (every 1 s) finds the Lease gone

    asyncio.run(main())
    lease = kube.get(LEASES, production_namespace, lease_name(KEY))
    assert lease is not None and not lease["spec"].get("holderIdentity")  # nobody holds it now


class SlowCluster:
    """Applies take 2 s; records how many ran at once, across both replicas."""

    def __init__(self) -> None:
        self.active = 0
        self.max_active = 0
        self.applied: list[str] = []

    async def apply(self, change: ServiceChange, origin: Origin) -> ApplyResult:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await asyncio.sleep(2)
            self.applied.append(origin.sha)
            return ApplyResult(True, "ready")
        finally:
            self.active -= 1

    async def diff(self, change: ServiceChange) -> str:
        return ""

    async def rollback(self, environment: str, service: str, target: str | None, origin: Origin) -> ApplyResult:
        raise AssertionError("not used")

    async def train(self, directory: Path, origin: Origin) -> TrainResult:
        raise AssertionError("not used")


def test_two_bot_replicas_never_apply_to_one_service_at_once(
    kube: Kube, production_namespace: str, tmp_path: Path,
) -> None:
    repo = GitOpsRepo.create(tmp_path / "git", {".kakehashi/bot.yaml": CONFIG,
                                               "production/web/kustomization.yaml": "resources: []\n"})
    standin = start_standin(repo)
    github = standin.state
    first = open_pr(repo, github, 7, {"production/web/a.yaml": "a: 1\n"})
    second = open_pr(repo, github, 8, {"production/web/b.yaml": "b: 1\n"})
    cluster = SlowCluster()

    async def main() -> None:
        one = Leases(kube, production_namespace, "replica-1", duration_s=6, poll_s=0.2)
        two = Leases(kube, production_namespace, "replica-2", duration_s=6, poll_s=0.2)
        async with running_bot(standin, repo, tmp_path / "bot-1", cluster, leases=one) as h1, \
                running_bot(standin, repo, tmp_path / "bot-2", cluster, leases=two) as h2:
            answers = await asyncio.gather(h1.deliver(payload("/deploy production", number=7)),
                                           h2.deliver(payload("/deploy production", number=8)))
            assert [a.status_code for a in answers] == [202, 202]
            await asyncio.gather(h1.settle(60), h2.settle(60))

    try:
        asyncio.run(main())
    finally:
        standin.stop()
    assert cluster.max_active == 1, "two replicas applied to production/web at the same time"
    assert sorted(cluster.applied) == sorted([first, second])
    assert sorted(github.merges) == [(7, first), (8, second)], github.comments
    assert github.violations == []
