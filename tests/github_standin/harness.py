"""The bot's test harness, shared by the unit tests (a recorded cluster side) and the cluster
tests (the real one): GitHub's published webhook example, a real GitOps repository made with
the git CLI, and the bot wired to the GitHub stand-in, its webhook driven over ASGI."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import subprocess
import tarfile
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import httpx

from github_standin.server import GitHubState, PullRequestState, ReviewState, StandIn
from kakehashi.gitops.app import Webhooks, create_app
from kakehashi.gitops.bot import Bot, BotOptions
from kakehashi.gitops.cluster import Cluster
from kakehashi.gitops.github import GitHubApi
from kakehashi.gitops.leases import Leases
from kakehashi.gitops.repository import GitRepository
from kakehashi.gitops.signature import sign

EXAMPLES_PACKAGE = "@octokit/webhooks-examples@7.6.1"
SECRET = "test-webhook-secret-0123456789abcdef"
TOKEN = "ghs_standintoken0123456789"
OWNER, REPO = "Codertocat", "Hello-World"  # the examples' repository
AUTHOR, REVIEWER, COMMENTER = "octo-author", "octo-reviewer", "Codertocat"
ROLES = {COMMENTER: "write", AUTHOR: "write", REVIEWER: "maintain", "reader": "read"}


# ---- GitHub's published webhook example -------------------------------------------------------------


@cache
def issue_comment_example() -> dict[str, Any]:
    """The first `issue_comment` `created` example of @octokit/webhooks-examples, npm-packed
    once per machine into the cache (the registry serves it by name and version)."""
    cache_dir = Path(os.environ.get("KAKEHASHI_CACHE_DIR", Path.home() / ".cache" / "kakehashi")) / "npm"
    cache_dir.mkdir(parents=True, exist_ok=True)
    tarball = cache_dir / "octokit-webhooks-examples-7.6.1.tgz"
    if not tarball.exists():
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["npm", "pack", EXAMPLES_PACKAGE, "--pack-destination", tmp],
                           check=True, capture_output=True, cwd=tmp)
            (packed,) = Path(tmp).glob("*.tgz")
            packed.replace(tarball)
    with tarfile.open(tarball) as archive:
        member = archive.extractfile("package/api.github.com/index.json")
        assert member is not None
        events = json.load(member)
    (issue_comment,) = [event for event in events if event["name"] == "issue_comment"]
    created = [example for example in issue_comment["examples"] if example["action"] == "created"]
    return dict(created[0])


def payload(body: str, *, number: int = 7, commenter: str = COMMENTER, action: str = "created",
            user_type: str = "User", pull_request: bool = True) -> dict[str, Any]:
    """An issue_comment payload on PR `number`. GitHub's examples lack `issue.pull_request`;
    GitHub sends it on pull request comments, so it is added here."""
    event = copy.deepcopy(issue_comment_example())
    event["action"] = action
    event["issue"]["number"] = number
    if pull_request:
        base = f"https://api.github.com/repos/{OWNER}/{REPO}/pulls/{number}"
        event["issue"]["pull_request"] = {
            "url": base, "html_url": f"https://github.com/{OWNER}/{REPO}/pull/{number}",
            "diff_url": f"https://github.com/{OWNER}/{REPO}/pull/{number}.diff",
            "patch_url": f"https://github.com/{OWNER}/{REPO}/pull/{number}.patch", "merged_at": None,
        }
    event["comment"]["body"] = body
    for user in (event["comment"]["user"], event["sender"]):
        user["login"], user["type"] = commenter, user_type
    return event


# ---- the GitOps repository: real git ----------------------------------------------------------------


def git(directory: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")
    done = subprocess.run(["git", "-C", str(directory), *args], check=True, capture_output=True, text=True, env=env)
    return done.stdout.strip()


@dataclass
class GitOpsRepo:
    work: Path  # a working clone the test commits in
    origin: Path  # the bare repository the bot fetches from (GitHub's side)
    shas: dict[int, str] = field(default_factory=dict)

    @classmethod
    def create(cls, root: Path, files: dict[str, str]) -> GitOpsRepo:
        origin = root / "origin.git"
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], check=True)
        work = root / "work"
        subprocess.run(["git", "clone", "-q", str(origin), str(work)], check=True, capture_output=True)
        repo = cls(work, origin)
        git(work, "checkout", "-q", "-b", "main")
        repo.commit("main", files, "initial")
        return repo

    def commit(self, branch: str, files: dict[str, str | None], message: str, *, start: str = "main") -> str:
        """Commit `files` (None deletes one) on `branch` and push it to origin."""
        if git(self.work, "symbolic-ref", "--short", "HEAD") != branch:
            if start == "main":
                # Branch from main as it is on origin now: earlier PRs may have been merged there.
                git(self.work, "fetch", "-q", "origin", "+refs/heads/main:refs/remotes/origin/main")
                start = "origin/main"
            git(self.work, "checkout", "-q", "-B", branch, start)
        for name, text in files.items():
            path = self.work / name
            if text is None:
                git(self.work, "rm", "-q", "-r", name)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "-m", message)
        sha = git(self.work, "rev-parse", "HEAD")
        git(self.work, "push", "-q", "--force", "origin", f"{branch}:refs/heads/{branch}")
        return sha

    def open_pr(self, number: int, files: dict[str, str | None]) -> str:
        """A PR branch from main with one commit; refs/pull/N/head set as GitHub sets it."""
        sha = self.commit(f"pr-{number}", files, f"PR {number}")
        git(self.work, "push", "-q", "--force", "origin", f"{sha}:refs/pull/{number}/head")
        self.shas[number] = sha
        return sha

    def push_to_pr(self, number: int, files: dict[str, str | None]) -> str:
        sha = self.commit(f"pr-{number}", files, f"PR {number}, more", start=f"pr-{number}")
        git(self.work, "push", "-q", "--force", "origin", f"{sha}:refs/pull/{number}/head")
        self.shas[number] = sha
        return sha


def open_pr(repo: GitOpsRepo, github: GitHubState, number: int, files: dict[str, str | None], *,
            approved: bool = True) -> str:
    """A PR in git and on the stand-in, approved on its head by a reviewer who is not its author."""
    sha = repo.open_pr(number, files)
    github.pulls[number] = PullRequestState(number=number, author=AUTHOR, head_sha=sha, head_ref=f"pr-{number}")
    if approved:
        github.reviews.setdefault(number, []).append(ReviewState(REVIEWER, "APPROVED", sha))
    return sha


# ---- the bot, wired to all of the above -------------------------------------------------------------


def start_standin(repo: GitOpsRepo) -> StandIn:
    return StandIn(GitHubState(owner=OWNER, repo=REPO, token=TOKEN, git_dir=repo.origin, roles=dict(ROLES))).start()


@dataclass
class Harness:
    github: GitHubState
    repo: GitOpsRepo
    webhooks: Webhooks
    client: httpx.AsyncClient

    async def deliver(self, body: dict[str, Any] | bytes, *, event: str = "issue_comment", guid: str | None = None,
                      headers: dict[str, str] | None = None, signed: bool = True) -> httpx.Response:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        sent = {"X-GitHub-Event": event, "X-GitHub-Delivery": guid or str(uuid.uuid4()),
                "Content-Type": "application/json", "User-Agent": "GitHub-Hookshot/standin"}
        if signed:
            sent["X-Hub-Signature-256"] = sign(SECRET.encode(), raw)
        sent |= headers or {}
        return await self.client.post("/webhook", content=raw, headers=sent)

    async def settle(self, timeout_s: float = 30) -> None:
        await asyncio.wait_for(self.webhooks.drain(), timeout_s)

    def comments(self, number: int = 7) -> list[str]:
        return [body for n, body in self.github.comments if n == number]

    def statuses(self, sha: str) -> list[tuple[str, str]]:
        return [(state, context) for s, state, context, _ in self.github.statuses if s == sha]


@asynccontextmanager
async def running_bot(standin: StandIn, repo: GitOpsRepo, checkout: Path, cluster: Cluster,
                      journal: Path | None = None, leases: Leases | None = None,
                      **options: Any) -> AsyncIterator[Harness]:
    api = GitHubApi(TOKEN, base_url=standin.url)
    repository = GitRepository(str(repo.origin), checkout)
    bot = Bot(api, repository, cluster, BotOptions(mergeable_delay_s=0.01, **options), leases=leases)
    webhooks = Webhooks(bot, SECRET.encode(), journal=journal)
    transport = httpx.ASGITransport(app=create_app(webhooks))
    async with httpx.AsyncClient(transport=transport, base_url="http://bot") as client:
        yield Harness(standin.state, repo, webhooks, client)
        await webhooks.drain(30)
