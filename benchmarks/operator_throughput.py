"""Operator throughput: TrainingRun → Job, side by side with the Job controller's Job → Pod.

One command (`python benchmarks/operator_throughput.py`, or `make benchmarks`):
  1. reference: N batch/v1 Jobs applied to the local learning cluster; kube-controller-manager's
     Job controller turns each into a Pod. Latency = apply sent → Pod seen by a watch.
  2. kakehashi: N TrainingRuns applied; the operator (a local process, as its Deployment would
     run it) turns each into a Job. Latency = apply sent → Job seen by a watch.
Both clients are unthrottled: kwokctl runs kube-controller-manager with --disable-qps-limits and
the operator's Python client has no rate limiter, so both get the same (unlimited) client QPS.
The figures go to benchmarks/results/operator_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client, watch

from kakehashi import GROUP, VERSION
from kakehashi.control.client import api_client
from kakehashi.dev import stack
from kakehashi.dev.environment import DevEnvironment
from kakehashi.dev.operator import LocalOperator, install_crds

RESULTS = Path(__file__).parent / "results" / "operator_throughput.json"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class Watcher(threading.Thread):
    """Records when each object of a kind first appears in a namespace (watch ADDED events)."""

    def __init__(self, list_fn: Callable[..., Any], namespace: str, key: Callable[[Any], str | None]) -> None:
        super().__init__(daemon=True)
        self.list_fn, self.namespace, self.key = list_fn, namespace, key
        self.seen: dict[str, float] = {}
        self.ready = threading.Event()
        self._stop_flag = threading.Event()

    def run(self) -> None:
        w = watch.Watch()
        resource_version = self.list_fn(self.namespace).metadata.resource_version
        self.ready.set()
        while not self._stop_flag.is_set():
            for event in w.stream(self.list_fn, self.namespace, resource_version=resource_version, timeout_seconds=5):
                obj = event["object"]
                resource_version = obj.metadata.resource_version
                name = self.key(obj)
                if name and name not in self.seen:
                    self.seen[name] = time.monotonic()
                if self._stop_flag.is_set():
                    break

    def stop(self) -> None:
        self._stop_flag.set()


def apply_all(create: Callable[[str], Any], names: list[str], threads: int) -> dict[str, float]:
    sent: dict[str, float] = {}

    def one(name: str) -> None:
        sent[name] = time.monotonic()
        create(name)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, names))
    return sent


def summarize(sent: dict[str, float], seen: dict[str, float]) -> dict[str, float]:
    latencies = [seen[n] - sent[n] for n in sent if n in seen]
    span = max(seen[n] for n in sent if n in seen) - min(sent.values())
    return {
        "completed": len(latencies),
        "objects_per_s": round(len(latencies) / span, 2),
        "p50_s": round(statistics.median(latencies), 4),
        "p99_s": round(percentile(latencies, 99), 4),
    }


def wait_all(seen: dict[str, float], names: list[str], timeout: float, label: str) -> None:
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        done = sum(1 for n in names if n in seen)
        if done != last:
            print(f"  {label}: {done}/{len(names)}", flush=True)
            last = done
        if done == len(names):
            return
        time.sleep(1)
    raise TimeoutError(f"{label}: only {sum(1 for n in names if n in seen)}/{len(names)} after {timeout}s")


def wait_namespaces_gone(core: client.CoreV1Api, prefix: str, timeout: float = 300) -> None:
    """Deleting 500 runs' children is heavy: never let it overlap the next measurement."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [ns.metadata.name for ns in core.list_namespace().items if ns.metadata.name.startswith(prefix)]
        if not left:
            return
        time.sleep(2)
    raise TimeoutError(f"namespaces {left} still terminating after {timeout}s")


def job_body(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "trainer", "image": "kakehashi/notebook-jupyter:0.1.0"}]}},
        },
    }


