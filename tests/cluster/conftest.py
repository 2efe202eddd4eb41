"""Fixtures for the operator's cluster tests: the CRDs installed and the operator running."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def operator(dev_env: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """`kakehashi operator run` against the learning cluster, as its Deployment would run it."""
    from kakehashi.dev.operator import LocalOperator, install_crds, local_settings

    install_crds(dev_env)
    log = Path(tmp_path_factory.mktemp("operator")) / "operator.log"
    # The webhook test's receiver listens on loopback over http: permitted here, refused by
    # default (notification webhooks must be https to a public address).
    extra = {"KAKEHASHI_WEBHOOK_ALLOWLIST": "127.0.0.1/32", "KAKEHASHI_WEBHOOK_ALLOW_HTTP": "true",
             **local_settings(dev_env)}
    proc = LocalOperator(dev_env, log, extra_env=extra)
    proc.start()
    yield proc
    proc.stop()
