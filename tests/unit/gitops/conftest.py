"""Fixtures for the bot's tests: GitHub's published webhook examples, the GitHub stand-in over
real HTTP, a real GitOps repository made with the git CLI, and a recording cluster side."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import subprocess
import tarfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from github_standin.server import GitHubState, PullRequestState, ReviewState, StandIn

from kakehashi.gitops.app import Webhooks, create_app
from kakehashi.gitops.bot import Bot, BotOptions
from kakehashi.gitops.cluster import ApplyResult, Origin, ServiceChange, TrainResult
from kakehashi.gitops.github import GitHubApi
from kakehashi.gitops.repository import GitRepository
from kakehashi.gitops.signature import sign

EXAMPLES_PACKAGE = "@octokit/webhooks-examples@7.6.1"
SECRET = "test-webhook-secret-0123456789abcdef"
TOKEN = "ghs_standintoken0123456789"
OWNER, REPO = "Codertocat", "Hello-World"  # the examples' repository
AUTHOR, REVIEWER, COMMENTER = "octo-author", "octo-reviewer", "Codertocat"

CONFIG = """\
environments:
  production:
    path: production
    approvals: 1
  staging:
    path: staging
    approvals: 0
    allow:
      users: [someone-else]
      teams: [Codertocat/sre]
rollback_environment: production
training_path: training
"""


# ---- GitHub's published webhook examples ---------------------------------------------------------


@pytest.fixture(scope="session")
def issue_comment_example(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The first `issue_comment` `created` example of @octokit/webhooks-examples, npm-packed."""
    cache = Path(os.environ.get("KAKEHASHI_CACHE_DIR", Path.home() / ".cache" / "kakehashi")) / "npm"
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / "octokit-webhooks-examples-7.6.1.tgz"
    if not tarball.exists():  # one download per machine; the registry serves it by name and version
        tmp = tmp_path_factory.mktemp("npm")
        subprocess.run(["npm", "pack", EXAMPLES_PACKAGE, "--pack-destination", str(tmp)],
                       check=True, capture_output=True, cwd=tmp)
        (packed,) = tmp.glob("*.tgz")
        packed.replace(tarball)
    with tarfile.open(tarball) as archive:
        member = archive.extractfile("package/api.github.com/index.json")
        assert member is not None
        events = json.load(member)
    (issue_comment,) = [event for event in events if event["name"] == "issue_comment"]
    created = [example for example in issue_comment["examples"] if example["action"] == "created"]
    return dict(created[0])


@pytest.fixture
def payload(issue_comment_example: dict[str, Any]) -> Any:
    """payload(body, ...) -> an issue_comment payload on PR `number` (the examples lack
    `issue.pull_request`: GitHub sends it on pull request comments, so it is added here)."""

    def make(body: str, *, number: int = 7, commenter: str = COMMENTER, action: str = "created",
             user_type: str = "User", pull_request: bool = True) -> dict[str, Any]:
        event = copy.deepcopy(issue_comment_example)
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

    return make


# ---- the GitOps repository: real git ----------------------------------------------------------------


def git(directory: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")
    done = subprocess.run(["git", "-C", str(directory), *args], check=True, capture_output=True, text=True, env=env)
    return done.stdout.strip()


def kustomization(image: str) -> dict[str, str]:
    return {
        "kustomization.yaml": "resources: [deployment.yaml]\n",
        "deployment.yaml": f"apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: digits}}\n"
                           f"spec: {{template: {{spec: {{containers: [{{name: serve, image: '{image}'}}]}}}}}}\n",
    }


@dataclass
class GitOpsRepo:
    work: Path  # a working clone the test commits in
    origin: Path  # the bare repository the bot fetches from (GitHub's side)
    shas: dict[int, str] = field(default_factory=dict)

    def commit(self, branch: str, files: dict[str, str], message: str, *, start: str = "main") -> str:
        if git(self.work, "symbolic-ref", "--short", "HEAD") != branch:
            git(self.work, "checkout", "-q", "-B", branch, start)
        for name, text in files.items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "-m", message)
        sha = git(self.work, "rev-parse", "HEAD")
        git(self.work, "push", "-q", "--force", "origin", f"{branch}:refs/heads/{branch}")
        return sha

    def open_pr(self, number: int, files: dict[str, str]) -> str:
        """A PR branch with one commit; refs/pull/N/head set as GitHub sets it."""
        sha = self.commit(f"pr-{number}", files, f"PR {number}")
        git(self.work, "push", "-q", "--force", "origin", f"{sha}:refs/pull/{number}/head")
        self.shas[number] = sha
        return sha

    def push_to_pr(self, number: int, files: dict[str, str]) -> str:
        sha = self.commit(f"pr-{number}", files, f"PR {number}, more", start=f"pr-{number}")
        git(self.work, "push", "-q", "--force", "origin", f"{sha}:refs/pull/{number}/head")
        self.shas[number] = sha
        return sha


