"""The bot's per-repository config (`.kakehashi/bot.yaml` by default), read from the base branch.

Read from the PR's *base* branch, never from the PR itself: a PR must not be able to widen
the allowlist or lower the approvals it is checked against.

    environments:
      production:
        path: production        # one kustomize directory per service below it
        approvals: 1            # approvals on the head commit, by someone other than the author
        allow:                  # optional: only these users / members of these teams
          users: [alice]
          teams: [acme/sre]     # org/team-slug
    rollback_environment: production
    training_path: training     # /train applies the TrainingRun manifests below it
"""

from __future__ import annotations

from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from kakehashi.gitops.commands import NAME

_PATH = r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$"  # relative, no "..": checked below too


class Allow(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    users: list[str] = Field(default_factory=list)
    teams: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9-]+/[A-Za-z0-9._-]+$")]] = Field(default_factory=list)


class Environment(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Annotated[str, Field(pattern=_PATH)]
    approvals: int = Field(default=1, ge=0)
    allow: Allow | None = None  # None: anyone with write permission

    @model_validator(mode="after")
    def _no_parent(self) -> Environment:
        if ".." in self.path.split("/"):
            raise ValueError("an environment's path stays inside the repository")
        return self


class RepoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    environments: dict[Annotated[str, Field(pattern=f"^{NAME}$")], Environment] = Field(
        default_factory=lambda: {"production": Environment(path="production")}
    )
    rollback_environment: str = "production"
    training_path: Annotated[str, Field(pattern=_PATH)] = "training"

    @classmethod
    def from_yaml(cls, text: str | None) -> RepoConfig:
        """The config in `text`; the defaults when the repository has none."""
        if text is None:
            return cls()
        return cls.model_validate(yaml.safe_load(text) or {})
