"""/deploy end to end through the webhook: GitHub's example payload in, the stand-in's record
of comments, statuses and merges out, the cluster side recorded."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import RecordingCluster, open_service_pr, run_bot
from github_standin.harness import (
    AUTHOR,
    REVIEWER,
    SECRET,
    TOKEN,
    GitOpsRepo,
    Harness,
    git,
    open_pr,
)
from github_standin.server import PullRequestState, ReviewState, StandIn

from kakehashi.gitops.cluster import ApplyResult

Scenario = Callable[[Harness], Awaitable[None]]




def test_deploy_applies_the_approved_head_then_merges_with_statuses(
    standin: StandIn, repo: GitOpsRepo, tmp_path: Path, payload: Any
) -> None:
    sha = open_service_pr(repo, standin.state, 7, digest="3")

    async def scenario(h: Harness) -> None:
        answer = await h.deliver(payload("Looks good.\n/deploy production"))
        assert answer.status_code == 202
        await h.settle()
        assert h.statuses(sha) == [("pending", "kakehashi/deploy/production"), ("success", "kakehashi/deploy/production")]
        assert h.github.merges == [(7, sha)]
        assert "Merged as" in h.comments()[-1] and "@octo-reviewer" in h.comments()[-1]

    cluster = run_bot(standin, repo, tmp_path, scenario)
    # Exactly the PR head's file was applied, and only the service the PR changed.
    assert cluster.applied == [("production", "digits", sha, "spec: {template: {spec: {containers: [{name: serve, image: 'registry/digits@sha256:" + "3" * 64 + "'}]}}}")]
    # GitHub's merge is a real merge commit on main holding the deployed file.
    assert "3" * 64 in git(repo.work, "--git-dir", str(repo.origin), "show", "main:production/digits/deployment.yaml")


def test_failed_rollout_is_a_failure_status_and_nothing_is_merged(
    standin: StandIn, repo: GitOpsRepo, tmp_path: Path, payload: Any
) -> None:
    sha = open_service_pr(repo, standin.state, 7)
    cluster = RecordingCluster(result=ApplyResult(False, "rollout failed: 0/2 ready (CrashLoopBackOff); 1.0 still serves"))

    async def scenario(h: Harness) -> None:
        await h.deliver(payload("/deploy production"))
        await h.settle()
        assert h.statuses(sha)[-1] == ("failure", "kakehashi/deploy/production")
        description = [d for s, st, c, d in h.github.statuses if s == sha][-1]
        assert "CrashLoopBackOff" in description
        assert h.github.merges == []
        assert "CrashLoopBackOff" in h.comments()[-1]

    run_bot(standin, repo, tmp_path, scenario, cluster)


def test_approval_of_an_older_commit_does_not_count(
    standin: StandIn, repo: GitOpsRepo, tmp_path: Path, payload: Any
) -> None:
    old = open_service_pr(repo, standin.state, 7, approved=True)
    new = repo.push_to_pr(7, {"production/digits/extra.txt": "pushed after the review\n"})
    standin.state.pulls[7].head_sha = new

    async def scenario(h: Harness) -> None:
        await h.deliver(payload("/deploy production"))
        await h.settle()
        assert "needs 1 approval(s)" in h.comments()[-1] and "earlier commit" in h.comments()[-1]
        assert h.statuses(new) == [("pending", "kakehashi/deploy/production"), ("failure", "kakehashi/deploy/production")]
        assert h.statuses(old) == []

    cluster = run_bot(standin, repo, tmp_path, scenario)
    assert cluster.applied == [] and standin.state.merges == []


def test_the_authors_own_approval_and_a_later_change_request_do_not_count(
    standin: StandIn, repo: GitOpsRepo, tmp_path: Path, payload: Any
) -> None:
    sha = open_service_pr(repo, standin.state, 7, approved=False)
    standin.state.reviews[7] = [
        ReviewState(AUTHOR, "APPROVED", sha),
        ReviewState(REVIEWER, "APPROVED", sha),
        ReviewState(REVIEWER, "CHANGES_REQUESTED", sha),
    ]

    async def scenario(h: Harness) -> None:
        await h.deliver(payload("/deploy production"))
        await h.settle()
        assert "it has 0" in h.comments()[-1]

    assert run_bot(standin, repo, tmp_path, scenario).applied == []


def test_pr_not_mergeable_is_refused(standin: StandIn, repo: GitOpsRepo, tmp_path: Path, payload: Any) -> None:
    sha = open_service_pr(repo, standin.state, 7)
    standin.state.pulls[7].mergeable, standin.state.pulls[7].mergeable_state = False, "dirty"

    async def scenario(h: Harness) -> None:
        await h.deliver(payload("/deploy production"))
        await h.settle()
        assert "not mergeable: dirty" in h.comments()[-1]
        assert h.statuses(sha)[-1] == ("failure", "kakehashi/deploy/production")

    assert run_bot(standin, repo, tmp_path, scenario).applied == []


def test_head_moved_between_command_and_apply(standin: StandIn, repo: GitOpsRepo, tmp_path: Path, payload: Any) -> None:
    sha = open_service_pr(repo, standin.state, 7)
    moved = repo.push_to_pr(7, {"production/digits/extra.txt": "pushed while the deploy waited\n"})
    reads = 0

    def push_after_first_read(pr: PullRequestState) -> None:
        nonlocal reads
        reads += 1
        if reads == 2:  # the command read `sha`; by the re-read under the lock, someone pushed
            pr.head_sha = moved

    standin.state.on_pull_read = push_after_first_read

    async def scenario(h: Harness) -> None:
        await h.deliver(payload("/deploy production"))
        await h.settle()
        assert f"head moved from `{sha[:12]}` to `{moved[:12]}`" in h.comments()[-1]
        assert h.statuses(sha)[-1] == ("failure", "kakehashi/deploy/production")

    assert run_bot(standin, repo, tmp_path, scenario).applied == []
    assert standin.state.merges == []


def test_merge_is_guarded_by_the_applied_sha(standin: StandIn, repo: GitOpsRepo, tmp_path: Path, payload: Any) -> None:
    """A push landing after the apply but before the merge: GitHub's 409 (merge with sha=)."""
    sha = open_service_pr(repo, standin.state, 7)
    moved = repo.push_to_pr(7, {"production/digits/extra.txt": "pushed during the rollout\n"})
    cluster = RecordingCluster()
    original = cluster.apply

    async def apply_then_push(change: Any, origin: Any) -> ApplyResult:
        result = await original(change, origin)
        standin.state.pulls[7].head_sha = moved
        return result

    cluster.apply = apply_then_push  # type: ignore[method-assign]

    async def scenario(h: Harness) -> None:
        await h.deliver(payload("/deploy production"))
        await h.settle()
        assert "GitHub refused the merge (409" in h.comments()[-1]
        assert h.statuses(sha)[-1] == ("failure", "kakehashi/deploy/production")

    run_bot(standin, repo, tmp_path, scenario, cluster)
    assert standin.state.merges == []


