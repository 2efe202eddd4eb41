"""The operator's settings: flags of `kakehashi operator run`, or KAKEHASHI_* variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KAKEHASHI_", extra="ignore", populate_by_name=True)

    model_bucket: str = Field(default="kakehashi-models", description="Default bucket for models.")
    s3_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices("s3_endpoint", "KAKEHASHI_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3"),
        description="S3 endpoint handed to training containers (unset on AWS; AWS_ENDPOINT_URL_S3 also works).",
    )
    s3_secret: str = Field(
        default="kakehashi-s3",
        description="Secret in the run's namespace with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
        "for training containers (optional: IRSA needs none).",
    )
    resync_seconds: float = Field(
        default=30.0, gt=0, description="How often an unfinished object is recomputed even without events."
    )
    webhook_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Networks (CIDR) or host names notification webhooks may reach although not public; "
        "comma-separated in the environment.",
    )
    webhook_allow_http: bool = Field(
        default=False, description="Allow plain-http notification webhooks (https only by default)."
    )
    bake_image: str = Field(
        default="kakehashi/notebook-jupyter:0.1.0",
        description="Image of the bake Jobs (needs kakehashi[train]: TensorFlow compiles the model).",
    )
    bake_node_selector: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="Node labels bake pods must run on (k=v,k2=v2); their taints are tolerated.",
    )
    registry_secret: str = Field(
        default="kakehashi-registry",
        description="Secret in the service's namespace with username/password for the registry "
        "(optional: anonymous, or ECR through the pod's IAM role).",
    )
    registry_insecure: bool = Field(
        default=False, description="Bake Jobs talk plain HTTP to registries (a local dev registry only)."
    )
    gitops_api_url: str = Field(
        default="https://api.github.com", description="GitHub REST API base URL for delivery.mode gitops."
    )
    gitops_clone_url: str = Field(
        default="https://github.com/{repository}.git",
        description="Clone URL of a GitOps repository; {repository} is spec.delivery.gitops.repository (owner/name).",
    )
    gitops_token_secret: str = Field(
        default="kakehashi-gitops",
        description="Secret in the service's namespace whose `token` key may push branches and open pull "
        "requests in the GitOps repository (never logged, never in an Event or status).",
    )
    gitops_checkout: Path | None = Field(
        default=None, description="Where the operator keeps its clones of GitOps repositories "
        "(default: $KAKEHASHI_CACHE_DIR/gitops, else ~/.cache/kakehashi/gitops).",
    )
    gitops_author: str = Field(
        default="kakehashi <kakehashi@users.noreply.github.com>",
        description="Author and committer of the commits that propose a deploy ('Name <email>').",
    )
    threads: int = Field(default=16, ge=1, description="Threads for blocking API and S3 calls.")
    metrics_port: int = Field(default=9090, ge=0, description="Prometheus /metrics port (0: off).")
    liveness: str = Field(
        default="http://0.0.0.0:8080/healthz", description="kopf's liveness endpoint ('' to disable)."
    )
    log_format: Literal["json", "plain"] = Field(default="json", description="Log line format.")
    leader_election: bool = Field(
        default=False,
        description="Reconcile only while holding the leader Lease: replicas of one Deployment "
        "run one active and the others standby (the Deployment turns it on).",
    )
    leader_election_lease: str = Field(default="kakehashi-operator", description="Name of the leader Lease.")
    leader_election_namespace: str | None = Field(
        default=None,
        description="Namespace of the leader Lease (default: the pod's own, else kakehashi-system).",
    )
    lease_seconds: float = Field(
        default=15.0,
        ge=3,
        description="How long the leader Lease lasts unrenewed: a standby takes over this long after a "
        "leader died without releasing it. Renewed every lease/7.5 s; a leader that could not renew "
        "for 2/3 of it exits.",
    )

    @field_validator("bake_node_selector", mode="before")
    @classmethod
    def _pairs(cls, value: object) -> object:
        if isinstance(value, str):
            pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
            return {k.strip(): v.strip() for k, v in pairs}
        if isinstance(value, (list, tuple)):  # repeated --bake-node-selector k=v
            return dict(item.split("=", 1) for item in value)
        return value

    @field_validator("webhook_allowlist", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value
