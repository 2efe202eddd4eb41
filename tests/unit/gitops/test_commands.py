"""Comment commands: parsing (pure), and the replies a reviewer reads for /help, a typo,
/diff, /rollback and /train."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from conftest import RecordingCluster, open_service_pr
from github_standin.harness import REVIEWER, GitOpsRepo, Harness, running_bot
from github_standin.server import StandIn

from kakehashi.gitops import commands as cmd
from kakehashi.gitops.bot import Bot
from kakehashi.gitops.github import Review


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("/deploy production", [cmd.Deploy(environment="production")]),
        ("LGTM\n  /diff staging  \n/help", [cmd.Diff(environment="staging"), cmd.Help()]),
        ("/rollback digits", [cmd.Rollback(service="digits")]),
        ("/rollback digits 2", [cmd.Rollback(service="digits", target="2")]),
        ("/rollback digits sha256:" + "a" * 64, [cmd.Rollback(service="digits", target="sha256:" + "a" * 64)]),
        ("/train\n/unlock production", [cmd.Train(), cmd.Unlock(environment="production")]),
        ("/DEPLOY production", [cmd.Deploy(environment="production")]),
        ("/deplyo production", [cmd.Unknown(word="deplyo", suggestion="deploy")]),
        ("/rolback digits", [cmd.Unknown(word="rolback", suggestion="rollback")]),
        ("/frobnicate", [cmd.Unknown(word="frobnicate", suggestion=None)]),
        ("/deploy", [cmd.Invalid(command="deploy", usage="/deploy <environment>")]),
        ("/deploy ../../etc", [cmd.Invalid(command="deploy", usage="/deploy <environment>")]),
        ("/rollback digits latest", [cmd.Invalid(command="rollback", usage=cmd.USAGE["rollback"])]),
        ("/train now", [cmd.Invalid(command="train", usage="/train")]),
        ("please /deploy production", []),
        ("> /deploy production", []),
        ("```\n/deploy production\n```", []),
        ("see /etc/passwd", []),
        ("/etc/passwd", []),
    ],
)
def test_parse(body: str, expected: list[cmd.Command]) -> None:
    assert cmd.parse(body) == expected


def test_approvals_count_only_the_latest_deciding_review_on_the_exact_commit() -> None:
    reviews = [
        Review("a", "APPROVED", "old", None),
        Review("b", "APPROVED", "head", None),
        Review("b", "COMMENTED", "head", None),  # a comment does not withdraw an approval
        Review("c", "APPROVED", "head", None),
        Review("c", "DISMISSED", "head", None),
        Review("author", "APPROVED", "head", None),
    ]
    assert Bot.approvals(reviews, author="author", sha="head") == ["b"]


def run(standin: StandIn, repo: GitOpsRepo, tmp_path: Path, scenario: Any) -> RecordingCluster:
    cluster = RecordingCluster()

    async def main() -> None:
        async with running_bot(standin, repo, tmp_path / "bot-checkout", cluster) as harness:
            await scenario(harness)

    asyncio.run(main())
    return cluster


def test_help_and_did_you_mean(standin: StandIn, repo: GitOpsRepo, tmp_path: Path, payload: Any) -> None:
    open_service_pr(repo, standin.state, 7)

    async def scenario(h: Harness) -> None:
        await h.deliver(payload("/help"))
        await h.settle()
        await h.deliver(payload("/deplyo production"))
        await h.settle()
        await h.deliver(payload("/deploy"))
        await h.settle()

    run(standin, repo, tmp_path, scenario)
    help_reply, typo, usage = [body for _, body in standin.state.comments]
    assert all(f"`{usage}`" in help_reply for usage in cmd.USAGE.values())
    assert typo.startswith("Unknown command `/deplyo`. Did you mean `/deploy`?")
    assert usage == "Usage: `/deploy <environment>`"


def test_diff_posts_the_cluster_diff_per_changed_service(
    standin: StandIn, repo: GitOpsRepo, tmp_path: Path, payload: Any
) -> None:
    sha = open_service_pr(repo, standin.state, 7, digest="5", approved=False)

    async def scenario(h: Harness) -> None:
        await h.deliver(payload("/diff production"))
        await h.settle()
        (reply,) = h.comments()
        assert reply.startswith(f"`/diff production` of `{sha[:12]}`")
        assert "**digits**\n```diff\n--- live/Deployment/digits" in reply
        assert "+  image: registry/digits@sha256:" + "5" * 64 in reply
        assert "**other**" not in reply  # the PR does not touch it
        assert h.github.statuses == [] and h.github.merges == []

    assert run(standin, repo, tmp_path, scenario).applied == []


def test_rollback_needs_write_and_takes_the_services_lock(
    standin: StandIn, repo: GitOpsRepo, tmp_path: Path, payload: Any
) -> None:
    open_service_pr(repo, standin.state, 7)

    async def scenario(h: Harness) -> None:
        await h.deliver(payload("/rollback digits 2", commenter="reader"))
        await h.settle()
        assert "needs write permission" in h.comments()[-1]
        await h.deliver(payload("/rollback digits", commenter=REVIEWER))
        await h.settle()
        assert h.comments()[-1].startswith("`/rollback digits` on production done: serving sha256:111111111111 again")

    assert run(standin, repo, tmp_path, scenario).rollbacks == [("production", "digits", None, REVIEWER)]


def test_train_reports_metrics_and_gate_with_a_status(
    standin: StandIn, repo: GitOpsRepo, tmp_path: Path, payload: Any
) -> None:
    sha = open_service_pr(repo, standin.state, 7, approved=False)

    async def scenario(h: Harness) -> None:
        await h.deliver(payload("/train"))
        await h.settle()
        reply = h.comments()[-1]
        assert "TrainingRun pr-7-abc Succeeded" in reply and "Gate: passed (promotable)" in reply
        assert "| accuracy | 0.93 |" in reply
        assert h.statuses(sha) == [("pending", "kakehashi/train"), ("success", "kakehashi/train")]

    assert run(standin, repo, tmp_path, scenario).trained == ["run.yaml"]
