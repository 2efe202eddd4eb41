"""Where the local dev environment lives and how to reach it.

`kakehashi dev up` writes an `env.json` in the state directory; tests, the CLI and
`kakehashi dev env` read it back through `DevEnvironment.load()`.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

CLUSTERS = ("learning", "production")


def state_dir() -> Path:
    """The dev environment's data: kwok cluster dirs, MinIO data, registry data, pids, logs."""
    return Path(os.environ.get("KAKEHASHI_DEV_HOME", Path.home() / ".kakehashi" / "dev"))


def cache_dir() -> Path:
    """Built Go binaries, kept across `dev down` so the next `dev up` starts in seconds."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kakehashi"
    return Path(os.environ.get("KAKEHASHI_CACHE_DIR", default))


class ClusterEndpoint(BaseModel):
    """One local Kubernetes cluster."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kubeconfig: Path
    server: str


class S3Endpoint(BaseModel):
    """The S3-compatible object store (MinIO) shared by both clusters."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    model_bucket: str = "kakehashi-models"


class GatewayEndpoint(BaseModel):
    """The production cluster's Gateway (Traefik on loopback): where HTTPRoutes are served."""

    model_config = ConfigDict(extra="forbid")

    url: str
    """The Gateway's HTTP listener: `{url}/<service>/...` reaches a ModelService's route."""
    api: str
    """Traefik's own API (`/api/http/services`, `/ping`)."""
    name: str
    namespace: str


class DevEnvironment(BaseModel):
    """The running dev environment, as written by `kakehashi dev up`."""

    model_config = ConfigDict(extra="forbid")

    learning: ClusterEndpoint
    production: ClusterEndpoint
    s3: S3Endpoint
    registry: str  # host:port, plain HTTP
    bin_dir: Path  # kubectl and the other built tools
    real_nodes: bool = False
    """Each cluster has a real node (`<cluster>-real`: kubelet, containerd) beside kwok's."""
    no_real_nodes_reason: str = ""
    gateway: GatewayEndpoint | None = None
    """Only with the real nodes: pods elsewhere have no address to forward to."""
    images: dict[str, str] = {}
    """Images in the local registry, by role: `base` (Debian python3), and those
    `kakehashi dev images` built from the project's Dockerfiles."""

    @staticmethod
    def path() -> Path:
        return state_dir() / "env.json"

    @classmethod
    def load(cls) -> DevEnvironment:
        try:
            return cls.model_validate_json(cls.path().read_text())
        except FileNotFoundError:
            raise RuntimeError(
                f"No dev environment at {cls.path()}: run `kakehashi dev up` first"
            ) from None

    def save(self) -> None:
        self.path().parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path().with_suffix(".tmp")
        tmp.write_text(self.model_dump_json(indent=2))
        tmp.replace(self.path())

    def cluster(self, name: str) -> ClusterEndpoint:
        if name not in CLUSTERS:
            raise ValueError(f"unknown cluster {name!r}; expected one of {CLUSTERS}")
        endpoint: ClusterEndpoint = getattr(self, name)
        return endpoint

    def exports(self) -> dict[str, str]:
        """Shell variables that point kubectl, boto3 and the platform at this environment."""
        return {
            "KUBECONFIG": str(self.learning.kubeconfig),
            "KAKEHASHI_LEARNING_KUBECONFIG": str(self.learning.kubeconfig),
            "KAKEHASHI_PRODUCTION_KUBECONFIG": str(self.production.kubeconfig),
            "AWS_ENDPOINT_URL_S3": self.s3.endpoint,
            "AWS_ACCESS_KEY_ID": self.s3.access_key,
            "AWS_SECRET_ACCESS_KEY": self.s3.secret_key,
            "AWS_REGION": self.s3.region,
            "AWS_DEFAULT_REGION": self.s3.region,
            "KAKEHASHI_MODEL_BUCKET": self.s3.model_bucket,
            "KAKEHASHI_REGISTRY": self.registry,
            **({"KAKEHASHI_GATEWAY_URL": self.gateway.url} if self.gateway else {}),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }
