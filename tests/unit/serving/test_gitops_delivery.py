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

    def delete(self) -> None:
        """`kubectl delete`: the deletion timestamp set, the finalizer's work reconciled."""
        body = self.services[KEY][0]
        self.services[KEY] = [{**body, "metadata": {**body["metadata"], "deletionTimestamp": "2026-11-27T00:00:00Z"}}]
        asyncio.run(self.rec.reconcile(KEY))

    def merge(self, number: int, sha: str) -> None:
        answer = httpx.put(f"{self.standin.url}/repos/{self.standin.state.owner}/{self.standin.state.repo}/pulls/{number}/merge",
                           headers={"Authorization": f"Bearer {self.standin.state.token}"}, json={"sha": sha})
        assert answer.status_code == 200, answer.text


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


def test_deleting_a_service_nothing_of_which_was_merged_closes_its_pull_request_then_lets_go(
    standin: StandIn, origin: GitOpsRepo, tmp_path: Path,
) -> None:
    world = World(standin, origin, tmp_path)
    number = world.bake(IMAGE, DIGEST)["pullRequest"]["number"]
    world.delete()
    assert standin.state.pulls[number].state == "closed"  # nobody can /deploy a deleted service
    assert len(standin.state.pulls) == 1  # nothing runs, so no removal to propose
    assert world.kube.patches[-1] == {"metadata": {"finalizers": []}}
    assert world.events[-1][:2] == ("Normal", "PullRequestClosed")


def test_deleting_a_delivered_service_proposes_removing_its_directory_then_lets_go(
    standin: StandIn, origin: GitOpsRepo, tmp_path: Path,
) -> None:
    """The repository says what runs: deleting the ModelService does not delete production
    behind the reviewers' backs, and does not leave it running unnoticed either. Its branch
    now removes the directory, through a PR a reviewer `/deploy`s like any other change."""
    world = World(standin, origin, tmp_path)
    pr = world.bake(IMAGE, DIGEST)["pullRequest"]
    world.merge(pr["number"], pr["headSha"])
    assert world.reconcile()["phase"] == "Delivered"
    main = git(origin.origin, "rev-parse", "refs/heads/main")

    world.delete()
    assert world.kube.patches[-1] == {"metadata": {"finalizers": []}}  # the review is not waited for
    removal = standin.state.pulls[max(standin.state.pulls)]
    assert removal.number == pr["number"] + 1 and removal.state == "open" and removal.head_ref == BRANCH
    assert removal.title == f"Remove {NAME}" and f"ModelService `{NS}/{NAME}` was deleted" in (removal.body or "")
    assert f"--- a/production/{NAME}/deployment-{NAME}.yaml" in (removal.body or "")
    # One commit on main: the service's directory gone, everything else as it was.
    assert git(origin.origin, "rev-parse", f"refs/heads/{BRANCH}^") == main
    files = git(origin.origin, "ls-tree", "-r", "--name-only", f"refs/heads/{BRANCH}").splitlines()
    assert files == ["README.md", "production/other/kustomization.yaml"]
    assert git(origin.origin, "rev-parse", "refs/heads/main") == main  # nothing pushed to main itself
    kind, reason, message = world.events[-1]
    assert (kind, reason) == ("Normal", "RemovalProposed") and removal.head_sha and f"/pull/{removal.number}" in message


def test_deleting_a_service_whose_newer_model_awaits_deploy_turns_that_pull_request_into_the_removal(
    standin: StandIn, origin: GitOpsRepo, tmp_path: Path,
) -> None:
    world = World(standin, origin, tmp_path)
    first = world.bake(IMAGE, DIGEST)["pullRequest"]
    world.merge(first["number"], first["headSha"])
    world.reconcile()
    world.serve_model("digits-2")
    second = world.bake(IMAGE2, DIGEST2)["pullRequest"]
    assert second["state"] == "open" and second["number"] == first["number"] + 1

    world.delete()
    # Still one open PR for the service: the newer model's, now removing what runs (v1).
    assert [(p.number, p.state) for p in standin.state.pulls.values()] == [(1, "closed"), (2, "open")]
    removal = standin.state.pulls[second["number"]]
    assert removal.title == f"Remove {NAME}" and IMAGE in (removal.body or "") and IMAGE2 not in (removal.body or "")
    assert f"production/{NAME}/" not in git(origin.origin, "ls-tree", "-r", "--name-only", f"refs/heads/{BRANCH}")


