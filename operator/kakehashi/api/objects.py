"""What every Kakehashi resource model shares: apiVersion, metadata and its accessors."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kakehashi import GROUP, VERSION


class KubeObject(BaseModel):
    """A resource as the API server holds it (metadata kept as a plain mapping)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    api_version: str = Field(default=f"{GROUP}/{VERSION}", alias="apiVersion")
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.metadata["name"])

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace", "default"))

    @property
    def uid(self) -> str:
        return str(self.metadata.get("uid", ""))

    @property
    def generation(self) -> int:
        return int(self.metadata.get("generation", 1))
