"""`kakehashi operator`: run the kopf operator (in a Deployment, or locally against KUBECONFIG)."""

from __future__ import annotations

import logging
from typing import Any

import click

from kakehashi import config
from kakehashi.settings import OperatorSettings


@click.group("operator")
def operator_group() -> None:
    """The Kakehashi operator: TrainingRuns into Jobs and TFJobs, ModelServices into production services."""


@operator_group.command("run")
@click.option("-n", "--namespace", "namespaces", multiple=True, help="Watch only these namespaces (repeatable).")
@click.option("-A", "--all-namespaces", is_flag=True, help="Watch the whole cluster (the default without -n).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@config.options(OperatorSettings)
def run(namespaces: tuple[str, ...], all_namespaces: bool, verbose: bool, **values: Any) -> None:
    """Run the operator until interrupted. Every setting is also a KAKEHASHI_* variable."""
    import boto3
    import kopf
    from prometheus_client import start_http_server

    from kakehashi import artifacts
    from kakehashi.control.client import Kube, api_client
    from kakehashi.serving import handlers as serving_handlers  # noqa: F401  (registers kopf handlers)
    from kakehashi.serving.reconciler import ServiceReconciler
    from kakehashi.training import handlers  # noqa: F401  (registers the kopf handlers)
    from kakehashi.training.reconciler import Reconciler, kopf_events

    settings = config.load(OperatorSettings, values)
    kopf.configure(
        verbose=verbose, log_format=kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.PLAIN
    )
    if not verbose:
        # kopf logs every handled event at INFO ("Handler 'x' succeeded"): thousands a minute
        # under load, and nothing a person reads.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    s3 = boto3.client("s3")  # AWS_ENDPOINT_URL_S3 and the credentials come from the environment
    kube = Kube(api_client(pool_size=settings.threads * 2))
    reconciler = Reconciler(
        kube, settings, lambda uri: artifacts.read_model_artifact(s3, uri), threads=settings.threads
    )
    services = ServiceReconciler(kube, settings, events=kopf_events, threads=max(2, settings.threads // 2))
    if settings.metrics_port:
        start_http_server(settings.metrics_port)
    logging.getLogger("kakehashi").info("Operator starting", extra={"settings": settings.model_dump()})
    kopf.run(
        standalone=True,
        clusterwide=not namespaces or all_namespaces,
        namespaces=list(namespaces),
        liveness_endpoint=settings.liveness or None,
        memo=kopf.Memo(trainingruns=reconciler, modelservices=services),
    )
