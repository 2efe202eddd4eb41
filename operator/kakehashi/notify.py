"""Announce finished runs to a Slack-compatible incoming webhook, without becoming a deputy.

The payload is Slack's documented incoming-webhook format (`text` plus `blocks`); Mattermost,
Rocket.Chat and Teams' Slack-compatible endpoints accept the same body.

The URL comes from a Secret the run's author names, and the operator can read Secrets its users
cannot. So: only Secrets that opt in (`kakehashi.dev/notification-webhook: "true"`) are read;
the URL must be https and reach a public address (the same rules as the inference server's URL
fetching, `kakehashi.addresses`), unless the operator's allowlist permits it; the connection goes
to the address that was checked, and redirects are not followed. A webhook URL is a credential
(Slack's secret is in its path), so no error message here contains the URL, its host or the
Secret's value: they name the Secret and what is wrong, and end up in Events users can read.
"""

from __future__ import annotations

from typing import Any, Final

import httpx
from pydantic import BaseModel

from kakehashi.addresses import Allowlist, host_header, resolve, why_refused
from kakehashi.api.trainingrun import Phase, TrainingRun, TrainingRunStatus
from kakehashi.control.client import Secret

OPT_IN_LABEL: Final = "kakehashi.dev/notification-webhook"


class NotificationError(Exception):
    """A notification not sent; the message is safe to show (no URL, no Secret value)."""


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


def webhook_url(secret: Secret | None, name: str, key: str) -> str:
    """The URL in an opted-in Secret, or NotificationError naming the Secret (never its value)."""
    if secret is None:
        raise NotificationError(f"Secret {name} does not exist")
    if secret.labels.get(OPT_IN_LABEL) != "true":
        raise NotificationError(
            f"Secret {name} is not labelled {OPT_IN_LABEL}=true: the operator reads only Secrets "
            "that opt in to being notification webhooks"
        )
    url = secret.data.get(key, "").strip()
    if not url:
        raise NotificationError(f"Secret {name} has no key {key!r}")
    return url


async def checked_target(url: str, allowlist: Allowlist, allow_http: bool) -> tuple[httpx.URL, str]:
    """The URL to connect to (host replaced by a checked address) and the host name."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise NotificationError("the webhook URL is not a valid URL") from None
    if parsed.scheme != "https" and not (allow_http and parsed.scheme == "http"):
        raise NotificationError("the webhook URL must be https (the operator's webhook_allow_http permits http)")
    host = parsed.host.lower().rstrip(".")
    if not host:
        raise NotificationError("the webhook URL has no host")
    try:
        addresses = await resolve(host, parsed.port or (443 if parsed.scheme == "https" else 80))
    except OSError:
        raise NotificationError("the webhook URL's host name does not resolve") from None
    if not addresses:
        raise NotificationError("the webhook URL's host has no address")
    for address in addresses:
        reason = why_refused(address)
        if reason is not None and not allowlist.permits(host, address):
            kind = reason.split(" (", 1)[0]
            raise NotificationError(
                f"the webhook URL's host resolves to {kind}, which the operator does not call "
                "(permit it with KAKEHASHI_WEBHOOK_ALLOWLIST)"
            )
    return parsed.copy_with(host=str(addresses[0])), host


async def send(
    url: str,
    message: WebhookMessage,
    *,
    allowlist: Allowlist,
    allow_http: bool = False,
    timeout_s: float = 10.0,
) -> None:
    target, host = await checked_target(url, allowlist, allow_http)
    extensions: dict[str, Any] = {"timeout": httpx.Timeout(timeout_s).as_dict()}
    if target.scheme == "https":
        # TLS still verifies the certificate against the name, not the address.
        extensions["sni_hostname"] = host
    request = httpx.Request(
        "POST", target, json=message.model_dump(),
        headers={"Host": host_header(target.scheme, host, target.port)}, extensions=extensions,
    )
    # Straight to a transport, not through httpx.Client: the client logs every request's full
    # URL at INFO ("HTTP Request: POST https://.../T000/B000/XXXX"), and a webhook URL's path
    # is its credential. A bare transport follows no redirects and reads no proxy settings.
    async with httpx.AsyncHTTPTransport(trust_env=False) as transport:
        try:
            response = await transport.handle_async_request(request)
            await response.aclose()
        except httpx.HTTPError as error:
            raise NotificationError(f"the webhook could not be reached ({type(error).__name__})") from None
    if response.is_redirect:
        raise NotificationError(f"the webhook answered a redirect (HTTP {response.status_code}), which is not followed")
    if not response.is_success:
        raise NotificationError(f"the webhook answered HTTP {response.status_code}")
