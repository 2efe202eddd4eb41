"""Fixtures for the operator's cluster tests: the CRDs installed and the operator running."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from github_standin.harness import OWNER, REPO, ROLES, TOKEN, GitOpsRepo
from github_standin.server import GitHubState, StandIn


@dataclass
class GitOpsGitHub:
    """The GitHub the operator's GitOps delivery talks to in this session: the stand-in (every
    request checked against GitHub's OpenAPI description) and a clone URL that is a symlink a
    test points at its own bare repository."""

    standin: StandIn
    clone_url: Path

    def use(self, repo: GitOpsRepo) -> GitHubState:
        """Serve `repo` as Codertocat/Hello-World from now on, with a fresh GitHub state."""
        state = GitHubState(owner=OWNER, repo=REPO, token=TOKEN, git_dir=repo.origin, roles=dict(ROLES))
        self.standin.state = state
        link = self.clone_url.with_name(self.clone_url.name + ".new")
        link.unlink(missing_ok=True)
        link.symlink_to(repo.origin)
        link.replace(self.clone_url)  # atomic: the operator never sees no repository
        return state


@pytest.fixture(scope="session")
def gitops_github(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitOpsGitHub]:
    root = Path(tmp_path_factory.mktemp("gitops-github"))
    empty = GitOpsRepo.create(root / "empty", {"README.md": "no test uses the GitOps repository yet\n"})
    standin = StandIn(GitHubState(owner=OWNER, repo=REPO, token=TOKEN, git_dir=empty.origin)).start()
    github = GitOpsGitHub(standin, root / "origin.git")
    github.use(empty)
    yield github
    standin.stop()


@pytest.fixture(scope="session")
def operator(dev_env: Any, gitops_github: GitOpsGitHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """`kakehashi operator run` against the learning cluster, as its Deployment would run it."""
    from kakehashi.dev.operator import LocalOperator, install_crds, local_settings

    install_crds(dev_env)
    directory = Path(tmp_path_factory.mktemp("operator"))
    log = directory / "operator.log"
    # The webhook test's receiver listens on loopback over http: permitted here, refused by
    # default (notification webhooks must be https to a public address). GitOps delivery goes
    # to the session's GitHub stand-in, never to github.com.
    extra = {"KAKEHASHI_WEBHOOK_ALLOWLIST": "127.0.0.1/32", "KAKEHASHI_WEBHOOK_ALLOW_HTTP": "true",
             "KAKEHASHI_GITOPS_API_URL": gitops_github.standin.url,
             "KAKEHASHI_GITOPS_CLONE_URL": str(gitops_github.clone_url),
             "KAKEHASHI_GITOPS_CHECKOUT": str(directory / "gitops"),
             **local_settings(dev_env)}
    proc = LocalOperator(dev_env, log, extra_env=extra)
    proc.start()
    yield proc
    proc.stop()
