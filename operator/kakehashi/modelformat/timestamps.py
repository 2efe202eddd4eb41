"""RFC 3339 timestamps in the one form Kubernetes and `model.json` use (UTC, seconds, `Z`)."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_rfc3339(now: datetime | None = None) -> str:
    return rfc3339(now or datetime.now(UTC))
