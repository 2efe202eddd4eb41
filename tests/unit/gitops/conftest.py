"""Fixtures for the bot's unit tests: the shared harness (tests/github_standin/harness.py) with
a recorded cluster side."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from github_standin.harness import GitOpsRepo, Harness, open_pr, payload, running_bot, start_standin
from github_standin.server import GitHubState, StandIn

from kakehashi.gitops.cluster import ApplyResult, Origin, ServiceChange, TrainResult

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


def kustomization(image: str) -> dict[str, str]:
    return {
        "kustomization.yaml": "resources: [deployment.yaml]\n",
        "deployment.yaml": f"apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: digits}}\n"
                           f"spec: {{template: {{spec: {{containers: [{{name: serve, image: '{image}'}}]}}}}}}\n",
    }


@pytest.fixture
def repo(tmp_path: Path) -> GitOpsRepo:
    files = {".kakehashi/bot.yaml": CONFIG, "training/run.yaml": "kind: TrainingRun\n"}
    files |= {f"production/digits/{k}": v for k, v in kustomization("registry/digits@sha256:" + "1" * 64).items()}
    files |= {f"production/other/{k}": v for k, v in kustomization("registry/other@sha256:" + "2" * 64).items()}
    files |= {f"staging/digits/{k}": v for k, v in kustomization("registry/digits@sha256:" + "1" * 64).items()}
    return GitOpsRepo.create(tmp_path, files)


@pytest.fixture
def standin(repo: GitOpsRepo) -> Iterator[StandIn]:
    server = start_standin(repo)
    yield server
    server.stop()
    # Every request the bot made, and every answer, matched GitHub's OpenAPI description.
    assert server.state.violations == []


@pytest.fixture(name="payload")
def payload_fixture() -> Any:
    return payload


def open_service_pr(repo: GitOpsRepo, github: GitHubState, number: int, *, digest: str = "3",
                    approved: bool = True, service: str = "digits", env: str = "production",
                    file: str = "deployment.yaml") -> str:
    """A PR changing one file of one service: its image digest, or another file."""
    text = kustomization(f"registry/{service}@sha256:" + digest * 64)["deployment.yaml"]
    if file != "deployment.yaml":
        text = f"# {file} of PR {number}\n"
    return open_pr(repo, github, number, {f"{env}/{service}/{file}": text}, approved=approved)


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
            if change.directory is None:  # the PR deletes the service
                self.applied.append((change.environment, change.service, origin.sha, "(deleted)"))
                return self.result
            text = await asyncio.to_thread((change.directory / "deployment.yaml").read_text)
            image = [line for line in text.splitlines() if "image" in line]
            self.applied.append((change.environment, change.service, origin.sha, image[0].strip()))
            return self.result
        finally:
            self.active -= 1

    async def diff(self, change: ServiceChange) -> str:
        assert change.directory is not None
        text = await asyncio.to_thread((change.directory / "deployment.yaml").read_text)
        image = text.split("image: ")[1].split("'")[1]
        return f"--- live/Deployment/digits\n+++ pr/Deployment/digits\n-  image: old\n+  image: {image}\n"

    async def rollback(self, environment: str, service: str, target: str | None, origin: Origin) -> ApplyResult:
        self.rollbacks.append((environment, service, target, origin.actor))
        return ApplyResult(True, "serving sha256:" + "1" * 12 + " again", "2/2 replicas ready")

    async def train(self, directory: Path, origin: Origin) -> TrainResult:
        self.trained.append(sorted(await asyncio.to_thread(os.listdir, directory))[0])
        return TrainResult(True, "TrainingRun pr-7-abc Succeeded", {"accuracy": 0.93, "loss": 0.21}, promotable=True)


def run_bot(standin: StandIn, repo: GitOpsRepo, tmp_path: Path, scenario: Any,
            cluster: RecordingCluster | None = None, **options: Any) -> RecordingCluster:
    """Run `scenario(harness)` against a bot wired to the stand-in and a recording cluster."""
    cluster = cluster or RecordingCluster()

    async def main() -> None:
        async with running_bot(standin, repo, tmp_path / "bot-checkout", cluster, **options) as harness:
            await scenario(harness)

    asyncio.run(main())
    return cluster


__all__ = ["Harness", "RecordingCluster", "open_service_pr", "run_bot"]
