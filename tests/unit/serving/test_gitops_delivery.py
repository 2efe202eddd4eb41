"""delivery.mode gitops end to end on this machine: the ModelService loop (with an in-memory
learning cluster) proposes the deploy as a pull request against the GitHub stand-in over real
HTTP on 127.0.0.1 (every request and answer checked against GitHub's OpenAPI description),
with a real bare git repository as the GitOps repository's origin."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from github_standin import harness
from github_standin.harness import GitOpsRepo, git, payload, running_bot
from github_standin.server import GitHubState, ReviewState, StandIn
from serving_fakes import FakeKube

from kakehashi.control.client import Secret
from kakehashi.control.controller import Key
from kakehashi.control.errors import TemporaryError
from kakehashi.gitops.cluster import ApplyResult, Origin, ServiceChange, TrainResult
from kakehashi.serving import bakejob
from kakehashi.serving.reconciler import FINALIZER, ServiceReconciler
from kakehashi.settings import OperatorSettings

OWNER, REPO = "acme", "deploys"
TOKEN = "ghs_gitopsdeliverytoken0123456789"
NS, NAME = "team", "digits"
KEY: Key = (NS, NAME)
DIGEST = "sha256:" + "1" * 64
DIGEST2 = "sha256:" + "2" * 64
IMAGE = "registry.local/models@sha256:" + "a" * 64
IMAGE2 = "registry.local/models@sha256:" + "b" * 64
BRANCH = f"kakehashi/{NS}/{NAME}"


def run_body(name: str, digest: str, accuracy: float) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": NS},
        "status": {"phase": "Succeeded",
                   "model": {"uri": f"s3://models/{name}/", "digest": digest, "metrics": {"accuracy": accuracy},
                             "lineage": {"git": {"url": "https://github.com/acme/models.git", "commit": "c0ffee42"}}},
                   "conditions": [{"type": "Promotable", "status": "True", "reason": "GateMet",
                                   "message": f"accuracy={accuracy} >= 0.9"}]},
    }


@pytest.fixture
def origin(tmp_path: Path) -> GitOpsRepo:
    # What already runs: another service, and the bot's config; nothing of `digits` yet.
    return GitOpsRepo.create(tmp_path / "git", {"production/other/kustomization.yaml": "resources: []\n",
                                                "README.md": "deploys\n"})


@pytest.fixture
def standin(origin: GitOpsRepo) -> Iterator[StandIn]:
    server = StandIn(GitHubState(owner=OWNER, repo=REPO, token=TOKEN, git_dir=origin.origin)).start()
    yield server
    server.stop()
    assert server.state.violations == []  # every call was one GitHub would accept


class World:
    def __init__(self, standin: StandIn, origin: GitOpsRepo, tmp_path: Path, token: str = TOKEN,
                 repository: str = f"{OWNER}/{REPO}") -> None:
        self.standin = standin
        self.origin = origin
        self.kube = FakeKube({"kakehashi-gitops": Secret(data={"token": token})})
        self.events: list[tuple[str, str, str]] = []
        settings = OperatorSettings(  # type: ignore[call-arg]
            gitops_api_url=standin.url, gitops_clone_url=str(origin.origin), gitops_checkout=tmp_path / "checkout",
        )
        self.rec = ServiceReconciler(
            self.kube, settings,
            events=lambda body, type_, reason, message: self.events.append((type_, reason, message)),
            threads=2,
        )
        self.services: dict[Key, list[dict[str, Any]]] = {KEY: [{
            "apiVersion": "kakehashi.dev/v1alpha1", "kind": "ModelService",
            "metadata": {"name": NAME, "namespace": NS, "uid": "ms-uid", "generation": 1, "finalizers": [FINALIZER]},
            "spec": {"model": {"trainingRun": "digits-1"}, "registry": "registry.local/models", "replicas": 2,
                     "delivery": {"mode": "gitops", "gitops": {"repository": repository, "path": "production",
                                                               "namespace": "prod"}}},
        }]}
        self.runs: dict[Key, list[dict[str, Any]]] = {(NS, "digits-1"): [run_body("digits-1", DIGEST, 0.93)],
                                                      (NS, "digits-2"): [run_body("digits-2", DIGEST2, 0.97)]}
        self.jobs: dict[Key, list[dict[str, Any]]] = {}
        self.pods: dict[Key, list[dict[str, Any]]] = {}
        self.rec.bind(services=self.services, runs=self.runs, bakejobs=self.jobs, bakepods=self.pods)

    def reconcile(self) -> dict[str, Any]:
        async def once() -> None:
            await self.rec.reconcile(KEY)
            self.rec.queue.forget(KEY)

        asyncio.run(once())
        status = self.kube.statuses[-1]
        self.services[KEY] = [{**self.services[KEY][0], "status": status}]
        return status

    def bake(self, image: str, digest: str) -> dict[str, Any]:
        """Reconcile until the bake Job exists, let it report `image`, and reconcile again."""
        self.reconcile()
        job = self.kube.created[-1]
        self.jobs[KEY] = [job]
        self.pods[KEY] = [{
            "metadata": {"name": "bake-pod", "ownerReferences": [{"uid": job["metadata"]["uid"]}]},
            "status": {"containerStatuses": [{"name": bakejob.CONTAINER, "state": {"terminated": {
                "exitCode": 0, "message": json.dumps({"image": image, "modelDigest": digest})}}}]},
        }]
        return self.reconcile()

    def serve_model(self, run: str) -> None:
        body = self.services[KEY][0]
        self.services[KEY] = [{**body, "metadata": {**body["metadata"], "generation": 2},
                               "spec": {**body["spec"], "model": {"trainingRun": run}}}]

    def branch_file(self, name: str) -> str:
        return git(self.origin.origin, "show", f"refs/heads/{BRANCH}:production/{NAME}/{name}")

    def posts(self, path: str, method: str = "POST") -> int:
        return sum(1 for m, p, _ in self.standin.state.requests if m == method and p == path)


def test_a_baked_model_is_proposed_as_one_pull_request_and_the_service_awaits_deploy(
    standin: StandIn, origin: GitOpsRepo, tmp_path: Path,
) -> None:
    world = World(standin, origin, tmp_path)
    status = world.bake(IMAGE, DIGEST)

    assert status["phase"] == "Proposed" and status["reason"] == "AwaitingDeploy"
    pr = status["pullRequest"]
    assert pr["number"] == 1 and pr["state"] == "open" and pr["url"].endswith(f"/{OWNER}/{REPO}/pull/1")
    assert pr["headSha"] == git(origin.origin, "rev-parse", f"refs/heads/{BRANCH}")
    assert pr["url"] in status["message"] and "/deploy" in status["message"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    deployed = next(c for c in status["conditions"] if c["type"] == "Deployed")
    assert ready["status"] == "False" and deployed["status"] == "False"
    assert status["history"] == []  # nothing was deployed yet

    # The branch holds the kustomize directory, image pinned by digest, on top of main.
    assert world.branch_file("kustomization.yaml").startswith(f"# kakehashi: ModelService {NS}/{NAME};")
    kustomization = yaml.safe_load(world.branch_file("kustomization.yaml"))
    assert kustomization["namespace"] == "prod" and "deployment-digits.yaml" in kustomization["resources"]
    assert f"image: {IMAGE}" in world.branch_file("deployment-digits.yaml")
    assert git(origin.origin, "rev-parse", f"refs/heads/{BRANCH}^") == git(origin.origin, "rev-parse", "refs/heads/main")

    # The PR as a reviewer sees it: metrics, gate, lineage, digests and the diff.
    (github_pr,) = standin.state.pulls.values()
    assert github_pr.head_ref == BRANCH and github_pr.base_ref == "main"
    text = github_pr.body or ""
    assert "| accuracy | 0.93 |" in text and "passed: accuracy=0.93 >= 0.9" in text
    assert "c0ffee42" in text and "s3://models/digits-1/" in text and "https://github.com/acme/models.git" in text
    assert IMAGE in text and DIGEST in text
    assert "+++ b/production/digits/deployment-digits.yaml" in text

    # Looking again changes nothing: no new commit, no second PR, no needless update.
    head = pr["headSha"]
    again = world.reconcile()
    assert again["pullRequest"]["headSha"] == head and len(standin.state.pulls) == 1
    assert world.posts(f"/repos/{OWNER}/{REPO}/pulls") == 1
    assert world.posts(f"/repos/{OWNER}/{REPO}/pulls/1", "PATCH") == 0


def test_a_newer_model_updates_the_same_pull_request_then_its_merge_is_recorded(
    standin: StandIn, origin: GitOpsRepo, tmp_path: Path,
) -> None:
    world = World(standin, origin, tmp_path)
    first = world.bake(IMAGE, DIGEST)["pullRequest"]

    world.serve_model("digits-2")
    status = world.bake(IMAGE2, DIGEST2)
    pr = status["pullRequest"]
    assert pr["number"] == first["number"] and pr["headSha"] != first["headSha"]
    assert len(standin.state.pulls) == 1 and world.posts(f"/repos/{OWNER}/{REPO}/pulls") == 1
    assert f"image: {IMAGE2}" in world.branch_file("deployment-digits.yaml")
    text = standin.state.pulls[1].body or ""
    assert IMAGE2 in text and "| accuracy | 0.97 |" in text and "digits-1" not in text
    assert standin.state.pulls[1].head_sha == pr["headSha"]  # GitHub's PR follows the branch

    # The bot merges after `/deploy` rolled it out: the base branch now holds the directory.
    answer = httpx.put(f"{standin.url}/repos/{OWNER}/{REPO}/pulls/1/merge",
                       headers={"Authorization": f"Bearer {TOKEN}"}, json={"sha": pr["headSha"]})
    assert answer.status_code == 200, answer.text
    delivered = world.reconcile()
    assert delivered["phase"] == "Delivered" and delivered["reason"] == "Merged"
    assert delivered["pullRequest"]["state"] == "merged" and delivered["pullRequest"]["number"] == 1
    assert [(h["image"], h["modelDigest"]) for h in delivered["history"]] == [(IMAGE2, DIGEST2)]
    assert next(c for c in delivered["conditions"] if c["type"] == "Deployed")["status"] == "True"
    assert next(c for c in delivered["conditions"] if c["type"] == "Ready")["status"] == "Unknown"
    assert len(standin.state.pulls) == 1  # nothing new proposed for what already runs


def test_a_pull_request_a_reviewer_closed_is_not_reopened_until_a_newer_model_is_proposed(
    standin: StandIn, origin: GitOpsRepo, tmp_path: Path,
) -> None:
    world = World(standin, origin, tmp_path)
    first = world.bake(IMAGE, DIGEST)["pullRequest"]
    answer = httpx.patch(f"{standin.url}/repos/{OWNER}/{REPO}/pulls/{first['number']}",
                         headers={"Authorization": f"Bearer {TOKEN}"}, json={"state": "closed"})
    assert answer.status_code == 200, answer.text

    declined = world.reconcile()
    assert declined["phase"] == "Failed" and declined["reason"] == "PullRequestClosed"
    assert first["url"] in declined["message"] and declined["pullRequest"]["state"] == "closed"
    world.reconcile()
    assert len(standin.state.pulls) == 1  # declined stays declined: no PR reopened behind the reviewer

    world.serve_model("digits-2")
    status = world.bake(IMAGE2, DIGEST2)
    assert status["phase"] == "Proposed" and status["pullRequest"]["number"] == first["number"] + 1
    assert [pr.state for pr in standin.state.pulls.values()] == ["closed", "open"]


def test_a_directory_another_namespaces_service_of_the_same_name_owns_is_never_overwritten(
    tmp_path: Path,
) -> None:
    theirs = "# kakehashi: ModelService other-team/digits; its next proposal replaces edits made here\nresources: []\n"
    origin = GitOpsRepo.create(tmp_path / "git", {"production/digits/kustomization.yaml": theirs})
    standin = StandIn(GitHubState(owner=OWNER, repo=REPO, token=TOKEN, git_dir=origin.origin)).start()
    try:
        world = World(standin, origin, tmp_path)
        status = world.bake(IMAGE, DIGEST)
        assert status["phase"] == "Degraded" and status["reason"] == "DirectoryTaken"
        assert "other-team/digits" in status["message"] and standin.state.pulls == {}
        assert standin.state.violations == []
    finally:
        standin.stop()


def test_deleting_the_service_closes_its_open_pull_request_then_lets_go(
    standin: StandIn, origin: GitOpsRepo, tmp_path: Path,
) -> None:
    world = World(standin, origin, tmp_path)
    number = world.bake(IMAGE, DIGEST)["pullRequest"]["number"]
    body = world.services[KEY][0]
    world.services[KEY] = [{**body, "metadata": {**body["metadata"], "deletionTimestamp": "2026-11-27T00:00:00Z"}}]
    asyncio.run(world.rec.reconcile(KEY))
    assert standin.state.pulls[number].state == "closed"  # nobody can /deploy a deleted service
    assert world.kube.patches[-1] == {"metadata": {"finalizers": []}}


def test_the_token_never_reaches_a_log_an_event_or_the_status(
    standin: StandIn, origin: GitOpsRepo, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    world = World(standin, origin, tmp_path)
    world.bake(IMAGE, DIGEST)
    world.serve_model("digits-2")
    world.bake(IMAGE2, DIGEST2)
    said = json.dumps(world.kube.statuses) + json.dumps(world.events) + caplog.text
    assert world.kube.statuses and TOKEN not in said
    assert TOKEN not in git(origin.origin, "log", "--all", "--format=%an %ae %s %b")


def test_github_refusing_the_token_is_reported_without_it(
    standin: StandIn, origin: GitOpsRepo, tmp_path: Path,
) -> None:
    wrong = "ghs_revokedtoken9876543210"
    world = World(standin, origin, tmp_path, token=wrong)
    status = world.bake(IMAGE, DIGEST)
    assert status["phase"] == "Degraded" and status["reason"] == "PullRequestRefused"
    assert "401" in status["message"] and "Bad credentials" in status["message"]
    assert wrong not in json.dumps(world.kube.statuses) + json.dumps(world.events)
    assert status["pullRequest"] is None


def test_github_unreachable_is_retried_and_never_recorded(
    standin: StandIn, origin: GitOpsRepo, tmp_path: Path,
) -> None:
    world = World(standin, origin, tmp_path)
    world.reconcile()  # the bake Job
    written = len(world.kube.statuses)
    standin.stop()
    world.rec.gitops.publisher.timeout_s = 3
    job = world.kube.created[-1]
    world.jobs[KEY] = [job]
    world.pods[KEY] = [{
        "metadata": {"name": "bake-pod", "ownerReferences": [{"uid": job["metadata"]["uid"]}]},
        "status": {"containerStatuses": [{"name": bakejob.CONTAINER, "state": {"terminated": {
            "exitCode": 0, "message": json.dumps({"image": IMAGE, "modelDigest": DIGEST})}}}]},
    }]
    with pytest.raises(TemporaryError) as raised:
        asyncio.run(world.rec.reconcile(KEY))
    assert TOKEN not in str(raised.value)
    assert len(world.kube.statuses) == written  # a passing outage is no fact about the service


def test_no_token_secret_says_which_secret_is_missing(standin: StandIn, origin: GitOpsRepo, tmp_path: Path) -> None:
    world = World(standin, origin, tmp_path)
    world.kube.secrets.clear()
    status = world.bake(IMAGE, DIGEST)
    assert status["phase"] == "Degraded" and status["reason"] == "GitOpsTokenMissing"
    assert "kakehashi-gitops" in status["message"]
    assert subprocess.run(["git", "--git-dir", str(origin.origin), "rev-parse", "--verify", "-q", f"refs/heads/{BRANCH}"],
                          capture_output=True).returncode != 0


class DirectoryCluster:
    """The bot's cluster side, recording the directory `/deploy` would kustomize-build."""

    def __init__(self) -> None:
        self.applied: list[tuple[str, str, dict[str, str]]] = []

    async def apply(self, change: ServiceChange, origin: Origin) -> ApplyResult:
        assert change.directory is not None
        files = {path.name: path.read_text() for path in sorted(change.directory.iterdir())}
        self.applied.append((change.service, origin.sha, files))
        return ApplyResult(True, "ready: 2/2 replicas serve the new digest")

    async def diff(self, change: ServiceChange) -> str:
        return ""

    async def rollback(self, environment: str, service: str, target: str | None, origin: Origin) -> ApplyResult:
        raise AssertionError("not used")

    async def train(self, directory: Path, origin: Origin) -> TrainResult:
        raise AssertionError("not used")


