"""Pure renderers: a TrainingRun in, the Job or TFJob that runs it out. No API calls here.

Names are deterministic (the run's own name), so a retried or restarted reconcile finds the
child it created instead of making a second one.
"""

from __future__ import annotations

import json
from typing import Any, Final

from kubeflow.training.models import (
    KubeflowOrgV1ReplicaSpec,
    KubeflowOrgV1RunPolicy,
    KubeflowOrgV1TFJob,
    KubeflowOrgV1TFJobSpec,
)
from kubernetes.client import ApiClient

from kakehashi import GROUP, VERSION, contract
from kakehashi.api.trainingrun import KIND, Scalar, TrainingRun
from kakehashi.control.resources import JOBS, TFJOBS, Resource
from kakehashi.podenv import s3_env
from kakehashi.settings import OperatorSettings

LABEL_RUN: Final = f"{GROUP}/trainingrun"
ANNOTATION_GENERATION: Final = f"{GROUP}/spec-generation"
# Held on every training pod until the operator has read why it ended: a Job's TTL or a TFJob's
# cleanPodPolicy must never delete the only copy of a failure reason before the status has it.
POD_FINALIZER: Final = f"{GROUP}/status-capture"
TRAINER_CONTAINER: Final = "trainer"
# The training-operator finds the container to give TF_CONFIG and ports by this name.
TFJOB_CONTAINER: Final = "tensorflow"
CLONE_CONTAINER: Final = "clone-source"
WORKSPACE: Final = "/workspace"
SOURCE_DIR: Final = f"{WORKSPACE}/src"
COMMIT_FILE: Final = f"{WORKSPACE}/commit"
GPU_RESOURCE: Final = "nvidia.com/gpu"
GPU_NODE_LABEL: Final = "nvidia.com/gpu.present"

# The clone writes the commit to the termination log as well: the operator reads it from the
# pod's status, so the resolved commit is recorded even if the training code never runs.
CLONE_SCRIPT: Final = """set -eu
git clone --quiet --no-checkout "$KAKEHASHI_SOURCE_GIT_URL" "$KAKEHASHI_WORKSPACE"
cd "$KAKEHASHI_WORKSPACE"
git -c advice.detachedHead=false checkout --quiet "$KAKEHASHI_SOURCE_GIT_REVISION"
git rev-parse HEAD > "$KAKEHASHI_SOURCE_COMMIT_FILE"
cp "$KAKEHASHI_SOURCE_COMMIT_FILE" "${TERMINATION_LOG:-/dev/termination-log}"
"""

_serializer = ApiClient()


def child_name(run: TrainingRun) -> str:
    return run.name


def child_resource(run: TrainingRun) -> Resource:
    """The API resource of the child that runs this TrainingRun: a Job, or a TFJob."""
    return TFJOBS if run.spec.replicas.distributed else JOBS


def child_kind(run: TrainingRun) -> tuple[str, str]:
    """(apiVersion, kind) of the child that runs this TrainingRun."""
    if run.spec.replicas.distributed:
        return "kubeflow.org/v1", "TFJob"
    return "batch/v1", "Job"


def labels(run: TrainingRun) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "trainingrun",
        "app.kubernetes.io/instance": run.name,
        "app.kubernetes.io/component": "training",
        "app.kubernetes.io/part-of": "kakehashi",
        "app.kubernetes.io/managed-by": "kakehashi-operator",
        LABEL_RUN: run.name,
    }


def owner_reference(run: TrainingRun) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": run.name,
        "uid": run.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def output_uri(run: TrainingRun, settings: OperatorSettings) -> str:
    if run.spec.output and run.spec.output.uri:
        uri = run.spec.output.uri
        return uri if uri.endswith("/") else uri + "/"
    return f"s3://{settings.model_bucket}/{run.namespace}/{run.name}/{run.uid}/"


