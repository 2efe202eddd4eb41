"""The TrainingRun resource: what a data scientist asks for, and what the operator reports back.

These pydantic models are the single source of truth: `manifests/crds/trainingruns.yaml` is
generated from them (`kakehashi crds`), and a test fails if the committed CRD drifts. Field
descriptions become the CRD's `kubectl explain` text; `json_schema_extra` carries what only the
API server can enforce (CEL rules, list types, defaults it applies).
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kakehashi import GROUP, VERSION
from kakehashi.api.objects import KubeObject
from kakehashi.control.conditions import Condition
from kakehashi.control.resources import Resource
from kakehashi.modelformat import ModelArtifact

KIND: Final = "TrainingRun"
PLURAL: Final = "trainingruns"
SINGULAR: Final = "trainingrun"
SHORT_NAMES: Final = ["tr"]
RESOURCE: Final = Resource(GROUP, VERSION, PLURAL, KIND)
DEFAULT_IMAGE: Final = "kakehashi/notebook-jupyter:0.1.0"

Scalar = str | int | float | bool


class _Model(BaseModel):
    # Unknown fields are an error in the operator exactly as the API server prunes them: a
    # typo in a spec must never be silently ignored.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class GitSource(_Model):
    """A git repository and revision holding the training code."""

    url: str = Field(
        description="Repository to clone (https:// or git@).",
        pattern=r"^(https?://|git@|ssh://|file://).+",
        max_length=2048,
    )
    revision: str = Field(
        default="HEAD",
        description="Branch, tag or commit to check out; the resolved commit is recorded in status.source.commit.",
        max_length=255,
    )
    path: str = Field(
        default="",
        description="Working directory inside the repository, relative to its root.",
        max_length=1024,
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "!self.startsWith('/') && !self.contains('..')", "message": "must be a relative path inside the repository"}
            ]
        },
    )


class Source(_Model):
    """Where the training code comes from."""

    git: GitSource | None = Field(default=None, description="Clone this repository before training.")


class DataSpec(_Model):
    uri: str = Field(
        description="Where the training data lives.",
        pattern=r"^(s3|file|https?)://.+",
        max_length=2048,
    )


class OutputSpec(_Model):
    uri: str | None = Field(
        default=None,
        description="Where the model goes (s3://bucket/prefix/). Default: s3://<model bucket>/<namespace>/<name>/<uid>/.",
        pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$",
        max_length=2048,
    )


class Replicas(_Model):
    """How many processes train. One in total gives a batch/v1 Job; more gives a Kubeflow TFJob."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.chief + self.worker + self.ps + self.evaluator >= 1",
                    "message": "replicas: at least one chief or worker is needed",
                },
                {
                    "rule": "self.chief + self.worker >= 1",
                    "message": "replicas: parameter servers and evaluators need a chief or a worker to train",
                },
                {
                    "rule": "self.ps == 0 || self.worker >= 1",
                    "message": "replicas.ps needs replicas.worker >= 1 (parameter-server training)",
                },
            ]
        },
    )

    chief: int = Field(default=0, ge=0, le=1, description="The coordinating replica (0 or 1).")
    worker: int = Field(default=1, ge=0, le=64, description="Training replicas.")
    ps: int = Field(default=0, ge=0, le=16, description="Parameter servers.")
    evaluator: int = Field(default=0, ge=0, le=1, description="A side-car evaluator (0 or 1).")

    @property
    def total(self) -> int:
        return self.chief + self.worker + self.ps + self.evaluator

    @property
    def distributed(self) -> bool:
        return self.total > 1


# A Kubernetes quantity: YAML gives 2 (int) or "500m" (str), as for core resources.
Quantity = int | Annotated[
    str, Field(pattern=r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$", max_length=64)
]


class Resources(_Model):
    """What one replica needs; requests equal limits, so a run is never evicted for bursting."""

    cpu: Quantity | None = Field(default=None, description="CPU, e.g. \"2\" or \"500m\".")
    memory: Quantity | None = Field(default=None, description="Memory, e.g. \"4Gi\".")
    gpu: int = Field(default=0, ge=0, le=16, description="NVIDIA GPUs (nvidia.com/gpu) per replica.")


class Toleration(_Model):
    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self.operator != 'Exists' || !has(self.value)", "message": "tolerations: operator Exists takes no value"},
                {"rule": "has(self.key) || self.operator == 'Exists'", "message": "tolerations: an empty key needs operator Exists"},
            ]
        },
    )

    key: str | None = Field(default=None, max_length=316)
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = Field(default=None, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, alias="tolerationSeconds")


class CleanPodPolicy(StrEnum):
    NONE = "None"
    RUNNING = "Running"
    ALL = "All"


class RunPolicy(_Model):
    backoff_limit: int = Field(
        default=0, ge=0, le=20, alias="backoffLimit",
        description="Retries of a failed replica before the run fails.",
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, alias="activeDeadlineSeconds",
        description="Fail the run (DeadlineExceeded) if it trains longer than this.",
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None, ge=0, alias="ttlSecondsAfterFinished",
        description="Delete the Job or TFJob this long after it finished (the TrainingRun and its status stay).",
    )
    clean_pod_policy: CleanPodPolicy = Field(
        default=CleanPodPolicy.NONE, alias="cleanPodPolicy",
        description="Distributed runs: which pods to delete when the run ends.",
    )


class Gate(_Model):
    """A quality bar: a run that finishes on the wrong side of it is Succeeded but not Promotable."""

    metric: str = Field(description="A key of the run's metrics.json, e.g. \"accuracy\".", min_length=1, max_length=128)
    threshold: float = Field(description="The bar.")
    direction: Literal["higher", "lower"] = Field(
        default="higher", description="higher: metric >= threshold passes; lower: metric <= threshold passes."
    )


