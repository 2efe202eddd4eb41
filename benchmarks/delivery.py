"""Delivery benchmark: how fast a trained model becomes a serving ModelService, and how fast a
rollback takes effect, on the local production cluster's real node.

    python benchmarks/delivery.py [--rounds 5] [--replicas 2]

Two digits models are trained once by TrainingRuns (real TensorFlow on the learning cluster's
real node). Each round then creates a new ModelService for model A and times `kubectl apply`
to every replica Ready *and* reporting A's digest (the bake Job, the push, the apply to
production, image pull and the server's start), moves it to model B, and times a rollback
(`spec.rollbackTo: "1"`, no bake) from the spec change to every ready pod serving A again.
Writes benchmarks/results/delivery.json: {"deploy_s_median", "rollback_s_median", "replicas", ...}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from kubernetes import client

from kakehashi import GROUP, VERSION
from kakehashi.control.client import api_client
from kakehashi.dev import node, stack
from kakehashi.dev.environment import DevEnvironment
from kakehashi.dev.operator import LocalOperator, create_team_secrets, install_crds, local_settings

RESULTS = Path(__file__).parent / "results" / "delivery.json"


def wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    print("Bringing up the local clusters (kakehashi dev up)...", flush=True)
    env = stack.up(print)
    if not env.real_nodes or "serving" not in env.images:
        raise SystemExit(f"needs the real nodes and the project's images: {env.no_real_nodes_reason}")
    install_crds(env)
    learning, production = api_client(env.learning.kubeconfig), api_client(env.production.kubeconfig)
    core, custom = client.CoreV1Api(learning), client.CustomObjectsApi(learning)
    suffix = uuid.uuid4().hex[:6]
    ns, prod_ns = f"bench-delivery-{suffix}", f"bench-serving-{suffix}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    client.CoreV1Api(production).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=prod_ns)))
    create_team_secrets(env, ns)
    operator = LocalOperator(env, Path(f"/tmp/kakehashi-bench-delivery-{suffix}.log"), extra_env=local_settings(env))
    operator.start()
    deploys: list[float] = []
    rollbacks: list[float] = []
    try:
        digests = train(custom, ns, env)
        for round_ in range(args.rounds):
            name = f"digits-{round_}"
            deploy_s, rollback_s = one_round(custom, production, ns, prod_ns, name, env, digests, args.replicas)
            deploys.append(deploy_s)
            rollbacks.append(rollback_s)
            print(f"round {round_ + 1}: deploy {deploy_s:.1f} s, rollback {rollback_s:.1f} s", flush=True)
    finally:
        operator.stop()
        core.delete_namespace(ns, propagation_policy="Background")
        client.CoreV1Api(production).delete_namespace(prod_ns, propagation_policy="Background")
    result = {
        "deploy_s_median": round(statistics.median(deploys), 2),
        "rollback_s_median": round(statistics.median(rollbacks), 2),
        "replicas": args.replicas,
        "rounds": args.rounds,
        "deploy_s": [round(v, 2) for v in deploys],
        "rollback_s": [round(v, 2) for v in rollbacks],
        "target": {"rollback_s_max": 10},
        "measures": "deploy: ModelService created (model already trained) -> every replica Ready and reporting "
                    "the digest (bake Job + push + apply + pull + start); rollback: spec.rollbackTo set -> every "
                    "ready pod serving the earlier digest",
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def train(custom: client.CustomObjectsApi, ns: str, env: DevEnvironment) -> dict[str, str]:
    """Two digits models (different seeds), trained once; their digests by run name."""
    for name, seed in (("model-a", 1), ("model-b", 2)):
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, "trainingruns", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingRun", "metadata": {"name": name},
            "spec": {"image": env.images["training"], "command": ["python", "/opt/kakehashi/examples/digits/train.py"],
                     "hyperparameters": {"epochs": 10, "seed": seed},
                     "env": [{"name": "AWS_REGION", "value": env.s3.region}],
                     "resources": {"cpu": 1, "memory": "2Gi"},
                     "nodeSelector": node.SELECTOR, "tolerations": [node.TOLERATION]}})
    print("Training two models on the learning cluster's real node...", flush=True)
    digests = {}
    for name in ("model-a", "model-b"):
        status = wait(lambda n=name: (s := custom.get_namespaced_custom_object(
            GROUP, VERSION, ns, "trainingruns", n).get("status") or {}).get("phase") in ("Succeeded", "Failed") and s,
            900, f"TrainingRun {name}")
        if status["phase"] != "Succeeded":
            raise SystemExit(f"training {name} failed: {status.get('message')}")
        digests[name] = status["model"]["digest"]
    return digests


def one_round(custom: client.CustomObjectsApi, production: Any, ns: str, prod_ns: str, name: str,
              env: DevEnvironment, digests: dict[str, str], replicas: int) -> tuple[float, float]:
    spec: dict[str, Any] = {
        "model": {"trainingRun": "model-a"}, "servingImage": env.images["serving"],
        "registry": f"{env.registry}/models/bench", "replicas": replicas,
        "resources": {"cpu": "250m", "memory": "512Mi"},
        "nodeSelector": node.SELECTOR, "tolerations": [node.TOLERATION],
        "delivery": {"mode": "direct", "direct": {"kubeconfigSecret": {"name": "production"}, "namespace": prod_ns}},
    }

    def status() -> dict[str, Any]:
        body = custom.get_namespaced_custom_object(GROUP, VERSION, ns, "modelservices", name)
        return dict(body.get("status") or {})

    def serving(digest: str) -> bool:
        s = status()
        return s.get("phase") == "Ready" and s.get("servedDigests") == [digest] and s.get("readyReplicas") == replicas

    started = time.monotonic()
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, "modelservices", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelService", "metadata": {"name": name}, "spec": spec})
    wait(lambda: serving(digests["model-a"]), 900, f"{name} serving model A")
    deploy_s = time.monotonic() - started
    custom.patch_namespaced_custom_object(GROUP, VERSION, ns, "modelservices", name,
                                          {"spec": {"model": {"trainingRun": "model-b"}}})
    wait(lambda: serving(digests["model-b"]), 900, f"{name} serving model B")
    started = time.monotonic()
    custom.patch_namespaced_custom_object(GROUP, VERSION, ns, "modelservices", name, {"spec": {"rollbackTo": "1"}})
    wait(lambda: serving(digests["model-a"]), 300, f"{name} rolled back")
    rollback_s = time.monotonic() - started
    custom.delete_namespaced_custom_object(GROUP, VERSION, ns, "modelservices", name)
    wait(lambda: not client.AppsV1Api(production).list_namespaced_deployment(
        prod_ns, label_selector=f"{GROUP}/modelservice={name}").items, 120, f"{name} removed from production")
    return deploy_s, rollback_s


if __name__ == "__main__":
    main()
