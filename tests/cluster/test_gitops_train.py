"""`/train` against the local learning cluster: the PR head's TrainingRun manifests become runs
named for the commit, the operator (the real one) runs them on kwok nodes, and the bot posts
their metrics and gate, or the reason a run failed."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from github_standin.harness import GitOpsRepo, Harness, open_pr, payload, running_bot, start_standin

from kakehashi.api import trainingrun
from kakehashi.control.client import Kube, api_client
from kakehashi.delivery.direct import Production
from kakehashi.gitops.kube import KubeCluster
from kakehashi.modelformat import ModelArtifact
from kakehashi.serving import render

CONFIG = "environments:\n  production: {path: production, approvals: 1}\ntraining_path: training\n"


def run_manifest(name: str, output: str, annotations: dict[str, str]) -> str:
    return yaml.safe_dump({
        "apiVersion": f"{trainingrun.RESOURCE.group}/{trainingrun.RESOURCE.version}", "kind": "TrainingRun",
        "metadata": {"name": name},
        "spec": {"command": ["python", "train.py"], "hyperparameters": {"epochs": 2},
                 "output": {"uri": output}, "gate": {"metric": "accuracy", "threshold": 0.9},
                 "podMetadata": {"annotations": {"kwok.kakehashi.dev/run-duration": "1s", **annotations}}},
    })


@pytest.mark.slow
def test_train_reports_metrics_and_gate_or_why_the_run_failed(
    dev_env: Any, learning: Any, namespace: str, operator: Any, s3: Any, tmp_path: Path
) -> None:
    bucket = dev_env.s3.model_bucket
    prefix = f"gitops-train-{uuid.uuid4().hex[:8]}/"
    output = f"s3://{bucket}/{prefix}"
    # kwok runs no container: the model.json a real training would save is put there beforehand.
    model = ModelArtifact(uri=output, digest="sha256:" + "0" * 64, metrics={"accuracy": 0.95, "loss": 0.21})
    s3.put_object(Bucket=bucket, Key=prefix + "model.json", Body=model.model_dump_json(by_alias=True).encode())

    production = Production(Kube(api_client(dev_env.production.kubeconfig)), owner_label=render.LABEL_SERVICE,
                            port=render.PORT)
    cluster = KubeCluster(production, kubeconfig=dev_env.production.kubeconfig, namespace="default",
                          learning=Kube(learning), learning_namespace=namespace, train_timeout_s=120, poll_s=0.5)
    repo = GitOpsRepo.create(tmp_path, {".kakehashi/bot.yaml": CONFIG, "README.md": "models\n"})
    standin = start_standin(repo)
    github = standin.state

    async def scenario(h: Harness) -> None:
        good = open_pr(repo, github, 7, {"training/digits.yaml": run_manifest("digits", output, {})}, approved=False)
        await h.deliver(payload("/train", number=7))
        await h.settle(180)
        reply = h.comments(7)[-1]
        assert f"TrainingRun digits-pr7-{good[:7]} Succeeded" in reply, reply
        assert "Gate: passed (promotable)" in reply and "| accuracy | 0.95 |" in reply, reply
        assert h.statuses(good) == [("pending", "kakehashi/train"), ("success", "kakehashi/train")]

        broken = open_pr(repo, github, 8, {"training/digits.yaml": run_manifest("digits", output, {
            "kwok.kakehashi.dev/outcome": "fail", "kwok.kakehashi.dev/exit-code": "3",
            "kwok.kakehashi.dev/log-tail": "epoch 1/2\nValueError: NaN loss"})}, approved=False)
        await h.deliver(payload("/train", number=8))
        await h.settle(180)
        reply = h.comments(8)[-1]
        assert f"TrainingRun digits-pr8-{broken[:7]} Failed" in reply and "NaN loss" in reply, reply
        assert h.statuses(broken)[-1] == ("failure", "kakehashi/train")

    async def main() -> None:
        async with running_bot(standin, repo, tmp_path / "bot-checkout", cluster) as harness:
            await scenario(harness)

    try:
        asyncio.run(main())
    finally:
        standin.stop()
    assert github.violations == []
    run = Kube(learning).get(trainingrun.RESOURCE, namespace, f"digits-pr7-{repo.shas[7][:7]}")
    assert run is not None and run["metadata"]["labels"]["kakehashi.dev/commit"] == repo.shas[7]
