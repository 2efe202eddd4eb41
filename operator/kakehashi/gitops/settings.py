"""The bot's settings: KAKEHASHI_BOT_* variables (or flags of `kakehashi-bot`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class BotSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KAKEHASHI_BOT_", extra="ignore", populate_by_name=True)

    # Required, no default: a bot without a secret would act on anyone's POST (Atlantis #843).
    webhook_secret: SecretStr = Field(description="The GitHub webhook's secret (HMAC-SHA256 key).")
    github_token: SecretStr = Field(description="Token for the GitHub REST API (an installation or fine-grained token).")
    github_api_url: str = Field(default="https://api.github.com", description="GitHub REST API base URL.")
    repository_url: str = Field(description="Clone URL of the GitOps repository (https, or a local path).")
    checkout: Path = Field(
        default=Path("/var/lib/kakehashi-bot/repository"),
        description="Where the bot keeps its clone of the GitOps repository.",
    )
    config_path: str = Field(
        default=".kakehashi/bot.yaml",
        description="The bot's per-repository config, read from the PR's base branch (never from the PR).",
    )
    allow_forks: bool = Field(default=False, description="Act on PRs whose head is in a fork.")
    status_context: str = Field(default="kakehashi", description="Prefix of the commit statuses the bot sets.")
    lock_wait_seconds: float = Field(
        default=900.0, gt=0, description="How long a command waits for a locked environment and service."
    )
    deliveries_remembered: int = Field(
        default=10_000, ge=100, description="Delivery GUIDs kept for deduplication (GitHub redelivers with the same GUID)."
    )
    production_kubeconfig: Path | None = Field(
        default=None, description="Kubeconfig of the production cluster (unset: in-cluster, then KUBECONFIG)."
    )
    learning_kubeconfig: Path | None = Field(
        default=None, description="Kubeconfig of the learning cluster, for /train (unset: /train is refused)."
    )
    namespace: str = Field(default="default", description="Production namespace of objects that name none.")
    learning_namespace: str = Field(default="default", description="Namespace of /train's TrainingRuns that name none.")
    kubectl: str = Field(default="kubectl", description="The kubectl binary (kustomize build, server-side diff).")
    rollout_timeout_seconds: float = Field(default=300.0, gt=0, description="How long a rollout may take to be ready.")
    log_format: Literal["json", "plain"] = Field(default="json", description="Log line format.")
    deliveries_journal: Path | None = Field(
        default=Path("/var/lib/kakehashi-bot/deliveries"),
        description="File the accepted delivery GUIDs are appended to, so a restart still knows them ('' : memory only).",
    )
    lease_namespace: str | None = Field(
        default=None,
        description="Namespace on the production cluster for the locks' Leases (one per environment and "
        "service): set, two replicas cannot both apply to one service; unset, the locks are per process "
        "and the bot must run as one replica.",
    )
    lease_seconds: float = Field(default=30.0, ge=5, description="A Lease's duration; renewed at a third of it.")
    host: str = Field(default="0.0.0.0", description="Address the webhook server listens on.")
    port: int = Field(default=8080, ge=1, le=65535, description="Port the webhook server listens on.")

    @field_validator("deliveries_journal", mode="before")
    @classmethod
    def _no_journal(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("webhook_secret")
    @classmethod
    def _secret_not_empty(cls, value: SecretStr) -> SecretStr:
        # An empty secret verifies signatures made with an empty key: as good as none.
        if len(value.get_secret_value()) < 16:
            raise ValueError("the webhook secret must be at least 16 characters")
        return value