def test_a_resync_of_an_unchanged_proposal_reads_the_pull_request_not_the_repository(
    standin: StandIn, origin: GitOpsRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = World(standin, origin, tmp_path)
    pr = world.bake(IMAGE, DIGEST)["pullRequest"]
    assert pr["proposal"].startswith("sha256:")
    publisher = world.rec.gitops.publisher
    fetches: list[str] = []
    read = publisher.read
    monkeypatch.setattr(publisher, "read", lambda target, service, token: fetches.append(service) or read(target, service, token))
    lists = world.posts(f"/repos/{OWNER}/{REPO}/pulls", "GET")
    for _ in range(3):
        assert world.reconcile()["phase"] == "Proposed"
    assert fetches == [] and world.posts(f"/repos/{OWNER}/{REPO}/pulls", "GET") == lists
    assert world.posts(f"/repos/{OWNER}/{REPO}/pulls/1", "GET") == 3  # one API read per resync

    # Someone pushes to the service's branch: the moved head is seen, and the proposal put back.
    git(origin.work, "fetch", "-q", "origin", f"+refs/heads/{BRANCH}:refs/remotes/origin/{BRANCH}")
    origin.commit(BRANCH, {f"production/{NAME}/deployment-{NAME}.yaml": "hand edit\n"}, "edit", start=f"origin/{BRANCH}")
    status = world.reconcile()
    assert fetches == [NAME] and status["phase"] == "Proposed"
    assert f"image: {IMAGE}" in world.branch_file(f"deployment-{NAME}.yaml")
    assert status["pullRequest"]["headSha"] == git(origin.origin, "rev-parse", f"refs/heads/{BRANCH}")

    # Merged (by the bot's /deploy): Delivered from the PR's state alone, then nothing is asked at all.
    world.merge(1, status["pullRequest"]["headSha"])
    assert world.reconcile()["phase"] == "Delivered" and fetches == [NAME]
    asked = len(standin.state.requests)
    world.reconcile()
    assert len(standin.state.requests) == asked and fetches == [NAME]

    # A newer model is a new proposal: the repository is read and the service's branch moves.
    world.serve_model("digits-2")
    status = world.bake(IMAGE2, DIGEST2)
    assert status["phase"] == "Proposed" and fetches == [NAME, NAME]


def test_a_closed_pull_request_reopened_by_a_reviewer_is_seen_without_a_fetch(
    standin: StandIn, origin: GitOpsRepo, tmp_path: Path,
) -> None:
    world = World(standin, origin, tmp_path)
    number = world.bake(IMAGE, DIGEST)["pullRequest"]["number"]
    standin.state.pulls[number].state = "closed"
    assert world.reconcile()["phase"] == "Failed"
    standin.state.pulls[number].state = "open"
    status = world.reconcile()
    assert status["phase"] == "Proposed" and status["pullRequest"]["state"] == "open"


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
        directory = change.directory or change.before  # a removal: what the base branch holds
        assert directory is not None
        files = {path.name: path.read_text() for path in sorted(directory.iterdir())}
        self.applied.append((change.service if change.directory else f"-{change.service}", origin.sha, files))
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

        # Deleted: the removal PR is one the bot's /deploy prunes (the base branch's directory
        # tells it where the objects are) and merges; main then holds nothing of the service.
        world.delete()
        removal = max(standin.state.pulls)
        head = standin.state.pulls[removal].head_sha
        standin.state.reviews[removal] = [ReviewState(harness.REVIEWER, "APPROVED", head)]

        async def remove() -> None:
            async with running_bot(standin, origin, tmp_path / "bot", cluster) as bot:  # type: ignore[arg-type]
                await bot.deliver(payload("/deploy production", number=removal))
                await bot.settle()

        asyncio.run(remove())
        assert standin.state.merges[-1] == (removal, head), standin.state.comments
        service, sha, files = cluster.applied[-1]
        assert service == f"-{NAME}" and sha == head and f"image: {IMAGE}" in files["deployment-digits.yaml"]
        assert f"production/{NAME}/" not in git(origin.origin, "ls-tree", "-r", "--name-only", "refs/heads/main")
        assert standin.state.violations == []
    finally:
        standin.stop()
