"""A canary for real: two tiny models served on the production cluster's real node, and the
ModelService's HTTPRoute splitting 1,000 predictions between them through the Gateway (Traefik,
built from its Go module, on loopback). Which model answered is what each answer says it is:
the inference server reports the digest of the model it serves."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client
from modelservices import Services, prepare_namespace, service_spec, upload_model
from tiny_models import FEATURES, compiled_tiny_model
from trainingruns import wait_for

from kakehashi import GROUP

SERVICE = "scorer"
REQUESTS = 1000
# Bounded load on loopback: four clients at a time against two single-pod backends.
CONCURRENCY = 4
INPUTS = [{"name": FEATURES, "shape": [1, 3], "datatype": "FP32", "data": [1.0, 1.0, 1.0]}]


@pytest.fixture
def services(learning: Any, namespace: str, operator: Any, dev_env: Any) -> Iterator[Services]:
    if not dev_env.real_nodes or "serving" not in dev_env.images or dev_env.gateway is None:
        pytest.skip(f"needs the real nodes, the project's images and the Gateway: {dev_env.no_real_nodes_reason}")
    prepare_namespace(learning, namespace, dev_env)
    yield Services(learning, namespace)


def _model(s3: Any, dev_env: Any, namespace: str, directory: Path, weights: tuple[float, float, float]) -> dict[str, str]:
    directory.mkdir()
    compiled_tiny_model(directory, weights)
    return upload_model(s3, dev_env.s3.model_bucket, f"{namespace}/{directory.name}", directory, {"accuracy": 0.9})


def _qualified(name: str) -> str:
    return name if "@" in name else f"{name}@kubernetesgateway"


def _weights_in_traefik(gateway: Any, namespace: str) -> dict[str, int] | None:
    """The weights Traefik routes with now, by backend Service, once both backends have a ready
    endpoint; None while it has no such weighted service (or no canary route at all)."""
    services = httpx.get(f"{gateway.api}/api/http/services", timeout=5).json()
    by_name = {s["name"]: s for s in services}
    backends = {_qualified(f"{namespace}-{name}-http-80"): name for name in (SERVICE, f"{SERVICE}-canary")}
    for svc in services:
        children = (svc.get("weighted") or {}).get("services") or []
        if {_qualified(child["name"]) for child in children} != set(backends):
            continue
        if not all((by_name.get(name, {}).get("loadBalancer") or {}).get("servers") for name in backends):
            return None  # a backend without a ready endpoint: not what the route will do
        return {backends[_qualified(child["name"])]: child["weight"] for child in children}
    return None


def _route_in_effect(gateway: Any, namespace: str, canary_weight: int) -> None:
    wanted = {SERVICE: 100 - canary_weight, f"{SERVICE}-canary": canary_weight}
    wait_for(lambda: _weights_in_traefik(gateway, namespace) == wanted, 120,
             f"Traefik routing {wanted} with both backends ready")


def _split(gateway: Any) -> Counter[str]:
    """REQUESTS predictions through the Gateway; how many each model digest answered."""
    url = f"{gateway.url}/{SERVICE}/v2/models/{SERVICE}/infer"
    with httpx.Client(timeout=30) as http:
        def predict(_: int) -> str:
            response = http.post(url, json={"inputs": INPUTS})
            assert response.status_code == 200, f"{response.status_code}: {response.text[:500]}"
            return str(response.json()["model_version"])

        with ThreadPoolExecutor(CONCURRENCY) as pool:
            return Counter(pool.map(predict, range(REQUESTS)))


def _production_objects(production: Any, namespace: str) -> set[str]:
    selector = f"{GROUP}/modelservice={SERVICE}"
    found = {f"Deployment/{d.metadata.name}" for d in
             client.AppsV1Api(production).list_namespaced_deployment(namespace, label_selector=selector).items}
    found |= {f"Service/{s.metadata.name}" for s in
              client.CoreV1Api(production).list_namespaced_service(namespace, label_selector=selector).items}
    routes = client.CustomObjectsApi(production).list_namespaced_custom_object(
        "gateway.networking.k8s.io", "v1", namespace, "httproutes", label_selector=selector)["items"]
    found |= {f"HTTPRoute/{r['metadata']['name']}" for r in routes}
    return found


@pytest.mark.timeout(900)
def test_a_canary_at_weight_20_gets_a_fifth_of_the_traffic_through_the_gateway(
    services: Services, s3: Any, production: Any, namespace: str, production_namespace: str, dev_env: Any,
    tmp_path: Path,
) -> None:
    stable = _model(s3, dev_env, namespace, tmp_path / "stable", (1.0, 2.0, 3.0))
    canary = _model(s3, dev_env, namespace, tmp_path / "canary", (3.0, 2.0, 1.0))
    assert stable["digest"] != canary["digest"]
    spec = service_spec(dev_env, production_namespace, f"models/{uuid.uuid4().hex[:8]}", model=stable)
    started = time.monotonic()
    services.apply(SERVICE, {**spec, "canary": {"model": canary, "weight": 20}})
    ready = services.wait(SERVICE, lambda s: s.get("phase") in ("Ready", "Failed"), 600, "Ready")
    assert ready["phase"] == "Ready" and ready["servedDigests"] == [stable["digest"]], ready
    assert _production_objects(production, production_namespace) == {
        f"Deployment/{SERVICE}", f"Service/{SERVICE}", f"Deployment/{SERVICE}-canary", f"Service/{SERVICE}-canary",
        f"HTTPRoute/{SERVICE}"}
    _route_in_effect(dev_env.gateway, production_namespace, 20)
    print(f"applied to routed through the Gateway in {time.monotonic() - started:.1f} s")

    started = time.monotonic()
    split = _split(dev_env.gateway)
    took = time.monotonic() - started
    print(f"weight 20: {dict(split)} in {took:.1f} s")
    assert set(split) == {stable["digest"], canary["digest"]} and sum(split.values()) == REQUESTS
    assert 150 <= split[canary["digest"]] <= 250, split

    # Another weight: the route changes, and so does the split.
    services.apply(SERVICE, {**spec, "canary": {"model": canary, "weight": 50}})
    _route_in_effect(dev_env.gateway, production_namespace, 50)
    split = _split(dev_env.gateway)
    print(f"weight 50: {dict(split)}")
    assert 450 <= split[canary["digest"]] <= 550, split

    # No canary: its Deployment, Service and route are pruned from production, and the
    # Gateway stops routing to it.
    services.apply(SERVICE, {**spec, "canary": None})  # a merge patch: null removes the field
    wait_for(lambda: _production_objects(production, production_namespace) == {
        f"Deployment/{SERVICE}", f"Service/{SERVICE}"}, 60, "the canary's objects pruned")
    wait_for(lambda: httpx.post(f"{dev_env.gateway.url}/{SERVICE}/v2/models/{SERVICE}/infer",
                                json={"inputs": INPUTS}, timeout=10).status_code == 404, 30,
             "the Gateway no longer routing the canary's path")
    assert services.status(SERVICE)["phase"] == "Ready"
