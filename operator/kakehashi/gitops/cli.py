"""`kakehashi-bot`: the webhook server, configured by KAKEHASHI_BOT_* variables (see settings)."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import uuid
from typing import Any, Final

import click

_STANDARD: Final = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the record's `extra` fields (never the settings' secrets:
    they are SecretStr, which serialise as '**********')."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"time": self.formatTime(record), "level": record.levelname,
                                "logger": record.name, "message": record.getMessage()}
        line |= {k: v for k, v in vars(record).items() if k not in _STANDARD}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


@click.command()
@click.option("--check", is_flag=True, help="Validate the settings and exit (no server).")
def main(check: bool) -> None:
    """Serve GitHub webhooks for the GitOps repository: /deploy, /diff, /rollback, /train, /unlock, /help."""
    import uvicorn
    from pydantic import ValidationError

    from kakehashi.control.client import Kube, api_client
    from kakehashi.delivery.direct import Production
    from kakehashi.gitops.app import Webhooks, create_app
    from kakehashi.gitops.bot import Bot, BotOptions
    from kakehashi.gitops.github import GitHubApi
    from kakehashi.gitops.kube import KubeCluster
    from kakehashi.gitops.leases import Leases
    from kakehashi.gitops.repository import GitRepository
    from kakehashi.gitops.settings import BotSettings
    from kakehashi.serving import render

    try:
        settings = BotSettings()  # type: ignore[call-arg]  # required fields come from the environment
    except ValidationError as error:
        # The bot does not start half-configured, and above all not without a webhook secret.
        click.echo(f"kakehashi-bot: refusing to start:\n{error}", err=True)
        sys.exit(2)
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    if check:
        click.echo("settings ok")
        return
    token = settings.github_token.get_secret_value()
    production = Production(Kube(api_client(settings.production_kubeconfig)),
                            owner_label=render.LABEL_SERVICE, port=render.PORT)
    learning = Kube(api_client(settings.learning_kubeconfig)) if settings.learning_kubeconfig else None
    cluster = KubeCluster(
        production, kubeconfig=settings.production_kubeconfig,
        namespace=settings.namespace, kubectl=settings.kubectl, learning=learning,
        learning_namespace=settings.learning_namespace, rollout_timeout_s=settings.rollout_timeout_seconds,
    )
    leases = None
    if settings.lease_namespace:
        # This replica's name in the Leases: its pod, and a suffix so a restarted pod of the
        # same name does not take over what its previous life held.
        identity = f"{os.environ.get('HOSTNAME') or socket.gethostname()}-{uuid.uuid4().hex[:6]}"
        leases = Leases(production.kube, settings.lease_namespace, identity, duration_s=settings.lease_seconds)
    bot = Bot(
        GitHubApi(token, base_url=settings.github_api_url),
        GitRepository(settings.repository_url, settings.checkout, token=token),
        cluster,
        BotOptions(config_path=settings.config_path, allow_forks=settings.allow_forks,
                   status_context=settings.status_context, lock_wait_s=settings.lock_wait_seconds),
        leases=leases,
    )
    if settings.deliveries_journal is not None:
        settings.deliveries_journal.parent.mkdir(parents=True, exist_ok=True)
    webhooks = Webhooks(bot, settings.webhook_secret.get_secret_value().encode(),
                        deliveries=settings.deliveries_remembered, journal=settings.deliveries_journal)
    logging.getLogger("kakehashi.gitops").info("bot starting", extra={"settings": settings.model_dump(mode="json")})
    uvicorn.run(create_app(webhooks), host=settings.host, port=settings.port, log_level="info", ws="none")

