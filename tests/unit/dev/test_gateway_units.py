"""The dev environment's Gateway: what `dev up` applies to production and how Traefik runs."""

from __future__ import annotations

import re
from pathlib import Path

from kakehashi.api.modelservice import ModelService
from kakehashi.dev import gateway, tools
from kakehashi.dev.layout import PORTS, Layout
from kakehashi.serving import render
from kakehashi.serving.render import Release


def test_a_canary_route_attaches_to_the_gateway_dev_up_creates() -> None:
    ms = ModelService.model_validate({
        "metadata": {"name": "scorer", "namespace": "team"},
        "spec": {"model": {"trainingRun": "a"}, "registry": "r.local/m", "canary": {"model": {"trainingRun": "b"},
                                                                                  "weight": 20},
                 "delivery": {"mode": "direct", "direct": {"kubeconfigSecret": {"name": "p"}, "namespace": "t"}}},
    })
    release = Release("r.local/m@sha256:" + "a" * 64, "sha256:" + "1" * 64)
    route = render.route(ms, "t")
    assert route is not None and render.render(ms, release, "t", release)[-1] == route
    [gateway_class, gw] = [m for m in gateway.manifests(18080) if m["kind"] in ("GatewayClass", "Gateway")]
    parent = route["spec"]["parentRefs"][0]
    assert (gw["metadata"]["name"], gw["metadata"]["namespace"]) == (parent["name"], parent["namespace"])
    assert gw["spec"]["gatewayClassName"] == gateway_class["metadata"]["name"]
    assert gateway_class["spec"]["controllerName"] == "traefik.io/gateway-controller"
    # Routes live in each team's namespace, the Gateway in the platform's.
    assert gw["spec"]["listeners"][0]["allowedRoutes"] == {"namespaces": {"from": "All"}}


def test_the_listener_port_is_traefiks_loopback_entrypoint() -> None:
    # Traefik binds a Gateway listener to the entrypoint with the same port: they must agree.
    listener = gateway.manifests(18080)[-1]["spec"]["listeners"][0]
    args = gateway.traefik_args(18080, 18081)
    assert listener["port"] == 18080 and "--entryPoints.web.address=127.0.0.1:18080" in args
    addresses = [a.split("=", 1)[1] for a in args if ".address=" in a]
    assert addresses and all(a.startswith("127.0.0.1:") for a in addresses)
    assert "--global.checkNewVersion=false" in args  # no network to ask


def test_traefik_watches_production_and_answers_ping_on_loopback(tmp_path: Path) -> None:
    layout = Layout(root=tmp_path, ports={name: 20000 + i for i, name in enumerate(PORTS)})
    traefik = gateway.service(layout, {"traefik": tmp_path / "traefik"})
    assert traefik.env["KUBECONFIG"] == str(layout.kubeconfig("production"))
    assert traefik.health_url == f"http://127.0.0.1:{layout.ports['gateway-api']}/ping"
    assert gateway.endpoint(layout).url == f"http://127.0.0.1:{layout.ports['gateway']}"


def test_traefik_is_built_with_its_own_replace_directives_and_the_gateway_api_it_uses() -> None:
    # Go ignores a dependency's replace directives: Traefik's forks must be repeated here, and
    # the CRDs installed must be the Gateway API release Traefik is compiled against.
    go_mod = (tools.TRAEFIK.module_dir / "go.mod").read_text()
    for forked in ("github.com/abbot/go-http-auth => github.com/containous/go-http-auth",
                   "github.com/gorilla/mux => github.com/containous/mux",
                   "github.com/mailgun/minheap => github.com/containous/minheap"):
        assert forked in go_mod
    assert re.search(rf"sigs\.k8s\.io/gateway-api {re.escape(gateway.VERSION)}\b", go_mod)
    assert re.search(rf"github\.com/traefik/traefik/v3 {re.escape(tools.TRAEFIK.version)}\b", go_mod)
    assert tools.TRAEFIK in tools.TOOLS and tools.TRAEFIK.real_nodes_only
