"""Fixtures for the operator's cluster tests: the CRDs installed and the operator running.

The operator runs as a local process (`LocalOperator`: quick to start, kill and restart, its log a
file), or with KAKEHASHI_TEST_OPERATOR=in-cluster as it is installed: from its image, in the
learning cluster on the real node, two replicas and a leader (`InClusterOperator`), so the same
tests prove its Deployment, ServiceAccount and RBAC sufficient.
"""

from __future__ import annotations

import os
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

IN_CLUSTER = os.environ.get("KAKEHASHI_TEST_OPERATOR") == "in-cluster"


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
    from kakehashi.dev.node import SERVICES_ADDRESS
    from kakehashi.dev.operator import (
        InClusterOperator,
        LocalOperator,
        install_crds,
        local_settings,
    )

    install_crds(dev_env)
    directory = Path(tmp_path_factory.mktemp("operator"))
    # The webhook test's receiver listens over http where the operator reaches it (loopback, or
    # the services address for pods): permitted here, refused by default (notification webhooks
    # must be https to a public address).
    receiver = f"{SERVICES_ADDRESS}/32" if IN_CLUSTER else "127.0.0.1/32"
    extra = {"KAKEHASHI_WEBHOOK_ALLOWLIST": receiver, "KAKEHASHI_WEBHOOK_ALLOW_HTTP": "true",
             **local_settings(dev_env)}
    proc: Any
    if IN_CLUSTER:
        if not dev_env.real_nodes:
            pytest.skip(f"KAKEHASHI_TEST_OPERATOR=in-cluster needs the real nodes: {dev_env.no_real_nodes_reason}")
        proc = InClusterOperator(dev_env, directory,
                                 settings={**extra, "KAKEHASHI_RESYNC_SECONDS": "5"})
        proc.start()
        yield proc
        proc.uninstall()
        return
    # GitOps delivery goes to the session's GitHub stand-in, never to github.com. (Not for the
    # operator in the cluster: the stand-in listens on loopback and its clone URL is a local path.)
    extra.update({"KAKEHASHI_GITOPS_API_URL": gitops_github.standin.url,
                  "KAKEHASHI_GITOPS_CLONE_URL": str(gitops_github.clone_url),
                  "KAKEHASHI_GITOPS_CHECKOUT": str(directory / "gitops")})
    proc = LocalOperator(dev_env, directory / "operator.log", extra_env=extra)
    proc.start()
    yield proc
    proc.stop()
