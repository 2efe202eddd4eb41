"""The webhook door: only GitHub's signed, new, actionable deliveries get past it, and they are
answered before the work is done."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import RecordingCluster, open_service_pr, run_bot
from github_standin.harness import SECRET, GitOpsRepo, Harness, running_bot
from github_standin.server import StandIn
from pydantic import ValidationError

from kakehashi.gitops.app import Deliveries, Webhooks
from kakehashi.gitops.settings import BotSettings
from kakehashi.gitops.signature import SignatureError, verify


def test_forged_unsigned_and_sha1_only_deliveries_are_refused_before_anything_runs(
    standin: StandIn, repo: GitOpsRepo, tmp_path: Path, payload: Any
) -> None:
    open_service_pr(repo, standin.state, 7)
    body = json.dumps(payload("/deploy production")).encode()
    sha1 = "sha1=" + hmac.new(SECRET.encode(), body, hashlib.sha1).hexdigest()
    wrong_key = "sha256=" + hmac.new(b"not-the-secret-at-all-0000", body, hashlib.sha256).hexdigest()

    async def scenario(h: Harness) -> None:
        forged = await h.deliver(body, headers={"X-Hub-Signature-256": wrong_key})
        assert (forged.status_code, forged.json()["outcome"]) == (401, "forged")
        unsigned = await h.deliver(body, signed=False)
        assert (unsigned.status_code, unsigned.json()["outcome"]) == (401, "unsigned")
        sha1_only = await h.deliver(body, signed=False, headers={"X-Hub-Signature": sha1})
        assert (sha1_only.status_code, sha1_only.json()["outcome"]) == (401, "unsigned")
        # A valid SHA-1 signature in the SHA-256 header is no signature either.
        downgraded = await h.deliver(body, signed=False, headers={"X-Hub-Signature-256": sha1})
        assert downgraded.status_code == 401
        # Signed over other bytes (a re-serialised body): refused, the MAC is over the raw body.
        reserialised = json.dumps(json.loads(body), indent=2).encode()
        tampered = await h.deliver(reserialised, signed=False,
                                   headers={"X-Hub-Signature-256": "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()})
        assert tampered.status_code == 401
        await h.settle()

    assert run_bot(standin, repo, tmp_path, scenario).applied == []
    assert standin.state.requests == []  # not one call to GitHub
    assert standin.state.comments == []


def test_a_redelivery_runs_nothing_twice(standin: StandIn, repo: GitOpsRepo, tmp_path: Path, payload: Any) -> None:
    sha = open_service_pr(repo, standin.state, 7)

    async def scenario(h: Harness) -> None:
        first = await h.deliver(payload("/deploy production"), guid="72d3162e-cc78-11e3-81ab-4c9367dc0958")
        await h.settle()
        again = await h.deliver(payload("/deploy production"), guid="72d3162e-cc78-11e3-81ab-4c9367dc0958")
        await h.settle()
        assert (first.status_code, again.status_code, again.json()["outcome"]) == (202, 200, "duplicate")
        assert h.statuses(sha).count(("success", "kakehashi/deploy/production")) == 1

    assert len(run_bot(standin, repo, tmp_path, scenario).applied) == 1
    assert len(standin.state.merges) == 1


def test_a_forged_delivery_cannot_use_up_a_guid(standin: StandIn, repo: GitOpsRepo, tmp_path: Path, payload: Any) -> None:
    open_service_pr(repo, standin.state, 7)

    async def scenario(h: Harness) -> None:
        guid = "11111111-2222-3333-4444-555555555555"
        await h.deliver(payload("/deploy production"), guid=guid, headers={"X-Hub-Signature-256": "sha256=" + "0" * 64})
        genuine = await h.deliver(payload("/deploy production"), guid=guid)
        assert genuine.status_code == 202
        await h.settle()

    assert len(run_bot(standin, repo, tmp_path, scenario).applied) == 1


@pytest.mark.parametrize(
    ("kwargs", "event", "reason"),
    [
        ({"action": "edited"}, "issue_comment", "comment edited"),
        ({"action": "deleted"}, "issue_comment", "comment deleted"),
        ({"user_type": "Bot"}, "issue_comment", "comment by a bot"),
        ({"commenter": "renovate[bot]"}, "issue_comment", "comment by a bot"),
        ({"pull_request": False}, "issue_comment", "not a pull request"),
        ({}, "pull_request_review_comment", "event pull_request_review_comment is not handled"),
    ],
)
def test_edited_bot_and_non_pr_comments_are_ignored(
    standin: StandIn, repo: GitOpsRepo, tmp_path: Path, payload: Any, kwargs: dict[str, Any], event: str, reason: str
) -> None:
    open_service_pr(repo, standin.state, 7)

    async def scenario(h: Harness) -> None:
        answer = await h.deliver(payload("/deploy production", **kwargs), event=event)
        assert (answer.status_code, answer.json()["outcome"]) == (200, "ignored")
        assert reason in answer.json()["message"]
        await h.settle()

    assert run_bot(standin, repo, tmp_path, scenario).applied == []
    assert standin.state.requests == [] and standin.state.comments == []


def test_prose_without_a_command_is_ignored(standin: StandIn, repo: GitOpsRepo, tmp_path: Path, payload: Any) -> None:
    async def scenario(h: Harness) -> None:
        answer = await h.deliver(payload("I'll /deploy production after lunch\n> /deploy production\n```\n/deploy production\n```"))
        assert answer.json()["outcome"] == "ignored"

    run_bot(standin, repo, tmp_path, scenario)
    assert standin.state.requests == []


def test_the_answer_comes_before_the_work(standin: StandIn, repo: GitOpsRepo, tmp_path: Path, payload: Any) -> None:
    """GitHub gives a delivery 10 s; a rollout takes longer. The 202 must not wait for it."""
    sha = open_service_pr(repo, standin.state, 7)
    cluster = RecordingCluster(gate=asyncio.Event())

    async def scenario(h: Harness) -> None:
        assert cluster.gate is not None
        started = time.monotonic()
        answer = await h.deliver(payload("/deploy production"))
        assert answer.status_code == 202 and time.monotonic() - started < 2
        await asyncio.wait_for(cluster.entered.wait(), 10)
        assert h.github.merges == [] and h.statuses(sha) == [("pending", "kakehashi/deploy/production")]
        cluster.gate.set()
        await h.settle()
        assert h.statuses(sha)[-1] == ("success", "kakehashi/deploy/production")

    run_bot(standin, repo, tmp_path, scenario, cluster)


def test_the_bot_refuses_to_start_without_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KAKEHASHI_BOT_WEBHOOK_SECRET",):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAKEHASHI_BOT_GITHUB_TOKEN", "t")
    monkeypatch.setenv("KAKEHASHI_BOT_REPOSITORY_URL", "https://github.com/o/r.git")
    with pytest.raises(ValidationError, match="webhook_secret"):
        BotSettings()
    monkeypatch.setenv("KAKEHASHI_BOT_WEBHOOK_SECRET", "short")
    with pytest.raises(ValidationError, match="at least 16"):
        BotSettings()
    with pytest.raises(ValueError, match="without a webhook secret"):
        Webhooks(bot=None, secret=b"")  # type: ignore[arg-type]
    monkeypatch.setenv("KAKEHASHI_BOT_WEBHOOK_SECRET", SECRET)
    settings = BotSettings()
    assert SECRET not in repr(settings) and SECRET not in str(settings.model_dump())


def test_verify_accepts_only_sha256_of_the_exact_bytes() -> None:
    body = b'{"action":"created"}'
    good = "sha256=" + hmac.new(b"k" * 16, body, hashlib.sha256).hexdigest()
    verify(b"k" * 16, body, good)
    for header in (None, "", "sha256=", good.replace("sha256", "sha1"), good[:-1] + "0", "md5=" + good[7:]):
        with pytest.raises(SignatureError):
            verify(b"k" * 16, body, header)
    with pytest.raises(SignatureError):
        verify(b"k" * 16, body + b" ", good)


def test_a_redelivery_after_a_restart_still_runs_nothing_twice(
    standin: StandIn, repo: GitOpsRepo, tmp_path: Path, payload: Any
) -> None:
    open_service_pr(repo, standin.state, 7)
    journal = tmp_path / "deliveries"
    cluster = RecordingCluster()
    guid = "9a8b7c6d-0000-11f0-8000-000000000007"

    async def main() -> None:
        for restart in range(2):  # the same journal, a new process's memory
            async with running_bot(standin, repo, tmp_path / "bot-checkout", cluster, journal=journal) as h:
                answer = await h.deliver(payload("/deploy production"), guid=guid)
                assert answer.json()["outcome"] == ("accepted" if restart == 0 else "duplicate")
                await h.settle()

    asyncio.run(main())
    assert len(cluster.applied) == 1 and journal.read_text() == guid + "\n"


def test_the_delivery_journal_keeps_only_the_newest(tmp_path: Path) -> None:
    journal = tmp_path / "deliveries"
    journal.write_text("".join(f"guid-{i}\n" for i in range(150)))
    deliveries = Deliveries(100, journal)
    assert not deliveries.first_time("guid-149") and not deliveries.first_time("guid-50")
    assert deliveries.first_time("guid-49")  # forgotten: beyond the newest 100
    asyncio.run(deliveries.record("guid-49"))
    assert journal.read_text().splitlines()[0] == "guid-50" and journal.read_text().splitlines()[-1] == "guid-49"


def test_the_delivery_journal_is_trimmed_as_it_grows_and_a_restart_still_knows_the_newest(tmp_path: Path) -> None:
    """A bot that runs for months never restarts to trim its journal: it stays under twice
    the GUIDs remembered, and what a restart reads back is still the newest ones."""
    journal = tmp_path / "deliveries"
    deliveries = Deliveries(10, journal)
    sizes = []

    async def accept_all() -> None:
        for i in range(45):
            assert deliveries.first_time(f"guid-{i}")
            await deliveries.record(f"guid-{i}")
            sizes.append(len(journal.read_text().splitlines()))

    asyncio.run(accept_all())
    assert max(sizes) < 20 and sizes[-1] == deliveries.journal_lines
    assert not journal.with_name("deliveries.new").exists()
    restarted = Deliveries(10, journal)
    assert all(not restarted.first_time(f"guid-{i}") for i in range(35, 45))  # the newest 10: duplicates
    assert restarted.first_time("guid-34")  # older ones are forgotten, as in memory


def test_the_journal_fsync_runs_off_the_event_loop(
    standin: StandIn, repo: GitOpsRepo, tmp_path: Path, payload: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow disk delays the one delivery being journalled, not the other requests the bot
    is answering meanwhile (GitHub gives each 10 s)."""
    open_service_pr(repo, standin.state, 7)
    journal = tmp_path / "deliveries"
    threads: list[int] = []
    syncing = threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        threads.append(threading.get_ident())
        syncing.set()
        time.sleep(1.0)
        real_fsync(fd)

    monkeypatch.setattr("kakehashi.gitops.app.os.fsync", slow_fsync)

    async def main() -> None:
        async with running_bot(standin, repo, tmp_path / "bot-checkout", RecordingCluster(), journal=journal) as h:
            loop_thread = threading.get_ident()
            webhook = asyncio.create_task(h.deliver(payload("/deploy production")))
            assert await asyncio.to_thread(syncing.wait, 10)
            started = time.monotonic()
            health = await h.client.get("/healthz")
            assert health.status_code == 200 and time.monotonic() - started < 0.5  # not behind the fsync
            assert (await webhook).status_code == 202
            await h.settle()
            assert threads and loop_thread not in threads

    asyncio.run(main())
    assert len(journal.read_text().splitlines()) == 1