def test_the_bot_deploys_the_proposed_pull_request_and_the_service_then_reads_delivered(tmp_path: Path) -> None:
    """The two halves of issue 12 meet: the PR the operator opens is one the bot's `/deploy`
    applies (the service directory under the environment's path) and merges."""
    config = "environments:\n  production:\n    path: production\n    approvals: 1\n"
    origin = GitOpsRepo.create(tmp_path / "git", {".kakehashi/bot.yaml": config})
    standin = harness.start_standin(origin)
    try:
        world = World(standin, origin, tmp_path, token=harness.TOKEN, repository=f"{harness.OWNER}/{harness.REPO}")
        pr = world.bake(IMAGE, DIGEST)["pullRequest"]
        standin.state.reviews[pr["number"]] = [ReviewState(harness.REVIEWER, "APPROVED", pr["headSha"])]
        cluster = DirectoryCluster()

        async def deploy() -> None:
            async with running_bot(standin, origin, tmp_path / "bot", cluster) as bot:  # type: ignore[arg-type]
                answer = await bot.deliver(payload("/deploy production", number=pr["number"]))
                assert answer.status_code == 202
                await bot.settle()

        asyncio.run(deploy())
        assert standin.state.merges == [(pr["number"], pr["headSha"])], standin.state.comments
        ((service, sha, files),) = cluster.applied
        assert service == NAME and sha == pr["headSha"]
        assert "kustomization.yaml" in files and f"image: {IMAGE}" in files["deployment-digits.yaml"]

        delivered = world.reconcile()
        assert delivered["phase"] == "Delivered"
        assert delivered["pullRequest"]["number"] == pr["number"] and delivered["pullRequest"]["state"] == "merged"
        assert [h["image"] for h in delivered["history"]] == [IMAGE]
        assert standin.state.violations == []
    finally:
        standin.stop()