def test_two_concurrent_deploys_take_turns_and_the_second_is_told_who_holds_the_lock(
    standin: StandIn, repo: GitOpsRepo, tmp_path: Path, payload: Any
) -> None:
    first = open_service_pr(repo, standin.state, 7, digest="3")
    # Another file of the same service: the same lock, and no merge conflict with #7.
    second = open_service_pr(repo, standin.state, 8, file="hpa.yaml")
    cluster = RecordingCluster(gate=asyncio.Event())

    async def scenario(h: Harness) -> None:
        assert cluster.gate is not None
        await h.deliver(payload("/deploy production", number=7))
        await asyncio.wait_for(cluster.entered.wait(), 10)  # #7 holds production/digits
        await h.deliver(payload("/deploy production", number=8, commenter=REVIEWER))
        for _ in range(500):
            if h.comments(8):
                break
            await asyncio.sleep(0.01)
        assert "is waiting: locked by @Codertocat's `/deploy production` on #7" in h.comments(8)[0]
        assert cluster.applied == []
        cluster.gate.set()
        await h.settle()

    run_bot(standin, repo, tmp_path, scenario, cluster)
    assert cluster.max_active == 1
    assert [(service, sha) for _, service, sha, _ in cluster.applied] == [("digits", first), ("digits", second)]
    assert standin.state.merges == [(7, first), (8, second)]


def test_deploys_of_different_services_do_not_wait_for_each_other(
    standin: StandIn, repo: GitOpsRepo, tmp_path: Path, payload: Any
) -> None:
    open_service_pr(repo, standin.state, 7, service="digits")
    open_service_pr(repo, standin.state, 8, service="other")
    cluster = RecordingCluster(gate=asyncio.Event())

    async def scenario(h: Harness) -> None:
        assert cluster.gate is not None
        await h.deliver(payload("/deploy production", number=7))
        await h.deliver(payload("/deploy production", number=8))
        for _ in range(500):
            if cluster.active == 2:
                break
            await asyncio.sleep(0.01)
        cluster.gate.set()
        await h.settle()
        assert not any("waiting" in c for c in h.comments(7) + h.comments(8))

    assert run_bot(standin, repo, tmp_path, scenario, cluster).max_active == 2


