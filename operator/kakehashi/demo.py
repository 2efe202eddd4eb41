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

import hashlib
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


# Two models, so the demo can show a rollback: the same code, other hyperparameters.
MODELS = {"digits-v1": {"epochs": 30, "seed": 1}, "digits-v2": {"epochs": 40, "seed": 2}}
SERVICE = "digits"


def _held_out_digits(count: int = 10) -> tuple[Any, list[int]]:
    """`count` handwritten digits (8x8, values 0-16) from the end of scikit-learn's bundled
    data set, the part the example holds out from training, with their labels."""
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    picks = np.linspace(len(digits.images) - 300, len(digits.images) - 1, count).astype(int)
    return np.asarray(digits.images[picks], dtype=np.float32), [int(digits.target[i]) for i in picks]


def _main_job(env: DevEnvironment, start_operator: bool) -> None:
    """Train two models on the learning cluster's real node, bake the first into the serving
    image, serve it on the production cluster's real node, predict, roll out the second, roll
    back to the first: the platform's job, through the notebook SDK a data scientist uses."""
    import numpy as np

    from kakehashi.api.modelservice import RESOURCE as MODELSERVICES
    from kakehashi.dev import node
    from kakehashi.dev.operator import (
        LocalOperator,
        create_team_secrets,
        install_crds,
        local_settings,
    )
    from kakehashi.sdk import Connection, ModelService, TrainingRun
    from kakehashi.sdk.training import render_spec

    if not env.real_nodes or "serving" not in env.images:
        _say(f"No real nodes or serving image here ({env.no_real_nodes_reason}): skipping the main job")
        return
    _ensure_namespace(_api(env, "learning"))
    _ensure_namespace(_api(env, "production"))
    install_crds(env)
    create_team_secrets(env, DEMO_NAMESPACE)
    operator = None
    if start_operator:
        log = env.bin_dir.parent / "demo-operator.log"
        operator = LocalOperator(env, log, extra_env=local_settings(env))
        operator.start()
        _say(f"Operator running (log {log}, metrics {operator.metrics_url})")
    connection = Connection.from_environment(env.learning.kubeconfig, namespace=DEMO_NAMESPACE)
    try:
        # A fresh service each time, so every step shows; its finalizer empties production.
        if connection.kube.delete(MODELSERVICES, DEMO_NAMESPACE, SERVICE):
            _wait(lambda: connection.kube.get(MODELSERVICES, DEMO_NAMESPACE, SERVICE) is None,
                  f"the previous ModelService {SERVICE} to go", timeout=120)
        runs = []
        for base, hyper in MODELS.items():
            spec = render_spec(
                # The project's training image: notebook-images/Dockerfile, target jupyter.
                image=env.images["training"], command=["python", "/opt/kakehashi/examples/digits/train.py"],
                hyperparameters={**hyper, "learning_rate": 0.005}, gate=("accuracy", 0.85),
                env={"AWS_REGION": env.s3.region}, cpu=1, memory="2Gi",
                node_selector=node.SELECTOR, tolerations=[node.TOLERATION],
            )
            # A run is the record of what trained and never changes: named by its spec, a demo
            # again with the same code attaches to the finished run, changed code trains anew.
            key = hashlib.sha256(spec.model_dump_json(by_alias=True).encode()).hexdigest()[:6]
            runs.append(TrainingRun(f"{base}-{key}", connection=connection, spec=spec).submit())
        for run in runs:
            started = time.monotonic()
            run.wait(timeout=900, progress=False)
            _say(f"TrainingRun {run.name}: {run.phase} in {time.monotonic() - started:.1f}s on learning-real; "
                 f"metrics {run.metrics}; Promotable={run.promotable}; model {run.model.digest[:19]}…"
                 if run.model else f"TrainingRun {run.name}: {run.phase} without a model")
        first, second = runs
        options = {"registry": f"{env.registry}/models/{SERVICE}", "production_namespace": DEMO_NAMESPACE,
                   "serving_image": env.images["serving"], "cpu": "250m", "memory": "512Mi",
                   "node_selector": node.SELECTOR, "tolerations": [node.TOLERATION],
                   "timeout": 900, "progress": False}
        pixels, labels = _held_out_digits()

        def serve(run: TrainingRun) -> None:
            started = time.monotonic()
            predictor = run.deploy(SERVICE, **options)
            status = ModelService(SERVICE, connection=connection).status
            _say(f"ModelService {SERVICE}: Ready in {time.monotonic() - started:.1f}s (baked and delivered); "
                 f"image {status.image}")
            predicted = [int(p) for p in np.asarray(predictor.predict(pixels)).argmax(axis=1)]
            right = sum(p == label for p, label in zip(predicted, labels, strict=True))
            _say(f"  predictions through the Service for {len(labels)} held-out digits {labels}: {predicted}, "
                 f"{right}/{len(labels)} right, served by model {predictor.metadata()['versions'][0][:19]}…")

        serve(first)
        serve(second)
        started = time.monotonic()
        rolled = ModelService(SERVICE, connection=connection).rollback().wait(timeout=300, progress=False)
        _say(f"Rolled back in {time.monotonic() - started:.1f}s, no bake: served digest "
             f"{second.model.digest[:19] if second.model else '?'}… -> {rolled.status.served_digests[0][:19]}…"
             f" (history {[h.id for h in rolled.status.history]})")
    finally:
        if operator is not None:
            operator.stop()


@click.command("demo")
@click.option("--operator/--no-operator", "start_operator", default=True, show_default=True,
              help="Run the operator as a local process for the demo; --no-operator uses the one "
                   "already running against the learning cluster.")
def demo(start_operator: bool) -> None:
    """Bring up the local clusters and run the platform's main job on them: train two models,
    bake and serve the first, predict, roll out the second, roll back."""
    started = time.monotonic()
    env = stack.up(progress=_say)
    _check_nodes(env)
    _run_job(env)
    _run_deployment(env)
    _check_s3_and_registry(env)
    from kakehashi.sdk import KakehashiError

    try:
        _main_job(env, start_operator)
    except KakehashiError as error:  # a failed run or service: its reason, not a traceback
        raise click.ClickException(str(error)) from None
    click.echo(f"Demo finished in {time.monotonic() - started:.1f}s. Environment left running:"
               " `kakehashi dev status`, `eval \"$(kakehashi dev env)\"`, `kakehashi dev down`.")