def run_body(name: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingRun", "metadata": {"name": name}, "spec": {}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=500, help="objects per side (default 500)")
    parser.add_argument("--threads", type=int, default=16, help="client threads applying objects")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    print("Bringing up the local clusters (kakehashi dev up)...", flush=True)
    stack.up()
    env = DevEnvironment.load()
    install_crds(env)
    api = api_client(env.learning.kubeconfig, pool_size=args.threads * 2)
    core, batch, custom = client.CoreV1Api(api), client.BatchV1Api(api), client.CustomObjectsApi(api)
    suffix = uuid.uuid4().hex[:6]
    leftovers = [ns.metadata.name for ns in core.list_namespace().items if ns.metadata.name.startswith("bench-")]
    if leftovers:
        # An interrupted earlier run: its pods hold the operator's finalizer until an operator
        # releases them, so run one while they go.
        print(f"Cleaning up {leftovers} first...", flush=True)
        for name in leftovers:
            core.delete_namespace(name, propagation_policy="Background")
        cleaner = LocalOperator(env, Path(f"/tmp/kakehashi-bench-cleanup-{suffix}.log"))
        cleaner.start()
        try:
            wait_namespaces_gone(core, "bench-")
        finally:
            cleaner.stop()
    names = [f"b-{i:04d}" for i in range(args.n)]

    ref_ns = f"bench-ref-{suffix}"
    core.create_namespace({"metadata": {"name": ref_ns}})
    print(f"Reference: {args.n} Jobs -> Pods (kube-controller-manager's Job controller)", flush=True)
    pods = Watcher(core.list_namespaced_pod, ref_ns, lambda p: (p.metadata.labels or {}).get("job-name"))
    pods.start()
    pods.ready.wait()
    sent = apply_all(lambda n: batch.create_namespaced_job(ref_ns, job_body(n)), names, args.threads)
    wait_all(pods.seen, names, 600, "pods created")
    pods.stop()
    reference = summarize(sent, pods.seen)
    core.delete_namespace(ref_ns, propagation_policy="Background")
    wait_namespaces_gone(core, ref_ns)

    op_ns = f"bench-op-{suffix}"
    core.create_namespace({"metadata": {"name": op_ns}})
    log = Path(f"/tmp/kakehashi-bench-operator-{suffix}.log")
    operator = LocalOperator(env, log)
    operator.start()
    print(f"Kakehashi: {args.n} TrainingRuns -> Jobs (operator log: {log})", flush=True)
    jobs = Watcher(batch.list_namespaced_job, op_ns, lambda j: (j.metadata.labels or {}).get(f"{GROUP}/trainingrun"))
    jobs.start()
    jobs.ready.wait()
    sent = apply_all(
        lambda n: custom.create_namespaced_custom_object(GROUP, VERSION, op_ns, "trainingruns", run_body(n)),
        names,
        args.threads,
    )
    wait_all(jobs.seen, names, 600, "jobs created")
    jobs.stop()
    ours = summarize(sent, jobs.seen)
    rss = operator.peak_rss_mib()
    print("Cleaning up (the operator releases its pods' finalizers)...", flush=True)
    core.delete_namespace(op_ns, propagation_policy="Background")
    try:
        wait_namespaces_gone(core, op_ns)
    finally:
        operator.stop()

    result = {
        "n": args.n,
        "kakehashi": {
            "runs_per_s": ours["objects_per_s"],
            "p50_s": ours["p50_s"],
            "p99_s": ours["p99_s"],
            "peak_rss_mib": round(rss, 1),
        },
        "reference_job_controller": {
            "objects_per_s": reference["objects_per_s"],
            "p50_s": reference["p50_s"],
            "p99_s": reference["p99_s"],
        },
        "ratios": {
            "throughput_vs_reference": round(ours["objects_per_s"] / reference["objects_per_s"], 3),
            "p99_vs_reference": round(ours["p99_s"] / reference["p99_s"], 3),
        },
        "client_qps": "unlimited on both sides (kwokctl --disable-qps-limits; no limiter in the operator)",
        "client_threads": args.threads,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
