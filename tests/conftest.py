"""Shared fixtures.

Tests under `tests/cluster/` are marked `cluster` and run against the real local clusters:
the `dev_env` fixture brings them up once per session (`kakehashi dev up` is idempotent, and
fast once its Go builds are cached). Set KAKEHASHI_SKIP_CLUSTER=1 to skip them instead.
`pytest tests/unit` never touches a cluster.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CLUSTER_DIR = Path(__file__).parent / "cluster"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = os.environ.get("KAKEHASHI_SKIP_CLUSTER") == "1"
    for item in items:
        if CLUSTER_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.cluster)
            if skip:
                item.add_marker(pytest.mark.skip(reason="KAKEHASHI_SKIP_CLUSTER=1"))
    # `dev down` ends the environment every other cluster test needs: run it last.
    items.sort(key=lambda item: item.get_closest_marker("teardown_env") is not None)


@pytest.fixture(scope="session")
def dev_env() -> Any:
    """The running local environment (learning + production clusters, MinIO, registry)."""
    from kakehashi.dev.environment import DevEnvironment
    from kakehashi.dev.stack import up

    up()
    return DevEnvironment.load()


def _api_client(kubeconfig: Path) -> Any:
    from kakehashi.control.client import api_client

    return api_client(kubeconfig)


@pytest.fixture(scope="session")
def learning(dev_env: Any) -> Any:
    """A `kubernetes.client.ApiClient` for the learning cluster."""
    return _api_client(dev_env.learning.kubeconfig)


@pytest.fixture(scope="session")
def production(dev_env: Any) -> Any:
    """A `kubernetes.client.ApiClient` for the production cluster."""
    return _api_client(dev_env.production.kubeconfig)


def _namespace(api: Any, prefix: str) -> Iterator[str]:
    from kubernetes import client

    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    # No namespace controller finalization wait: the next test uses a new name anyway.
    core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture
def namespace(learning: Any) -> Iterator[str]:
    """A fresh namespace in the learning cluster, deleted after the test."""
    yield from _namespace(learning, "t")


@pytest.fixture
def production_namespace(production: Any) -> Iterator[str]:
    """A fresh namespace in the production cluster, deleted after the test."""
    yield from _namespace(production, "t")


@pytest.fixture(scope="session")
def s3(dev_env: Any) -> Any:
    """A boto3 S3 client for the local MinIO."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=dev_env.s3.endpoint,
        aws_access_key_id=dev_env.s3.access_key,
        aws_secret_access_key=dev_env.s3.secret_key,
        region_name=dev_env.s3.region,
    )


@pytest.fixture(scope="session")
def kubectl(dev_env: Any) -> Any:
    """Run the built kubectl against a cluster: `kubectl("learning", "get", "nodes")`."""

    def run(cluster: str, *args: str, input: str | None = None, check: bool = True) -> str:
        result = subprocess.run(
            [str(dev_env.bin_dir / "kubectl"), "--kubeconfig",
             str(dev_env.cluster(cluster).kubeconfig), *args],
            input=input, capture_output=True, text=True, timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
        return result.stdout

    return run
