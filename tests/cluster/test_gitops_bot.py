"""The PR-comment bot against the local production cluster: GitHub is the stand-in (validated
against GitHub's OpenAPI description), the GitOps repository is real git, the cluster is real.

One service, `web`, on kwok nodes (its pods go Ready without running): what is checked is the
bot's side of the contract (build, server-side apply, prune, readiness, audit, diff, rollback),
not the serving image, which the ModelService tests run on the real node.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml
from github_standin.harness import GitOpsRepo, Harness, open_pr, payload, running_bot, start_standin

from kakehashi.control.client import Kube, api_client
from kakehashi.control.resources import DEPLOYMENTS, PODS, SERVICES
from kakehashi.delivery.direct import Production
from kakehashi.gitops.kube import CONFIGMAPS, LABEL_AUDIT, KubeCluster
from kakehashi.serving import render

CONFIG = "environments:\n  production: {path: production, approvals: 1}\nrollback_environment: production\n"


def image(n: int) -> str:
    return f"registry.invalid/web@sha256:{str(n) * 64}"


def deployment(n: int, *, node_selector: dict[str, str] | None = None) -> str:
    spec: dict[str, Any] = {"containers": [{"name": "server", "image": image(n)}]}
    if node_selector:
        spec["nodeSelector"] = node_selector
    return yaml.safe_dump({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 # maxUnavailable 0: a new version that never gets ready leaves the old one serving
                 "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": spec}},
    })


SERVICE = yaml.safe_dump({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                          "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}})


def kustomization(*resources: str) -> str:
    return yaml.safe_dump({"resources": list(resources)})


@pytest.mark.slow
def test_deploy_prune_diff_failed_rollout_and_rollback_on_production(
    dev_env: Any, production_namespace: str, tmp_path: Path
) -> None:
    namespace = production_namespace
    kube = Kube(api_client(dev_env.production.kubeconfig))
    production = Production(kube, owner_label=render.LABEL_SERVICE, port=render.PORT)
    cluster = KubeCluster(production, kubeconfig=dev_env.production.kubeconfig, namespace=namespace,
                          kubectl=str(dev_env.bin_dir / "kubectl"), rollout_timeout_s=15, poll_s=0.5)
    repo = GitOpsRepo.create(tmp_path, {
        ".kakehashi/bot.yaml": CONFIG,
        "production/web/kustomization.yaml": kustomization("deployment.yaml", "service.yaml"),
        "production/web/deployment.yaml": deployment(0),
        "production/web/service.yaml": SERVICE,
    })
    standin = start_standin(repo)
    github = standin.state

    def live_images() -> list[str]:
        pods = kube.list_objects(PODS, namespace, f"{render.LABEL_SERVICE}=web")
        ready = [p for p in pods if not p["metadata"].get("deletionTimestamp") and any(
            c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get("conditions", []))]
        return sorted(p["spec"]["containers"][0]["image"] for p in ready)

    async def scenario(h: Harness) -> None:
        # 1. A first version: applied whole, ready, merged, recorded.
        first = open_pr(repo, github, 7, {"production/web/deployment.yaml": deployment(1)})
        await h.deliver(payload("/deploy production", number=7))
        await h.settle(120)
        assert h.statuses(first)[-1] == ("success", "kakehashi/deploy/production"), h.comments(7)
        assert live_images() == [image(1)] * 2
        assert kube.get(SERVICES, namespace, "web") is not None
        assert github.merges == [(7, first)]

        # 2. The next PR drops the Service: pruned, and the new image rolled out.
        second = open_pr(repo, github, 8, {"production/web/deployment.yaml": deployment(2),
                                           "production/web/service.yaml": None,
                                           "production/web/kustomization.yaml": kustomization("deployment.yaml")})
        await h.deliver(payload("/deploy production", number=8))
        await h.settle(120)
        assert h.statuses(second)[-1] == ("success", "kakehashi/deploy/production"), h.comments(8)
        assert "pruned: Service/web" in h.comments(8)[-1]
        assert kube.get(SERVICES, namespace, "web") is None
        assert live_images() == [image(2)] * 2

        # 3. /diff: the API server's dry run, as a diff of the live object.
        broken = open_pr(repo, github, 9, {"production/web/deployment.yaml":
                                           deployment(3, node_selector={"kakehashi.dev/no-such-node": "x"})})
        await h.deliver(payload("/diff production", number=9))
        await h.settle(60)
        diff = h.comments(9)[-1]
        lines = diff.splitlines()
        assert any(line.startswith("-") and image(2) in line for line in lines), diff
        assert any(line.startswith("+") and image(3) in line for line in lines), diff
        assert any(line.startswith("+") and "kakehashi.dev/no-such-node" in line for line in lines), diff
        assert kube.get(DEPLOYMENTS, namespace, "web")["spec"]["template"]["spec"]["containers"][0]["image"] == image(2)

        # 4. A rollout that never gets ready: a failure, not merged, the earlier version serving.
        await h.deliver(payload("/deploy production", number=9))
        await h.settle(120)
        assert h.statuses(broken)[-1] == ("failure", "kakehashi/deploy/production")
        assert "not ready after 15 s" in h.comments(9)[-1]
        assert "2 ready pod(s) of the earlier version keep serving" in h.comments(9)[-1]
        assert (9, broken) not in github.merges
        assert live_images() == [image(2)] * 2

        # 5. /rollback: back to the last good version (the whole of it), then one further back.
        await h.deliver(payload("/rollback web", number=9))
        await h.settle(120)
        assert "on production done" in h.comments(9)[-1], h.comments(9)[-1]
        assert "#8" in h.comments(9)[-1]
        live = kube.get(DEPLOYMENTS, namespace, "web")
        assert live["spec"]["template"]["spec"].get("nodeSelector") is None
        assert live_images() == [image(2)] * 2
        await h.deliver(payload("/rollback web", number=9))
        await h.settle(120)
        assert "#7" in h.comments(9)[-1] and "done" in h.comments(9)[-1], h.comments(9)[-1]
        assert live_images() == [image(1)] * 2
        assert kube.get(SERVICES, namespace, "web") is not None  # version 1 had its Service

    try:
        asyncio.run(_run(standin, repo, tmp_path, cluster, scenario))
    finally:
        standin.stop()
    assert github.violations == []
    # The audit trail on the cluster: who deployed or rolled back which digest from which PR.
    records = sorted((c["data"] for c in kube.list_objects(CONFIGMAPS, namespace, LABEL_AUDIT)), key=lambda d: d["at"])
    assert [(r["pullRequest"], r["outcome"], r["actor"]) for r in records] == [
        ("7", "success", "Codertocat"), ("8", "success", "Codertocat"), ("9", "failure", "Codertocat"),
        ("9", "success", "Codertocat"), ("9", "success", "Codertocat")]
    assert image(1) in records[0]["images"] and records[0]["commit"] == repo.shas[7]


async def _run(standin: Any, repo: GitOpsRepo, tmp_path: Path, cluster: KubeCluster, scenario: Any) -> None:
    async with running_bot(standin, repo, tmp_path / "bot-checkout", cluster) as harness:
        await scenario(harness)
