"""`kakehashi operator`: run the kopf operator (in a Deployment, or locally against KUBECONFIG)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import TYPE_CHECKING, Any

import click

from kakehashi import config
from kakehashi.settings import OperatorSettings

if TYPE_CHECKING:
    from kakehashi.control.leader import LeaderElector


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

    from kakehashi import artifacts, metrics
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
    if settings.metrics_port:
        start_http_server(settings.metrics_port)
    elector = None
    if settings.leader_election:
        elector = _wait_for_leadership(settings)
        if elector is None:
            return  # stopped while standby
    metrics.LEADER.set(1)
    s3 = boto3.client("s3")  # AWS_ENDPOINT_URL_S3 and the credentials come from the environment
    kube = Kube(api_client(pool_size=settings.threads * 2))
    reconciler = Reconciler(
        kube, settings, lambda uri: artifacts.read_model_artifact(s3, uri), threads=settings.threads
    )
    services = ServiceReconciler(kube, settings, events=kopf_events, threads=max(2, settings.threads // 2))
    logging.getLogger("kakehashi").info("Operator starting", extra={"settings": settings.model_dump()})
    renewing = threading.Event()
    renewer = elector.hold(_exit_lost, renewing) if elector is not None else None
    try:
        # standalone: kopf's peering stays off; the Lease above decides who reconciles
        # (kakehashi/control/leader.py says why).
        kopf.run(
            standalone=True,
            clusterwide=not namespaces or all_namespaces,
            namespaces=list(namespaces),
            liveness_endpoint=settings.liveness or None,
            memo=kopf.Memo(trainingruns=reconciler, modelservices=services),
        )
    finally:
        if elector is not None and renewer is not None:
            # Only once kopf has stopped: released earlier, the standby would reconcile beside us.
            renewing.set()
            renewer.join(timeout=elector.timing.renew_deadline_s)
            elector.release()


def _wait_for_leadership(settings: OperatorSettings) -> LeaderElector | None:
    """Wait as a standby (answering the liveness probe, leader metric 0) until this process
    holds the leader Lease; None if SIGTERM/SIGINT came first."""
    from kakehashi import metrics
    from kakehashi.control.client import Kube, api_client
    from kakehashi.control.leader import (
        LeaderElector,
        StandbyProbe,
        Timing,
        default_namespace,
        identity,
    )

    timing = Timing.for_lease(settings.lease_seconds)
    elector = LeaderElector(
        # Short call timeouts: a read and a write must fit in the renew deadline.
        Kube(api_client(pool_size=2), timeout_s=timing.renew_deadline_s / 3),
        settings.leader_election_namespace or default_namespace(),
        settings.leader_election_lease,
        identity(),
        timing,
    )
    metrics.LEADER.set(0)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if settings.liveness:
            with StandbyProbe(settings.liveness, elector, stale_s=max(60.0, 4 * timing.lease_s)):
                leading = elector.acquire(stop)
        else:
            leading = elector.acquire(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return elector if leading else None


def _exit_lost(reason: str) -> None:
    """Leadership lost while leading: stop at once, before the new leader's first reconcile
    (kopf's graceful stop would go on handling events meanwhile). The pod restarts as a standby."""
    logging.getLogger("kakehashi").critical("Lost the leader Lease; exiting", extra={"reason": reason})
    logging.shutdown()
    os._exit(1)
