"""Announce finished runs to a Slack-compatible incoming webhook.

The payload is Slack's documented incoming-webhook format (`text` plus `blocks`); Mattermost,
Rocket.Chat and Teams' Slack-compatible endpoints accept the same body.
"""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import BaseModel

from kakehashi.api.trainingrun import Phase, TrainingRun, TrainingRunStatus


class WebhookMessage(BaseModel):
    text: str
    blocks: list[dict[str, Any]]


def run_ended_message(run: TrainingRun, status: TrainingRunStatus) -> WebhookMessage:
    icon = ":white_check_mark:" if status.phase == Phase.SUCCEEDED else ":x:"
    head = f"{icon} TrainingRun {run.namespace}/{run.name} {status.phase}"
    lines = [f"*{head}*", f"reason: {status.reason}"]
    if status.message:
        lines.append(f"```{status.message[:2500]}```")
    if status.model:
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(status.model.metrics.items()))
        lines.append(f"model: {status.model.uri} ({status.model.digest[:19]}) {metrics}")
    promotable = next((c for c in status.conditions if c.type == "Promotable"), None)
    if promotable:
        lines.append(f"promotable: {promotable.status} ({promotable.reason}: {promotable.message})")
    text = "\n".join(lines)
    return WebhookMessage(text=text, blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": text}}])


async def send(url: str, message: WebhookMessage, *, timeout_s: float = 10.0) -> None:
    if not url.startswith(("https://", "http://")):
        raise ValueError("the webhook URL must be http(s)")
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        response = await client.post(url, json=message.model_dump())
        response.raise_for_status()