def _arg_value(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def hyperparameter_args(hyperparameters: dict[str, Scalar]) -> list[str]:
    return [f"--{key}={_arg_value(value)}" for key, value in sorted(hyperparameters.items())]


def container_env(run: TrainingRun, settings: OperatorSettings) -> list[dict[str, Any]]:
    spec = run.spec
    env: list[dict[str, Any]] = [
        {"name": contract.ENV_RUN_ID, "value": run.uid},
        {"name": contract.ENV_RUN_NAME, "value": run.name},
        {"name": contract.ENV_NAMESPACE, "value": run.namespace},
        {"name": contract.ENV_HYPERPARAMETERS, "value": json.dumps(spec.hyperparameters, sort_keys=True)},
        {"name": contract.ENV_OUTPUT_URI, "value": output_uri(run, settings)},
    ]
    if spec.data:
        env.append({"name": contract.ENV_DATA_URI, "value": spec.data.uri})
    if spec.source and spec.source.git:
        env += [
            {"name": contract.ENV_SOURCE_GIT_URL, "value": spec.source.git.url},
            {"name": contract.ENV_SOURCE_GIT_REVISION, "value": spec.source.git.revision},
            {"name": contract.ENV_SOURCE_COMMIT_FILE, "value": COMMIT_FILE},
            {"name": contract.ENV_WORKSPACE, "value": SOURCE_DIR},
        ]
    env += s3_env(settings)
    # The user's own variables come last so they can override the platform's (e.g. an endpoint).
    env += [{"name": e.name, "value": e.value} for e in spec.env]
    return env


def _resources(run: TrainingRun) -> dict[str, Any]:
    res = run.spec.resources
    if res is None:
        return {}
    amounts: dict[str, str] = {}
    if res.cpu is not None:
        amounts["cpu"] = str(res.cpu)
    if res.memory is not None:
        amounts["memory"] = str(res.memory)
    if res.gpu:
        amounts[GPU_RESOURCE] = str(res.gpu)
    return {"requests": dict(amounts), "limits": dict(amounts)} if amounts else {}


def pod_template(
    run: TrainingRun, settings: OperatorSettings, *, container_name: str, restart_policy: str = "Never"
) -> dict[str, Any]:
    spec = run.spec
    pod_labels = {**(spec.pod_metadata.labels if spec.pod_metadata else {}), **labels(run)}
    annotations = dict(spec.pod_metadata.annotations) if spec.pod_metadata else {}
    env = container_env(run, settings)
    container: dict[str, Any] = {
        "name": container_name,
        "image": spec.image,
        "args": [*spec.args, *hyperparameter_args(spec.hyperparameters)],
        "env": env,
        # The kubelet copies the log's tail into the termination message when the container
        # fails without writing one: the failure reason survives the pod's deletion this way.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.command:
        container["command"] = list(spec.command)
    resources = _resources(run)
    if resources:
        container["resources"] = resources
    pod_spec: dict[str, Any] = {"restartPolicy": restart_policy, "containers": [container]}
    if spec.source and spec.source.git:
        workdir = f"{SOURCE_DIR}/{spec.source.git.path}".rstrip("/")
        container["workingDir"] = workdir
        container["volumeMounts"] = [{"name": "workspace", "mountPath": WORKSPACE}]
        pod_spec["initContainers"] = [
            {
                "name": CLONE_CONTAINER,
                "image": spec.image,
                "command": ["sh", "-c", CLONE_SCRIPT],
                "env": [e for e in env if e["name"].startswith("KAKEHASHI_SOURCE") or e["name"] == contract.ENV_WORKSPACE],
                "volumeMounts": [{"name": "workspace", "mountPath": WORKSPACE}],
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }
        ]
        pod_spec["volumes"] = [{"name": "workspace", "emptyDir": {}}]
    node_selector = dict(spec.node_selector)
    tolerations = [t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations]
    if spec.resources and spec.resources.gpu:
        node_selector.setdefault(GPU_NODE_LABEL, "true")
        gpu_toleration = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
        if gpu_toleration not in tolerations:
            tolerations.append(gpu_toleration)
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if tolerations:
        pod_spec["tolerations"] = tolerations
    metadata: dict[str, Any] = {"labels": pod_labels, "finalizers": [POD_FINALIZER]}
    if annotations:
        metadata["annotations"] = annotations
    return {"metadata": metadata, "spec": pod_spec}


def _metadata(run: TrainingRun) -> dict[str, Any]:
    return {
        "name": child_name(run),
        "namespace": run.namespace,
        "labels": labels(run),
        "annotations": {ANNOTATION_GENERATION: str(run.generation)},
        "ownerReferences": [owner_reference(run)],
    }


def render_job(run: TrainingRun, settings: OperatorSettings) -> dict[str, Any]:
    policy = run.spec.run_policy
    spec: dict[str, Any] = {
        "backoffLimit": policy.backoff_limit,
        "completions": 1,
        "parallelism": 1,
        "template": pod_template(run, settings, container_name=TRAINER_CONTAINER),
    }
    if policy.active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = policy.active_deadline_seconds
    if policy.ttl_seconds_after_finished is not None:
        spec["ttlSecondsAfterFinished"] = policy.ttl_seconds_after_finished
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": _metadata(run), "spec": spec}


def render_tfjob(run: TrainingRun, settings: OperatorSettings) -> dict[str, Any]:
    policy = run.spec.run_policy
    # ExitCode retries only retryable failures (exit codes 128-255: signals, preemption);
    # with no retries allowed, Never makes the first failed replica fail the TFJob at once.
    restart_policy = "ExitCode" if policy.backoff_limit > 0 else "Never"
    template = pod_template(run, settings, container_name=TFJOB_CONTAINER, restart_policy=restart_policy)
    replicas = run.spec.replicas
    counts = {"Chief": replicas.chief, "Worker": replicas.worker, "PS": replicas.ps, "Evaluator": replicas.evaluator}
    tfjob = KubeflowOrgV1TFJob(
        api_version="kubeflow.org/v1",
        kind="TFJob",
        metadata=_metadata(run),
        spec=KubeflowOrgV1TFJobSpec(
            run_policy=KubeflowOrgV1RunPolicy(
                backoff_limit=policy.backoff_limit,
                active_deadline_seconds=policy.active_deadline_seconds,
                ttl_seconds_after_finished=policy.ttl_seconds_after_finished,
                clean_pod_policy=policy.clean_pod_policy.value,
            ),
            tf_replica_specs={
                kind: KubeflowOrgV1ReplicaSpec(replicas=count, restart_policy=restart_policy, template=template)
                for kind, count in counts.items()
                if count
            },
        ),
    )
    rendered: dict[str, Any] = _serializer.sanitize_for_serialization(tfjob)
    return rendered


def render_child(run: TrainingRun, settings: OperatorSettings) -> dict[str, Any]:
    if run.spec.replicas.distributed:
        return render_tfjob(run, settings)
    return render_job(run, settings)