def test_unlock_cancels_the_deploy_holding_the_environment(
    standin: StandIn, repo: GitOpsRepo, tmp_path: Path, payload: Any
) -> None:
    sha = open_service_pr(repo, standin.state, 7)
    cluster = RecordingCluster(gate=asyncio.Event())  # never set: the rollout "hangs"

    async def scenario(h: Harness) -> None:
        await h.deliver(payload("/deploy production", number=7))
        await asyncio.wait_for(cluster.entered.wait(), 10)
        await h.deliver(payload("/unlock production", number=7, commenter=REVIEWER))
        await h.settle()
        assert any("unlocked `production`" in c and "@Codertocat's `/deploy production` on #7" in c for c in h.comments())
        assert any("was cancelled" in c for c in h.comments())
        assert h.statuses(sha)[-1] == ("error", "kakehashi/deploy/production")

    run_bot(standin, repo, tmp_path, scenario, cluster)
    assert standin.state.merges == []


def test_a_fork_pr_is_refused(standin: StandIn, repo: GitOpsRepo, tmp_path: Path, payload: Any) -> None:
    open_service_pr(repo, standin.state, 7)
    standin.state.pulls[7].head_repository = "mallory/Hello-World"

    async def scenario(h: Harness) -> None:
        await h.deliver(payload("/deploy production"))
        await h.settle()
        assert "comes from a fork (mallory/Hello-World)" in h.comments()[-1]
        assert h.github.statuses == []

    assert run_bot(standin, repo, tmp_path, scenario).applied == []


@pytest.mark.parametrize(("role", "expected"), [("read", "has `read`"), ("triage", "has `triage`"), (None, "has `none`")])
def test_commenter_without_write_permission_is_refused(
    standin: StandIn, repo: GitOpsRepo, tmp_path: Path, payload: Any, role: str | None, expected: str
) -> None:
    open_service_pr(repo, standin.state, 7)
    if role is None:
        standin.state.roles.pop("Codertocat")
    else:
        standin.state.roles["Codertocat"] = role

    async def scenario(h: Harness) -> None:
        await h.deliver(payload("/deploy production"))
        await h.settle()
        assert f"@Codertocat needs write permission on Codertocat/Hello-World ({expected})" in h.comments()[-1]
        assert h.github.statuses == []

    assert run_bot(standin, repo, tmp_path, scenario).applied == []


def test_environment_allowlist_users_and_teams(standin: StandIn, repo: GitOpsRepo, tmp_path: Path, payload: Any) -> None:
    """staging allows user someone-else and team Codertocat/sre; write permission alone is not enough."""
    sha = open_service_pr(repo, standin.state, 7, env="staging")

    async def scenario(h: Harness) -> None:
        await h.deliver(payload("/deploy staging"))
        await h.settle()
        assert "@Codertocat is not on `staging`'s allowlist" in h.comments()[-1]
        h.github.teams[("Codertocat", "sre")] = {"Codertocat"}
        await h.deliver(payload("/deploy staging"))
        await h.settle()
        assert h.statuses(sha)[-1] == ("success", "kakehashi/deploy/staging")

    assert [service for _, service, _, _ in run_bot(standin, repo, tmp_path, scenario).applied] == ["digits"]


def test_unknown_environment_lists_the_configured_ones(
    standin: StandIn, repo: GitOpsRepo, tmp_path: Path, payload: Any
) -> None:
    open_service_pr(repo, standin.state, 7)

    async def scenario(h: Harness) -> None:
        await h.deliver(payload("/deploy prod"))
        await h.settle()
        assert "no environment `prod`" in h.comments()[-1] and "`production`, `staging`" in h.comments()[-1]

    run_bot(standin, repo, tmp_path, scenario)


def test_the_allowlist_is_read_from_the_base_branch_not_from_the_pr(
    standin: StandIn, repo: GitOpsRepo, tmp_path: Path, payload: Any
) -> None:
    sha = repo.open_pr(7, {
        ".kakehashi/bot.yaml": "environments:\n  staging: {path: staging, approvals: 0}\n",
        "staging/digits/deployment.yaml": "kind: Deployment\n",
    })
    standin.state.pulls[7] = PullRequestState(number=7, author=AUTHOR, head_sha=sha, head_ref="pr-7")

    async def scenario(h: Harness) -> None:
        await h.deliver(payload("/deploy staging"))
        await h.settle()
        assert "not on `staging`'s allowlist" in h.comments()[-1]

    assert run_bot(standin, repo, tmp_path, scenario).applied == []


