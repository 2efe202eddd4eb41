"""The init container's clone script, run for real with git against a local repository."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kakehashi import contract
from kakehashi.training.children import CLONE_SCRIPT

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "ds", "GIT_AUTHOR_EMAIL": "ds@example.com",
           "GIT_COMMITTER_NAME": "ds", "GIT_COMMITTER_EMAIL": "ds@example.com"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, str, str]:
    origin = tmp_path / "origin"
    origin.mkdir()
    git(origin, "init", "-q", "-b", "main")
    (origin / "train.py").write_text("print('v1')\n")
    git(origin, "add", ".")
    git(origin, "commit", "-q", "-m", "v1")
    git(origin, "tag", "v1")
    first = git(origin, "rev-parse", "HEAD")
    (origin / "train.py").write_text("print('v2')\n")
    git(origin, "commit", "-q", "-am", "v2")
    return origin, first, git(origin, "rev-parse", "HEAD")


def clone(tmp_path: Path, url: str, revision: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        contract.ENV_SOURCE_GIT_URL: url,
        contract.ENV_SOURCE_GIT_REVISION: revision,
        contract.ENV_WORKSPACE: str(tmp_path / "workspace" / "src"),
        contract.ENV_SOURCE_COMMIT_FILE: str(tmp_path / "workspace" / "commit"),
        "TERMINATION_LOG": str(tmp_path / "termination-log"),
    }
    (tmp_path / "workspace").mkdir(exist_ok=True)
    return subprocess.run(["sh", "-c", CLONE_SCRIPT], env=env, capture_output=True, text=True)


@pytest.mark.parametrize("revision", ["v1", "main", "HEAD", "first-sha"])
def test_clone_checks_out_the_revision_and_records_the_commit(tmp_path: Path, repo: tuple[Path, str, str], revision: str) -> None:
    origin, first, last = repo
    asked = first if revision == "first-sha" else revision
    result = clone(tmp_path, f"file://{origin}", asked)
    assert result.returncode == 0, result.stderr
    expected = first if revision in ("v1", "first-sha") else last
    assert (tmp_path / "workspace" / "commit").read_text().strip() == expected
    assert (tmp_path / "termination-log").read_text().strip() == expected
    assert (tmp_path / "workspace" / "src" / "train.py").read_text() == ("print('v1')\n" if expected == first else "print('v2')\n")


def test_unknown_revision_fails_with_gits_message(tmp_path: Path, repo: tuple[Path, str, str]) -> None:
    result = clone(tmp_path, f"file://{repo[0]}", "no-such-branch")
    assert result.returncode != 0
    assert "no-such-branch" in result.stderr
