"""Pure renderer of the bake Job: one model, one base image, one pushed image.

Baking runs as a Job on the learning cluster, not in the operator's process: a 5 GB model must
not exhaust the operator, and only the bake pod holds the registry and S3 credentials. The Job
writes what it pushed (image digest, model digest) as JSON to its termination message, which
the operator reads back from the pod's status: no shared storage, no extra API.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

from kakehashi import GROUP
from kakehashi.api.modelservice import ModelService
from kakehashi.podenv import s3_env
from kakehashi.serving.render import LABEL_SERVICE
from kakehashi.serving.status import ResolvedModel
from kakehashi.settings import OperatorSettings

LABEL_COMPONENT: Final = "app.kubernetes.io/component"
ANNOTATION_MODEL_DIGEST: Final = f"{GROUP}/model-digest"
ANNOTATION_BASE_IMAGE: Final = f"{GROUP}/base-image"
CONTAINER: Final = "bake"
TERMINATION_LOG: Final = "/dev/termination-log"


class BakeOutcome(BaseModel):
    """What a finished bake pod reports in its termination message."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    image: str = Field(description="repository@sha256:... of the pushed image")
    model_digest: str = Field(alias="modelDigest")
    bytes_uploaded: int = Field(default=0, alias="bytesUploaded")


def bake_tag(ms: ModelService, model_digest: str) -> str:
    """The tag the baked image is pushed under: the service and the model it carries."""
    return f"{ms.name}-{model_digest.removeprefix('sha256:')[:16]}"


def job_name(ms: ModelService, model_digest: str, base_image: str) -> str:
    # Deterministic, so a restarted operator finds the Job it created instead of baking twice;
    # at most 50 + 6 + 6 characters (the job-name pod label must stay a 63-character value).
    key = hashlib.sha256(f"{model_digest}\n{base_image}".encode()).hexdigest()[:6]
    return f"{ms.name}-bake-{key}"


def render_job(ms: ModelService, model: ResolvedModel, settings: OperatorSettings) -> dict[str, Any]:
    model_digest = model.digest
    labels = {
        "app.kubernetes.io/name": "kakehashi-bake",
        "app.kubernetes.io/instance": ms.name,
        LABEL_COMPONENT: "bake",
        "app.kubernetes.io/part-of": "kakehashi",
        "app.kubernetes.io/managed-by": "kakehashi-operator",
        LABEL_SERVICE: ms.name,
    }
    env = [
        *s3_env(settings),
        *([{"name": "KAKEHASHI_REGISTRY_INSECURE", "value": "true"}] if settings.registry_insecure else []),
        *(
            {"name": name, "valueFrom": {"secretKeyRef": {"name": settings.registry_secret, "key": key, "optional": True}}}
            for name, key in (("KAKEHASHI_REGISTRY_USERNAME", "username"), ("KAKEHASHI_REGISTRY_PASSWORD", "password"))
        ),
    ]
    args = [
        model.uri,
        "--base", ms.spec.serving_image,
        "--repository", ms.spec.registry,
        "--service", ms.name,
        "--tag", bake_tag(ms, model_digest),
        "--expected-digest", model_digest,
        "--result", TERMINATION_LOG,
    ]
    if model.training_run:
        args += ["--training-run", f"{ms.namespace}/{model.training_run}"]
    if model.metrics:
        args += ["--metrics", json.dumps(dict(model.metrics), sort_keys=True)]
    if model.source:
        args += ["--source", model.source]
    if model.revision:
        args += ["--revision", model.revision]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": settings.bake_image,
        "command": ["kakehashi", "bake"],
        "args": args,
        "env": env,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    # `kakehashi bake` exits 2 when the model cannot be baked (a retry cannot help) and 3 when
    # the registry failed (a retry resumes where the last one stopped: nothing is pushed twice).
    if settings.bake_node_selector:
        pod_spec["nodeSelector"] = dict(settings.bake_node_selector)
        pod_spec["tolerations"] = [
            {"key": key, "operator": "Exists", "effect": "NoSchedule"} for key in sorted(settings.bake_node_selector)
        ]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(ms, model_digest, ms.spec.serving_image),
            "namespace": ms.namespace,
            "labels": labels,
            "annotations": {ANNOTATION_MODEL_DIGEST: model_digest, ANNOTATION_BASE_IMAGE: ms.spec.serving_image},
            "ownerReferences": [{
                "apiVersion": ms.api_version, "kind": ms.kind, "name": ms.name, "uid": ms.uid,
                "controller": True, "blockOwnerDeletion": True,
            }],
        },
        "spec": {
            "backoffLimit": 3,
            "podFailurePolicy": {"rules": [
                {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [2]}},
            ]},
            "activeDeadlineSeconds": 3600,
            "ttlSecondsAfterFinished": 3600,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def outcome(pods: list[dict[str, Any]]) -> BakeOutcome | None:
    """The result a succeeded bake pod wrote to its termination message, if any."""
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (status.get("state") or {}).get("terminated") or {}
            if status.get("name") == CONTAINER and terminated.get("exitCode") == 0 and terminated.get("message"):
                try:
                    return BakeOutcome.model_validate_json(terminated["message"])
                except ValueError:
                    continue
    return None
