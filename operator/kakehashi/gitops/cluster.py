"""The cluster side of the bot, as an interface: what `/deploy`, `/diff`, `/rollback` and
`/train` need from the clusters, and what they report back.

The bot decides *whether* to act (signature, permission, approval, mergeability, head SHA,
locks); a `Cluster` does the acting on a checked-out directory (kustomize build, server-side
apply, prune, readiness wait, audit record). Keeping the line here lets the bot's rules be
tested without clusters and lets the Kubernetes implementation be swapped or tested alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class Origin:
    """Who asked for a change and from where: what the audit record says."""

    actor: str  # the GitHub login that commented
    repository: str  # owner/name
    pull_request: int
    sha: str  # the commit applied
    at: datetime


@dataclass(frozen=True)
class ServiceChange:
    """One service directory of the PR, checked out at the head commit."""

    environment: str
    service: str
    directory: Path | None  # None: the PR deletes the service
    # The directory on the base branch (what runs now), when the PR deletes the service: where
    # its objects are (their namespace) to be pruned.
    before: Path | None = None


@dataclass(frozen=True)
class ApplyResult:
    ok: bool
    summary: str  # one line for the commit status (≤140 characters are kept)
    details: str = ""  # markdown for the PR comment: what was applied, pruned, how the rollout went
    digests: dict[str, str] = field(default_factory=dict)  # service -> image digest now serving


@dataclass(frozen=True)
class TrainResult:
    ok: bool
    summary: str
    metrics: dict[str, float] = field(default_factory=dict)
    promotable: bool | None = None  # the gate's verdict, None when the run has no gate


class Cluster(Protocol):
    async def apply(self, change: ServiceChange, origin: Origin) -> ApplyResult:
        """Build, server-side apply, prune what the PR removed, wait until ready, record."""
        ...

    async def diff(self, change: ServiceChange) -> str:
        """A unified diff of what `apply` would change, from a server-side dry run."""
        ...

    async def rollback(self, environment: str, service: str, target: str | None, origin: Origin) -> ApplyResult:
        """Serve an earlier version: `target` is a history index, a digest, or None (the previous)."""
        ...

    async def train(self, directory: Path, origin: Origin) -> TrainResult:
        """Apply the TrainingRun manifests in `directory` on the learning cluster, wait, report."""
        ...
