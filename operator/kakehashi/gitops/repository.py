"""The GitOps repository, through the git CLI: fetch a PR's refs, read the base branch's
config, list the services a PR changes, and export the head commit's files.

The bot keeps a bare clone and never checks out a branch: every read names a commit, so two
commands on two PRs cannot see each other's files, and what is applied is exactly the commit
that was approved. A token for https remotes reaches git through its environment
(GIT_CONFIG_*), never through a command line or a URL that could be logged.
"""

from __future__ import annotations

import asyncio
import io
import tarfile
from pathlib import Path, PurePosixPath

from kakehashi.delivery.github import git_environment


class GitError(Exception):
    pass


class GitRepository:
    def __init__(self, url: str, directory: Path, *, token: str | None = None) -> None:
        self.url = url
        self.directory = directory
        self._env = git_environment(url, token)
        # One fetch at a time: concurrent fetches into one repository fight over ref locks.
        self._fetching = asyncio.Lock()

    async def _git(self, *args: str, stdin: bytes | None = None) -> bytes:
        process = await asyncio.create_subprocess_exec(
            "git", "--git-dir", str(self.directory), *args,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._env,
        )
        out, err = await process.communicate(stdin)
        if process.returncode != 0:
            raise GitError(f"git {args[0]} failed: {err.decode(errors='replace').strip()[-500:]}")
        return out

    async def fetch(self, base_ref: str, pull_request: int) -> None:
        """Bring the base branch and the PR head (refs/pull/N/head: forks too) up to date."""
        async with self._fetching:
            if not (self.directory / "HEAD").exists():
                self.directory.mkdir(parents=True, exist_ok=True)
                await self._git("init", "--bare", "--quiet")
            await self._git(
                "fetch", "--quiet", "--no-tags", "--force", self.url,
                f"+refs/heads/{base_ref}:refs/remotes/origin/{base_ref}",
                f"+refs/pull/{pull_request}/head:refs/remotes/origin/pr/{pull_request}",
            )

    async def has_commit(self, sha: str) -> bool:
        try:
            await self._git("cat-file", "-e", f"{sha}^{{commit}}")
        except GitError:
            return False
        return True

    async def read(self, ref: str, path: str) -> str | None:
        """A file's text at `ref`; None if it does not exist there."""
        try:
            return (await self._git("show", f"{ref}:{path}")).decode()
        except GitError:
            return None

    async def changed_services(self, base_ref: str, sha: str, path: str) -> list[str]:
        """Directories directly below `path` that the PR (merge base to `sha`) touches."""
        out = await self._git("diff", "--name-only", f"refs/remotes/origin/{base_ref}...{sha}", "--", path)
        services = set()
        root = PurePosixPath(path)
        for line in out.decode().splitlines():
            relative = PurePosixPath(line).relative_to(root)
            if len(relative.parts) >= 2:  # a file directly in `path` is no service
                services.add(relative.parts[0])
        return sorted(services)

    async def export(self, sha: str, path: str, destination: Path) -> Path | None:
        """Write `path` at commit `sha` below `destination`; None if it does not exist there."""
        try:
            archive = await self._git("archive", "--format=tar", sha, "--", path)
        except GitError:
            return None
        await asyncio.to_thread(_extract, archive, destination)
        return destination / path


def _extract(archive: bytes, destination: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        # The "data" filter refuses links out of the tree and absolute paths.
        tar.extractall(destination, filter="data")