def test_secrets_reach_no_comment_and_no_log(
    standin: StandIn, repo: GitOpsRepo, tmp_path: Path, payload: Any, caplog: pytest.LogCaptureFixture
) -> None:
    open_service_pr(repo, standin.state, 7)
    caplog.set_level("DEBUG")

    async def scenario(h: Harness) -> None:
        await h.deliver(payload("/deploy production\n/help\n/deplyo x"))
        await h.deliver(payload("/deploy production"), headers={"X-Hub-Signature-256": "sha256=" + "0" * 64})
        await h.settle()

    run_bot(standin, repo, tmp_path, scenario)
    text = "\n".join(body for _, body in standin.state.comments) + caplog.text
    assert standin.state.comments and SECRET not in text and TOKEN not in text


def test_a_pr_deleting_a_service_hands_the_cluster_no_directory(
    standin: StandIn, repo: GitOpsRepo, tmp_path: Path, payload: Any
) -> None:
    sha = open_pr(repo, standin.state, 7, {"production/other/deployment.yaml": None,
                                           "production/other/kustomization.yaml": None})

    async def scenario(h: Harness) -> None:
        await h.deliver(payload("/deploy production"))
        await h.settle()
        assert h.statuses(sha)[-1] == ("success", "kakehashi/deploy/production")

    assert run_bot(standin, repo, tmp_path, scenario).applied == [("production", "other", sha, "(deleted)")]


def test_sequential_prs_of_the_same_file_both_deploy_and_merge(
    standin: StandIn, repo: GitOpsRepo, tmp_path: Path, payload: Any
) -> None:
    async def scenario(h: Harness) -> None:
        for number, digest in ((7, "3"), (8, "4")):
            # Each PR branches from main as merged so far, as a reviewer's next PR would.
            sha = open_service_pr(repo, standin.state, number, digest=digest)
            await h.deliver(payload("/deploy production", number=number))
            await h.settle()
            assert h.statuses(sha)[-1] == ("success", "kakehashi/deploy/production"), h.comments(number)

    run_bot(standin, repo, tmp_path, scenario)
    assert [number for number, _ in standin.state.merges] == [7, 8]
    assert "4" * 64 in git(repo.work, "--git-dir", str(repo.origin), "show", "main:production/digits/deployment.yaml")


def test_the_same_deploy_commented_twice_applies_once(
    standin: StandIn, repo: GitOpsRepo, tmp_path: Path, payload: Any
) -> None:
    """Two comments (two deliveries, not a redelivery): the second waits, then finds the PR merged."""
    sha = open_service_pr(repo, standin.state, 7)
    cluster = RecordingCluster(gate=asyncio.Event())

    async def scenario(h: Harness) -> None:
        assert cluster.gate is not None
        await h.deliver(payload("/deploy production"))
        await asyncio.wait_for(cluster.entered.wait(), 10)
        await h.deliver(payload("/deploy production", commenter=REVIEWER))
        for _ in range(500):
            if any("is waiting" in c for c in h.comments()):
                break
            await asyncio.sleep(0.01)
        cluster.gate.set()
        await h.settle()
        assert "closed or merged while the command waited" in h.comments()[-1]
        # The merged commit keeps the first deploy's verdict.
        assert h.statuses(sha)[-1] == ("success", "kakehashi/deploy/production")

    assert len(run_bot(standin, repo, tmp_path, scenario, cluster).applied) == 1
    assert standin.state.merges == [(7, sha)]


def test_the_deploy_status_can_be_a_required_check(
    standin: StandIn, repo: GitOpsRepo, tmp_path: Path, payload: Any
) -> None:
    """Branch protection requiring kakehashi/deploy/production: nobody merges what was not
    deployed, and the bot's own merge passes because the rollout's verdict is set first."""
    standin.state.required_contexts = {"kakehashi/deploy/production"}
    sha = open_service_pr(repo, standin.state, 7)

    async def scenario(h: Harness) -> None:
        await h.deliver(payload("/deploy production"))
        await h.settle()
        assert h.statuses(sha) == [("pending", "kakehashi/deploy/production"), ("success", "kakehashi/deploy/production")]

    run_bot(standin, repo, tmp_path, scenario)
    assert standin.state.merges == [(7, sha)]
