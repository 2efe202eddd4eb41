"""Which cluster and namespace the SDK talks to.

Inside a notebook pod the pod's service account (in-cluster config) and the pod's own
namespace; elsewhere KUBECONFIG (or ~/.kube/config) and its current context's namespace. An
explicit kubeconfig or namespace wins over both.
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from kubernetes import client, config

from kakehashi.control.client import Kube, api_client

# Where Kubernetes mounts a pod's service-account namespace.
POD_NAMESPACE_FILE: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# Set by the kubelet in every pod: the in-cluster configuration applies (the client's own test).
IN_CLUSTER_ENV: Final = "KUBERNETES_SERVICE_HOST"


def default_namespace(kubeconfig: Path | str | None = None) -> str:
    """The pod's namespace in a pod; else the kubeconfig's current context's; else default."""
    if kubeconfig is None and POD_NAMESPACE_FILE.is_file():
        return POD_NAMESPACE_FILE.read_text().strip() or "default"
    try:
        _, current = config.list_kube_config_contexts(config_file=None if kubeconfig is None else str(kubeconfig))
    except (config.ConfigException, OSError):
        return "default"
    return str((current or {}).get("context", {}).get("namespace") or "default")


@dataclass
class Connection:
    """An API client for the learning cluster and the namespace to work in."""

    api: client.ApiClient
    namespace: str
    # Recorded with who changed a ModelService (its history's changedBy): the SDK or the CLI.
    via: str = "kakehashi sdk"
    kube: Kube = field(init=False)
    _identity: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.kube = Kube(self.api)

    def identity(self) -> str:
        """Who this is to the API server (a SelfSubjectReview: the user or service account),
        else the local user; and through what, for a ModelService's history."""
        if self._identity is None:
            try:
                review = client.AuthenticationV1Api(self.api).create_self_subject_review(
                    client.V1SelfSubjectReview(), _request_timeout=10)
                user = str(review.status.user_info.username)
            except Exception:  # an older API server, or no permission: the local user will do
                user = getpass.getuser()
            self._identity = f"{user} via {self.via}"
        return self._identity

    @classmethod
    def from_environment(cls, kubeconfig: Path | str | None = None, namespace: str | None = None) -> Connection:
        if kubeconfig is None and not os.environ.get(IN_CLUSTER_ENV):
            # Read now: the Kubernetes client reads $KUBECONFIG once, when it is imported, so a
            # notebook's os.environ["KUBECONFIG"] = ... after `import kakehashi.sdk` was ignored.
            kubeconfig = os.environ.get("KUBECONFIG") or None
        # pool_size small: a notebook makes a few calls at a time, not the operator's hundreds.
        return cls(api_client(kubeconfig, pool_size=4), namespace or default_namespace(kubeconfig))


_default: Connection | None = None


def connect(kubeconfig: Path | str | None = None, namespace: str | None = None) -> Connection:
    """A connection; without arguments the shared one of this process (built on first use)."""
    global _default
    if kubeconfig is not None or namespace is not None:
        return Connection.from_environment(kubeconfig, namespace)
    if _default is None:
        _default = Connection.from_environment()
    return _default
