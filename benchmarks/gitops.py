"""GitOps bot benchmark: `/deploy` webhooks end to end against `kubectl apply --server-side -k`.

    python benchmarks/gitops.py [--deploys 50]

Each round changes the image digest of a two-replica Deployment (kwok nodes of the local
production cluster: what is timed is the bot's path, not a container start) and times, in the
same run and alternately so both see the same machine:
- bot: from the signed `/deploy production` webhook being posted to the objects applied and
  ready (signature, GitHub calls to the stand-in over loopback HTTP, permission, config, git
  fetch and archive, lock, approvals and mergeability re-read, kustomize build, server-side
  apply, prune, the readiness wait, the audit record); `bot_to_final_report` goes on to the
  merge, the success status and the comment;
- kubectl: `kubectl apply --server-side -k` of the same directory plus the same readiness wait.
Writes benchmarks/results/gitops.json: {"deploys", "bot": {"p50_s", "p99_s"}, "kubectl": {...}}.
Run it under the cluster lock: `flock /tmp/kakehashi-cluster.lock python benchmarks/gitops.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from github_standin.harness import GitOpsRepo, Harness, open_pr, payload, running_bot, start_standin

from kakehashi.control.client import Kube, api_client
from kakehashi.delivery.direct import Production
from kakehashi.dev import stack
from kakehashi.gitops.kube import KubeCluster
from kakehashi.serving import render

RESULTS = Path(__file__).parent / "results" / "gitops.json"


def manifests(service: str, n: int) -> dict[str, str]:
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        # The label readiness finds a service's objects by (the bot adds it; kubectl's side has it here).
        "metadata": {"name": service, "labels": {render.LABEL_SERVICE: service}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": service}},
                 "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                 "template": {"metadata": {"labels": {"app": service, render.LABEL_SERVICE: service}},
                              "spec": {"containers": [{"name": "server",
                                                       "image": f"registry.invalid/{service}@sha256:{n:064x}"}]}}},
    }
    return {"kustomization.yaml": "resources: [deployment.yaml]\n", "deployment.yaml": yaml.safe_dump(deployment)}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deploys", type=int, default=50)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    env = stack.up(print)
    kube = Kube(api_client(env.production.kubeconfig))
    kubectl = [str(env.bin_dir / "kubectl"), "--kubeconfig", str(env.production.kubeconfig)]
    namespace = f"bench-gitops-{uuid.uuid4().hex[:6]}"
    subprocess.run([*kubectl, "create", "namespace", namespace], check=True, capture_output=True)
    production = Production(kube, owner_label=render.LABEL_SERVICE, port=render.PORT)
    cluster = KubeCluster(production, kubeconfig=env.production.kubeconfig, namespace=namespace,
                          kubectl=kubectl[0], rollout_timeout_s=120, poll_s=0.2)
    bot_s: list[float] = []  # webhook posted -> objects applied and ready
    report_s: list[float] = []  # webhook posted -> merged, status set, comment posted
    kubectl_s: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-gitops-") as tmp:
        root = Path(tmp)
        files = {".kakehashi/bot.yaml": "environments:\n  production: {path: production, approvals: 1}\n"}
        files |= {f"production/web/{k}": v for k, v in manifests("web", 0).items()}
        repo = GitOpsRepo.create(root / "repo", files)
        standin = start_standin(repo)
        plain = root / "plain"
        plain.mkdir()

        ready_at: list[float] = []
        apply = cluster.apply

        async def timed_apply(change: Any, origin: Any) -> Any:
            result = await apply(change, origin)
            ready_at.append(time.perf_counter())  # applied and ready: the end point
            return result

        cluster.apply = timed_apply  # type: ignore[method-assign]

        async def rounds(h: Harness) -> None:
            for i in range(1, args.deploys + 1):
                sha = open_pr(repo, standin.state, i, {f"production/web/{k}": v for k, v in manifests("web", i).items()})
                started = time.perf_counter()
                await h.deliver(payload("/deploy production", number=i))
                await h.settle(300)
                bot_s.append(ready_at[-1] - started)
                report_s.append(time.perf_counter() - started)
                if h.statuses(sha)[-1][0] != "success":
                    raise SystemExit(f"deploy {i} failed: {h.comments(i)[-1]}")
                for name, text in manifests("plain", i).items():
                    (plain / name).write_text(text)
                started = time.perf_counter()
                await asyncio.to_thread(
                    subprocess.run, [*kubectl, "apply", "--server-side", "--field-manager=bench", "-n", namespace,
                                     "-k", str(plain)], check=True, capture_output=True)
                objects = yaml.safe_load((plain / "deployment.yaml").read_text())
                objects["metadata"]["namespace"] = namespace
                rollout = await cluster._wait(namespace, "plain", [objects])
                kubectl_s.append(time.perf_counter() - started)
                if not rollout.ok:
                    raise SystemExit(f"kubectl round {i}: {rollout.message}")
                print(f"{i:3d}: bot {bot_s[-1]:.2f} s (reported {report_s[-1]:.2f} s), kubectl {kubectl_s[-1]:.2f} s",
                      flush=True)

        try:
            asyncio.run(_run(standin, repo, root, cluster, rounds))
        finally:
            standin.stop()
            subprocess.run([*kubectl, "delete", "namespace", namespace, "--wait=false"], capture_output=True)
        if standin.state.violations:
            raise SystemExit(f"the stand-in saw requests outside GitHub's description: {standin.state.violations}")

    result = {
        "deploys": args.deploys,
        "bot": {"p50_s": round(statistics.median(bot_s), 3), "p99_s": round(percentile(bot_s, 0.99), 3)},
        "bot_to_final_report": {"p50_s": round(statistics.median(report_s), 3),
                                "p99_s": round(percentile(report_s, 0.99), 3)},
        "kubectl": {"p50_s": round(statistics.median(kubectl_s), 3), "p99_s": round(percentile(kubectl_s, 0.99), 3)},
        "bot_over_kubectl_p50": round(statistics.median(bot_s) / statistics.median(kubectl_s), 2),
        "nodes": "kwok (pods go Ready without running; the rollout is the Deployment controller's)",
        "load_average": list(os.getloadavg()),
    }
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


async def _run(standin: Any, repo: GitOpsRepo, root: Path, cluster: KubeCluster, rounds: Any) -> None:
    async with running_bot(standin, repo, root / "bot-checkout", cluster) as harness:
        await rounds(harness)


if __name__ == "__main__":
    main()
