"""Fixtures for the operator's cluster tests: the CRDs installed and the operator running."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def operator(dev_env: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """`kakehashi operator run` against the learning cluster, as its Deployment would run it."""
    from kakehashi.dev.operator import LocalOperator, install_crds

    install_crds(dev_env)
    log = Path(tmp_path_factory.mktemp("operator")) / "operator.log"
    # The webhook test's receiver listens on loopback over http: permitted here, refused by
    # default (notification webhooks must be https to a public address).
    extra = {"KAKEHASHI_WEBHOOK_ALLOWLIST": "127.0.0.1/32", "KAKEHASHI_WEBHOOK_ALLOW_HTTP": "true",
             # Bake Jobs run in the project's training image on the real node and push to the
             # local registry, which speaks plain HTTP on the bridge address.
             "KAKEHASHI_REGISTRY_INSECURE": "true"}
    if dev_env.real_nodes and "training" in dev_env.images:
        extra["KAKEHASHI_BAKE_IMAGE"] = dev_env.images["training"]
        extra["KAKEHASHI_BAKE_NODE_SELECTOR"] = "kakehashi.dev/node=real"
    proc = LocalOperator(dev_env, log, extra_env=extra)
    proc.start()
    yield proc
    proc.stop()
