"""`kakehashi demo`: the platform's main job on the local clusters, end to end.

It brings the environment up, proves each part works (a Job on the learning cluster, a
Deployment on the production cluster, both on kwok's nodes; an object through S3, a manifest
through the registry), then trains a model the platform's way: a TrainingRun reconciled by the
operator into a Job that runs on the learning cluster's real node, in the project's training
image, the digits example with real TensorFlow writing the model to the real MinIO, and the
run's status reporting the model, its lineage and whether it passed its gate. Each later
capability adds its step here.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import click

from kakehashi.control.client import api_client
from kakehashi.dev import stack
from kakehashi.dev.environment import DevEnvironment
from kakehashi.oci import OCI_CONFIG, OCI_MANIFEST, Registry

DEMO_NAMESPACE = "kakehashi-demo"


def _say(message: str) -> None:
    click.echo(f"[{time.strftime('%H:%M:%S')}] {message}", err=True)


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 120) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.2)
    raise click.ClickException(f"timed out after {timeout:.0f}s waiting for {what}")


def _api(env: DevEnvironment, cluster: str) -> Any:
    return api_client(env.cluster(cluster).kubeconfig)


def _ensure_namespace(api: Any) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        client.CoreV1Api(api).create_namespace({"metadata": {"name": DEMO_NAMESPACE}})
    except ApiException as exc:
        if exc.status != 409:
            raise


def _check_nodes(env: DevEnvironment) -> None:
    from kubernetes import client

    for name in ("learning", "production"):
        api = _api(env, name)
        nodes = client.CoreV1Api(api).list_node().items
        ready = sum(any(c.type == "Ready" and c.status == "True" for c in n.status.conditions)
                    for n in nodes)
        version = client.VersionApi(api).get_code().git_version
        _say(f"Cluster {name}: Kubernetes {version}, {ready}/{len(nodes)} nodes Ready")
        if ready != len(nodes):
            raise click.ClickException(f"cluster {name} has nodes that are not Ready")


def _run_job(env: DevEnvironment) -> None:
    from kubernetes import client

    api = _api(env, "learning")
    _ensure_namespace(api)
    batch = client.BatchV1Api(api)
    name = f"smoke-{uuid.uuid4().hex[:6]}"
    batch.create_namespaced_job(DEMO_NAMESPACE, {
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "kakehashi"}},
        "spec": {"ttlSecondsAfterFinished": 60, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox", "command": ["true"]}]}}},
    })

    def complete() -> bool:
        status = batch.read_namespaced_job_status(name, DEMO_NAMESPACE).status
        return bool(status.succeeded)

    _say(f"Learning cluster: Job {name} completed in {_wait(complete, 'the Job'):.1f}s")


def _run_deployment(env: DevEnvironment) -> None:
    from kubernetes import client

    api = _api(env, "production")
    _ensure_namespace(api)
    apps = client.AppsV1Api(api)
    labels = {"app.kubernetes.io/name": "demo-web", "app.kubernetes.io/part-of": "kakehashi"}
    body = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "demo-web", "labels": labels},
        "spec": {"replicas": 2, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": "web", "image": "nginx"}]}}},
    }
    from kubernetes.dynamic import DynamicClient

    deployments = DynamicClient(api).resources.get(api_version="apps/v1", kind="Deployment")
    deployments.server_side_apply(body=body, namespace=DEMO_NAMESPACE,
                                  field_manager="kakehashi-demo", force_conflicts=True)

    def available() -> bool:
        status = apps.read_namespaced_deployment_status("demo-web", DEMO_NAMESPACE).status
        return bool(status.available_replicas == 2)

    took = _wait(available, "the Deployment")
    _say(f"Production cluster: Deployment demo-web Available (2/2) in {took:.1f}s")


def _check_s3_and_registry(env: DevEnvironment) -> None:
    import json

    import boto3

    s3 = boto3.client("s3", endpoint_url=env.s3.endpoint, aws_access_key_id=env.s3.access_key,
                      aws_secret_access_key=env.s3.secret_key, region_name=env.s3.region)
    key = f"demo/{uuid.uuid4().hex[:8]}.txt"
    s3.put_object(Bucket=env.s3.model_bucket, Key=key, Body=b"hello")
    assert s3.get_object(Bucket=env.s3.model_bucket, Key=key)["Body"].read() == b"hello"
    _say(f"S3 {env.s3.endpoint}: wrote and read s3://{env.s3.model_bucket}/{key}")
    registry = Registry(env.registry, insecure=True)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [],
                "config": {"mediaType": OCI_CONFIG, "size": len(config),
                           "digest": registry.push_blob("demo/empty", config)}}
    digest = registry.push_manifest("demo/empty", "latest", manifest)
    _say(f"Registry {env.registry}: pushed demo/empty@{digest[:19]}…")


def _train(env: DevEnvironment) -> None:
    import json

    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from kakehashi import GROUP, VERSION
    from kakehashi.dev import node
    from kakehashi.dev.operator import LocalOperator, install_crds

    if not env.real_nodes:
        _say(f"No real node here ({env.no_real_nodes_reason}): skipping the training run")
        return
    api = _api(env, "learning")
    _ensure_namespace(api)
    install_crds(env)
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    try:
        core.create_namespaced_secret(DEMO_NAMESPACE, {
            "metadata": {"name": "kakehashi-s3"},
            "stringData": {"AWS_ACCESS_KEY_ID": env.s3.access_key, "AWS_SECRET_ACCESS_KEY": env.s3.secret_key},
        })
    except ApiException as exc:
        if exc.status != 409:
            raise
    log = env.bin_dir.parent / "demo-operator.log"
    operator = LocalOperator(env, log)
    operator.start()
    _say(f"Operator running (log {log}, metrics {operator.metrics_url})")
    try:
        name = f"digits-{uuid.uuid4().hex[:6]}"
        custom.create_namespaced_custom_object(GROUP, VERSION, DEMO_NAMESPACE, "trainingruns", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingRun", "metadata": {"name": name},
            "spec": {
                # The project's training image, built from notebook-images/jupyter/Dockerfile.
                "image": env.images["training"],
                "command": ["python", "/opt/kakehashi/examples/digits/train.py"],
                "hyperparameters": {"epochs": 30, "learning_rate": 0.005},
                "gate": {"metric": "accuracy", "threshold": 0.85},
                "env": [{"name": "AWS_REGION", "value": env.s3.region}],
                "resources": {"cpu": 1, "memory": "2Gi"},
                "nodeSelector": node.SELECTOR,
                "tolerations": [node.TOLERATION],
            },
        })

        def run_status() -> dict[str, Any]:
            run = custom.get_namespaced_custom_object(GROUP, VERSION, DEMO_NAMESPACE, "trainingruns", name)
            return dict(run.get("status") or {})

        took = _wait(lambda: run_status().get("phase") == "Running", f"TrainingRun {name} to run", timeout=600)
        _say(f"TrainingRun {name}: Running on the real node in {took:.1f}s (image pulled); training (real TensorFlow)...")
        _wait(lambda: run_status().get("phase") in ("Succeeded", "Failed"), f"TrainingRun {name} to finish",
              timeout=600)
        status = run_status()
        if status["phase"] != "Succeeded":
            raise click.ClickException(f"TrainingRun {name} {status['phase']}: {status.get('message')}")
        model = status["model"]
        promotable = next(c for c in status["conditions"] if c["type"] == "Promotable")
        _say(f"TrainingRun {name}: Succeeded; model {model['uri']} {model['digest'][:19]}…")
        _say(f"  metrics {json.dumps(model['metrics'])}; Promotable={promotable['status']} ({promotable['message']})")
    finally:
        operator.stop()


@click.command("demo")
def demo() -> None:
    """Bring up the local clusters and run the platform's main job on them."""
    started = time.monotonic()
    env = stack.up(progress=_say)
    _check_nodes(env)
    _run_job(env)
    _run_deployment(env)
    _check_s3_and_registry(env)
    _train(env)
    click.echo(f"Demo finished in {time.monotonic() - started:.1f}s. Environment left running:"
               " `kakehashi dev status`, `eval \"$(kakehashi dev env)\"`, `kakehashi dev down`.")
