"""The bot's Prometheus metrics (served on its own /metrics)."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Histogram

WEBHOOKS: Final = Counter(
    "kakehashi_bot_webhooks_total",
    "Webhook deliveries by outcome (accepted, duplicate, ignored, unsigned, forged, invalid).",
    ["outcome"],
)
COMMANDS: Final = Counter(
    "kakehashi_bot_commands_total", "Commands handled, by command and result.", ["command", "result"]
)
COMMAND_SECONDS: Final = Histogram(
    "kakehashi_bot_command_duration_seconds",
    "From webhook received to the command's final report.",
    ["command"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
)
