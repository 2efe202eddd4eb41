"""The Lease names the bot's cross-replica locks use (the protocol itself is tested against the
local production cluster's API server: tests/cluster/test_gitops_leases.py)."""

from __future__ import annotations

import re

from kakehashi.gitops.leases import lease_name

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def test_each_environment_and_service_gets_its_own_valid_lease_name() -> None:
    keys = [("production", "digits"), ("Production", "digits"), ("production", "digits-"), ("prod/eu", "x" * 200),
            ("production-digits", ""), ("production", "digits.v2")]
    names = [lease_name(key) for key in keys]
    assert len(set(names)) == len(keys)  # case, punctuation and truncation never merge two locks
    assert all(DNS_SUBDOMAIN.match(name) and len(name) <= 63 for name in names), names
    assert lease_name(("production", "digits")).startswith("kakehashi-bot-production-digits-")