class EnvVar(_Model):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$", max_length=256)
    value: str = Field(default="", max_length=32768)


class Notification(_Model):
    """Where to announce that a run ended: a Slack-compatible incoming webhook."""

    webhook_secret: str = Field(
        alias="webhookSecret", min_length=1, max_length=253,
        description="A Secret in the run's namespace holding the webhook URL.",
    )
    key: str = Field(default="url", description="The Secret's key holding the URL.", max_length=253)


# Kubernetes' own rules for label and annotation keys (a qualified name with an optional DNS
# subdomain prefix) and label values, so the API server refuses a bad one at `kubectl apply`
# instead of the Job being refused later.
QUALIFIED_NAME: Final = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE: Final = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]


def _key_rule(what: str) -> dict[str, Any]:
    return {
        "x-kubernetes-validations": [
            {
                "rule": f"self.all(k, size(k) <= 317 && k.matches(r'{QUALIFIED_NAME}'))",
                "message": f"{what} keys must be qualified names: an optional DNS prefix and '/', then "
                "at most 63 characters of letters, digits, '-', '_' or '.', starting and ending alphanumeric",
            }
        ]
    }


class PodMetadata(_Model):
    """Extra labels and annotations for the training pods (sidecar opt-outs, cost labels...)."""

    labels: dict[str, LabelValue] = Field(default_factory=dict, max_length=64, json_schema_extra=_key_rule("podMetadata.labels"))
    annotations: dict[str, str] = Field(
        default_factory=dict, max_length=64, json_schema_extra=_key_rule("podMetadata.annotations")
    )

    @field_validator("labels", "annotations")
    @classmethod
    def _qualified_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not re.match(QUALIFIED_NAME, key) or len(key) > 317:
                raise ValueError(f"key {key!r} is not a qualified name")
        return value


class TrainingRunSpec(_Model):
    """A request to train one model. Immutable once created: a run is a record of what trained."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self == oldSelf",
                    "message": "spec is immutable once the TrainingRun exists: a run is the record of what was trained; create a new TrainingRun instead",
                },
            ]
        },
    )

    image: str = Field(
        default=DEFAULT_IMAGE, min_length=1, max_length=1024,
        description="The training container image; default: the platform's notebook image, so notebook code runs unchanged.",
    )
    command: list[str] = Field(default_factory=list, description="Entrypoint; default: the image's.", max_length=64)
    args: list[str] = Field(
        default_factory=list, max_length=256,
        description="Arguments; the hyperparameters are appended as --key=value.",
    )
    env: list[EnvVar] = Field(
        default_factory=list, max_length=128,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    source: Source | None = None
    # The values stay untyped in the CRD so YAML's 5, 0.01, true and "adam" all work. That hides
    # the map from CEL rules of its own, so flatness is checked by the operator (Failed,
    # InvalidSpec); the spec's `self == oldSelf` still compares it, so edits are refused.
    hyperparameters: dict[str, Scalar] = Field(
        default_factory=dict, max_length=256,
        description="A flat map handed to the container as JSON (KAKEHASHI_HYPERPARAMETERS) and as --key=value args.",
    )
    data: DataSpec | None = None
    output: OutputSpec | None = None
    replicas: Replicas = Field(default_factory=Replicas)
    resources: Resources | None = None
    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector", max_length=64)
    tolerations: list[Toleration] = Field(default_factory=list, max_length=64)
    run_policy: RunPolicy = Field(default_factory=RunPolicy, alias="runPolicy")
    pod_metadata: PodMetadata | None = Field(default=None, alias="podMetadata")
    gate: Gate | None = None
    notification: Notification | None = None


class Phase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def terminal(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED)


class ConditionType(StrEnum):
    CREATED = "Created"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    PROMOTABLE = "Promotable"
    # Whether model.json was read into status.model; False with ModelReadRetrying while S3
    # answers with temporary errors (the run stays Running until it has a definite answer).
    MODEL_RECORDED = "ModelRecorded"
    # Present only if a spec changed after its Job was created (a CRD installed without the
    # immutability rule, or an edit made through a storage migration).
    SPEC_CHANGED = "SpecChanged"


class PhaseTransition(_Model):
    phase: Phase
    time: str
    reason: str = ""


class JobRef(_Model):
    api_version: str = Field(alias="apiVersion")
    kind: str
    name: str
    uid: str | None = None


class SourceStatus(_Model):
    commit: str | None = Field(default=None, description="The commit the init container checked out.")


class TrainingRunStatus(_Model):
    # kopf keeps its own bookkeeping under status.kopf when it cannot use annotations.
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    phase: Phase | None = None
    reason: str | None = Field(default=None, description="Why the run is in its phase (e.g. OOMKilled).")
    message: str | None = None
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = Field(default=None, alias="observedGeneration")
    start_time: str | None = Field(default=None, alias="startTime")
    completion_time: str | None = Field(default=None, alias="completionTime")
    job_ref: JobRef | None = Field(default=None, alias="jobRef")
    phase_history: list[PhaseTransition] = Field(default_factory=list, alias="phaseHistory")
    output_uri: str | None = Field(default=None, alias="outputUri")
    source: SourceStatus | None = None
    model: ModelArtifact | None = None
    notified_at: str | None = Field(default=None, alias="notifiedAt")


class TrainingRun(KubeObject):
    kind: Literal["TrainingRun"] = "TrainingRun"
    spec: TrainingRunSpec
    status: TrainingRunStatus = Field(default_factory=TrainingRunStatus)