@pytest.fixture
def repo(tmp_path: Path) -> GitOpsRepo:
    origin = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], check=True)
    work = tmp_path / "work"
    subprocess.run(["git", "clone", "-q", str(origin), str(work)], check=True, capture_output=True)
    gitops = GitOpsRepo(work, origin)
    files = {".kakehashi/bot.yaml": CONFIG, "training/run.yaml": "kind: TrainingRun\n"}
    files |= {f"production/digits/{k}": v for k, v in kustomization("registry/digits@sha256:" + "1" * 64).items()}
    files |= {f"production/other/{k}": v for k, v in kustomization("registry/other@sha256:" + "2" * 64).items()}
    files |= {f"staging/digits/{k}": v for k, v in kustomization("registry/digits@sha256:" + "1" * 64).items()}
    git(work, "checkout", "-q", "-b", "main")
    gitops.commit("main", files, "initial")
    return gitops


# ---- the cluster side: recorded ---------------------------------------------------------------------


@dataclass
class RecordingCluster:
    """Records what the bot asks of the cluster; a test can hold an apply or make it fail."""

    applied: list[tuple[str, str, str, str]] = field(default_factory=list)  # env, service, sha, image line
    result: ApplyResult = field(default_factory=lambda: ApplyResult(True, "ready: 2/2 replicas serve the new digest"))
    gate: asyncio.Event | None = None  # set: applies wait for it
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    rollbacks: list[tuple[str, str, str | None, str]] = field(default_factory=list)
    trained: list[str] = field(default_factory=list)
    active: int = 0
    max_active: int = 0

    async def apply(self, change: ServiceChange, origin: Origin) -> ApplyResult:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            self.entered.set()
            if self.gate is not None:
                await self.gate.wait()
            assert change.directory is not None
            image = [line for line in (change.directory / "deployment.yaml").read_text().splitlines() if "image" in line]
            self.applied.append((change.environment, change.service, origin.sha, image[0].strip()))
            return self.result
        finally:
            self.active -= 1

    async def diff(self, change: ServiceChange) -> str:
        assert change.directory is not None
        image = (change.directory / "deployment.yaml").read_text().split("image: ")[1].split("'")[1]
        return f"--- live/Deployment/digits\n+++ pr/Deployment/digits\n-  image: old\n+  image: {image}\n"

    async def rollback(self, environment: str, service: str, target: str | None, origin: Origin) -> ApplyResult:
        self.rollbacks.append((environment, service, target, origin.actor))
        return ApplyResult(True, "serving sha256:" + "1" * 12 + " again", "2/2 replicas ready")

    async def train(self, directory: Path, origin: Origin) -> TrainResult:
        self.trained.append(sorted(await asyncio.to_thread(os.listdir, directory))[0])
        return TrainResult(True, "TrainingRun pr-7-abc Succeeded", {"accuracy": 0.93, "loss": 0.21}, promotable=True)


# ---- the bot, wired to all of the above -------------------------------------------------------------


@dataclass
class Harness:
    github: GitHubState
    repo: GitOpsRepo
    cluster: RecordingCluster
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

    async def settle(self) -> None:
        await asyncio.wait_for(self.webhooks.drain(), 30)

    def comments(self, number: int = 7) -> list[str]:
        return [body for n, body in self.github.comments if n == number]

    def statuses(self, sha: str) -> list[tuple[str, str]]:
        return [(state, context) for s, state, context, _ in self.github.statuses if s == sha]


@pytest.fixture
def standin(repo: GitOpsRepo) -> Iterator[StandIn]:
    state = GitHubState(owner=OWNER, repo=REPO, token=TOKEN, git_dir=repo.origin,
                        roles={COMMENTER: "write", AUTHOR: "write", REVIEWER: "maintain", "reader": "read"})
    server = StandIn(state).start()
    yield server
    server.stop()
    # Every request the bot made, and every answer, matched GitHub's OpenAPI description.
    assert state.violations == []


def open_pr(harness_repo: GitOpsRepo, github: GitHubState, number: int, *, digest: str = "3",
            approved: bool = True, service: str = "digits", env: str = "production",
            file: str = "deployment.yaml") -> str:
    text = kustomization(f"registry/{service}@sha256:" + digest * 64)["deployment.yaml"]
    if file != "deployment.yaml":
        text = f"# {file} of PR {number}\n"
    sha = harness_repo.open_pr(number, {f"{env}/{service}/{file}": text})
    github.pulls[number] = PullRequestState(number=number, author=AUTHOR, head_sha=sha, head_ref=f"pr-{number}")
    if approved:
        github.reviews.setdefault(number, []).append(ReviewState(REVIEWER, "APPROVED", sha))
    return sha


@asynccontextmanager
async def running_bot(standin: StandIn, repo: GitOpsRepo, tmp_path: Path, cluster: RecordingCluster,
                      **options: Any) -> AsyncIterator[Harness]:
    api = GitHubApi(TOKEN, base_url=standin.url)
    repository = GitRepository(str(repo.origin), tmp_path / "bot-checkout")
    bot = Bot(api, repository, cluster, BotOptions(mergeable_delay_s=0.01, **options))
    webhooks = Webhooks(bot, SECRET.encode())
    app = create_app(webhooks)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bot") as client:
        yield Harness(standin.state, repo, cluster, webhooks, client)
        await webhooks.drain(30)
