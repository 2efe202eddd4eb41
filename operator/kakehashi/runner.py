"""`kakehashi operator`: run the kopf operator (in a Deployment, or locally against KUBECONFIG)."""

from __future__ import annotations

import logging

import click

from kakehashi.settings import OperatorSettings


@click.group("operator")
def operator_group() -> None:
    """The Kakehashi operator: reconciles TrainingRuns into Jobs and TFJobs."""


@operator_group.command("run")
@click.option("-n", "--namespace", "namespaces", multiple=True, help="Watch only these namespaces (repeatable).")
@click.option("-A", "--all-namespaces", is_flag=True, help="Watch the whole cluster (the default without -n).")
@click.option("--metrics-port", default=9090, show_default=True, help="Prometheus /metrics port (0: off).")
@click.option(
    "--liveness",
    default="http://0.0.0.0:8080/healthz",
    show_default=True,
    help="kopf's liveness endpoint ('' to disable).",
)
@click.option("--threads", default=16, show_default=True, help="Threads for blocking API and S3 calls.")
@click.option("--log-format", type=click.Choice(["json", "plain"]), default="json", show_default=True)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def run(
    namespaces: tuple[str, ...],
    all_namespaces: bool,
    metrics_port: int,
    liveness: str,
    threads: int,
    log_format: str,
    verbose: bool,
) -> None:
    """Run the operator until interrupted. Settings come from KAKEHASHI_* environment variables."""
    import boto3
    import kopf
    from prometheus_client import start_http_server

    from kakehashi import artifacts
    from kakehashi.kube import Kube, api_client
    from kakehashi.training import handlers
    from kakehashi.training.reconciler import Reconciler

    kopf.configure(
        verbose=verbose, log_format=kopf.LogFormat.JSON if log_format == "json" else kopf.LogFormat.PLAIN
    )
    if not verbose:
        # kopf logs every handled event at INFO ("Handler 'x' succeeded"): thousands a minute
        # under load, and nothing a person reads.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings = OperatorSettings.from_env()
    s3 = boto3.client("s3")  # AWS_ENDPOINT_URL_S3 and the credentials come from the environment
    handlers.reconciler = Reconciler(
        Kube(api_client(pool_size=threads * 2)),
        settings,
        lambda uri: artifacts.read_model_artifact(s3, uri),
        threads=threads,
    )
    if metrics_port:
        start_http_server(metrics_port)
    logging.getLogger("kakehashi").info("Operator starting", extra={"settings": settings.model_dump()})
    kopf.run(
        standalone=True,
        clusterwide=not namespaces or all_namespaces,
        namespaces=list(namespaces),
        liveness_endpoint=liveness or None,
    )
