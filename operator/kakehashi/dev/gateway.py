"""The production cluster's Gateway API: its CRDs, a GatewayClass and Gateway, and Traefik.

A canary's `HTTPRoute` (rendered by `kakehashi.serving.render`) splits traffic by weight only
where something implements the Gateway API. Here that is Traefik, built from its Go module and
run as a host process like the other servers: its kubernetesGateway provider watches the
production cluster and forwards to the pods' addresses on the real node, which the host
reaches. Its HTTP entrypoint listens on loopback only, and the Gateway's one listener carries
that entrypoint's port (Traefik maps listeners to entrypoints by port).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Final

import yaml

from kakehashi.control.client import api_client
from kakehashi.dev import tools
from kakehashi.dev.clusters import FIELD_MANAGER, wait_crd_established
from kakehashi.dev.environment import GatewayEndpoint
from kakehashi.dev.layout import Layout
from kakehashi.dev.processes import Service
from kakehashi.serving.render import GATEWAY_NAME, GATEWAY_NAMESPACE

CLUSTER: Final = "production"
MODULE: Final = "sigs.k8s.io/gateway-api"
# The Gateway API release Traefik v3.6.12's own go.mod is built against.
VERSION: Final = "v1.4.0"
GATEWAY_CLASS: Final = "traefik"
CONTROLLER: Final = "traefik.io/gateway-controller"
LISTENER: Final = "http"
ROUTE_CRDS: Final = ("gatewayclasses", "gateways", "httproutes")


def crds() -> list[Path]:
    """The standard channel's CRDs, as shipped in the Gateway API module."""
    directory = tools.module_dir(MODULE, VERSION, tools.TRAEFIK.name)
    found = sorted((directory / "config" / "crd" / "standard").glob("gateway.networking.k8s.io_*.yaml"))
    if not found:
        raise RuntimeError(f"no Gateway API CRDs in {directory}/config/crd/standard")
    return found


def manifests(port: int) -> list[dict[str, Any]]:
    """The GatewayClass Traefik claims and the shared Gateway every service's route attaches
    to, from any namespace (the platform owns the Gateway, teams own their routes)."""
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": GATEWAY_NAMESPACE}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
         "metadata": {"name": GATEWAY_CLASS}, "spec": {"controllerName": CONTROLLER}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
         "metadata": {"name": GATEWAY_NAME, "namespace": GATEWAY_NAMESPACE},
         "spec": {"gatewayClassName": GATEWAY_CLASS, "listeners": [{
             "name": LISTENER, "protocol": "HTTP", "port": port,
             "allowedRoutes": {"namespaces": {"from": "All"}},
         }]}},
    ]


def traefik_args(web_port: int, api_port: int) -> list[str]:
    """Traefik's static configuration as flags: a change restarts it (`Service.start`)."""
    return [
        # No network here, and nothing to report to.
        "--global.checkNewVersion=false",
        "--global.sendAnonymousUsage=false",
        f"--entryPoints.web.address=127.0.0.1:{web_port}",
        # /ping for health, and the API (routers, weighted services) for whoever debugs.
        f"--entryPoints.traefik.address=127.0.0.1:{api_port}",
        "--ping=true",
        "--ping.entryPoint=traefik",
        "--api.insecure=true",
        # The web UI's assets are built by yarn, not shipped in the Go module (its embed holds
        # a placeholder only): without this every API call logs a missing index.html.
        "--api.dashboard=false",
        "--providers.kubernetesGateway=true",
        "--providers.kubernetesGateway.statusAddress.ip=127.0.0.1",
        # A changed route takes effect half a second after Traefik sees it (default 2 s).
        "--providers.providersThrottleDuration=500ms",
        "--log.level=INFO",
        "--log.noColor=true",
    ]


def service(layout: Layout, binaries: dict[str, Path]) -> Service:
    return Service(
        name="traefik",
        binary=binaries["traefik"],
        args=traefik_args(layout.ports["gateway"], layout.ports["gateway-api"]),
        run_dir=layout.root,
        health_url=f"http://127.0.0.1:{layout.ports['gateway-api']}/ping",
        # The provider takes a kubeconfig from KUBECONFIG (else endpoint + token): the
        # production kubeconfig `dev up` writes, as the training-operator's --kubeconfig.
        env={"KUBECONFIG": str(layout.kubeconfig(CLUSTER))},
    )


def endpoint(layout: Layout) -> GatewayEndpoint:
    return GatewayEndpoint(url=f"http://127.0.0.1:{layout.ports['gateway']}",
                           api=f"http://127.0.0.1:{layout.ports['gateway-api']}",
                           name=GATEWAY_NAME, namespace=GATEWAY_NAMESPACE)


def install(layout: Layout) -> None:
    """The CRDs, the GatewayClass and the Gateway on the production cluster (idempotent)."""
    args = ["apply", "--server-side", "--force-conflicts", f"--field-manager={FIELD_MANAGER}"]
    for crd in crds():
        args += ["-f", str(crd)]
    layout.kubectl(CLUSTER, *args)
    api = api_client(layout.kubeconfig(CLUSTER))
    for plural in ROUTE_CRDS:
        wait_crd_established(api, f"{plural}.gateway.networking.k8s.io")
    layout.kubectl(CLUSTER, "apply", "--server-side", "--force-conflicts", f"--field-manager={FIELD_MANAGER}",
                   "-f", "-", stdin=yaml.safe_dump_all(manifests(layout.ports["gateway"])))


def wait_programmed(layout: Layout, timeout_s: float = 60.0) -> float:
    """Wait until Traefik has accepted the Gateway and serves its listener; seconds taken."""
    from kubernetes import client

    custom = client.CustomObjectsApi(api_client(layout.kubeconfig(CLUSTER)))
    started = time.monotonic()
    conditions: list[dict[str, Any]] = []
    while time.monotonic() - started < timeout_s:
        gateway = custom.get_namespaced_custom_object("gateway.networking.k8s.io", "v1", GATEWAY_NAMESPACE,
                                                      "gateways", GATEWAY_NAME)
        conditions = (gateway.get("status") or {}).get("conditions") or []
        generation = gateway["metadata"].get("generation")
        if any(c.get("type") == "Programmed" and c.get("status") == "True"
               and c.get("observedGeneration") == generation for c in conditions):
            return time.monotonic() - started
        time.sleep(0.25)
    raise RuntimeError(f"Gateway {GATEWAY_NAMESPACE}/{GATEWAY_NAME} not Programmed by Traefik within "
                       f"{timeout_s:.0f}s: {conditions}")


def up(layout: Layout, binaries: dict[str, Path], *, restart: bool) -> GatewayEndpoint:
    """Install the Gateway API on production and run Traefik for it. `restart`: the cluster
    was recreated (a new CA), so a running Traefik's watches are dead: start it afresh."""
    install(layout)
    traefik = service(layout, binaries)
    if restart:
        traefik.stop()
    traefik.start()
    wait_programmed(layout)
    return endpoint(layout)
