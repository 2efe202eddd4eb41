"""A canary's route reaches production: it attaches to the shared Gateway, is applied after
everything the stable track needs, and a cluster without the Gateway API is named as such."""

from __future__ import annotations

from typing import Any

import pytest

from kakehashi.api.modelservice import ModelService
from kakehashi.control.errors import PermanentError
from kakehashi.control.resources import HTTPROUTES, Resource
from kakehashi.delivery.direct import Production
from kakehashi.serving import render
from kakehashi.serving.render import Release

STABLE = Release("registry.local/models@sha256:" + "a" * 64, "sha256:" + "1" * 64)
CANARY = Release("registry.local/models@sha256:" + "b" * 64, "sha256:" + "2" * 64)


def service(**spec: Any) -> ModelService:
    return ModelService.model_validate({
        "metadata": {"name": "digits", "namespace": "team", "uid": "ms-uid", "generation": 1},
        "spec": {"model": {"trainingRun": "digits"}, "registry": "registry.local/models",
                 "delivery": {"mode": "direct", "direct": {"kubeconfigSecret": {"name": "p"}, "namespace": "prod"}},
                 **spec},
    })


def canary_objects(weight: int = 20) -> list[dict[str, Any]]:
    ms = service(replicas=2, canary={"model": {"trainingRun": "digits-v2"}, "weight": weight})
    return render.render(ms, STABLE, "prod", canary=CANARY)


def test_the_route_attaches_to_the_shared_gateway_in_its_own_namespace() -> None:
    # A parentRef without a namespace means a Gateway in the route's namespace: every team's
    # namespace would need its own. The platform's one Gateway lives in its own namespace.
    route = canary_objects()[-1]
    assert route["kind"] == "HTTPRoute" and route["metadata"]["namespace"] == "prod"
    assert route["spec"]["parentRefs"] == [{"name": render.GATEWAY_NAME, "namespace": render.GATEWAY_NAMESPACE}]


def test_the_route_is_applied_last() -> None:
    # Refused where the Gateway API is missing: the stable track is in place by then.
    kinds = [o["kind"] for o in canary_objects()]
    assert kinds == ["Deployment", "Service", "Deployment", "Service", "PodDisruptionBudget", "HTTPRoute"]


def test_weights_always_add_up_to_one_hundred() -> None:
    for weight in (0, 1, 20, 50, 100):
        backends = canary_objects(weight)[-1]["spec"]["rules"][0]["backendRefs"]
        assert [b["weight"] for b in backends] == [100 - weight, weight]


class NotServed(Exception):
    """What the Kubernetes client raises for a kind the API server does not serve."""

    status = 404


class FakeKube:
    def __init__(self, missing: set[str]) -> None:
        self.missing = missing
        self.applied: list[str] = []

    def apply(self, resource: Resource, body: dict[str, Any], *, field_manager: str) -> dict[str, Any]:
        if resource.kind in self.missing:
            raise NotServed()
        self.applied.append(f"{resource.kind}/{body['metadata']['name']}")
        return body


def production(kube: FakeKube) -> Production:
    return Production(kube, owner_label=render.LABEL_SERVICE, port=render.PORT)  # type: ignore[arg-type]


def test_a_cluster_without_the_gateway_api_is_named_and_the_stable_track_is_applied() -> None:
    kube = FakeKube(missing={HTTPROUTES.kind})
    with pytest.raises(PermanentError) as refused:
        production(kube).apply(canary_objects())
    assert refused.value.reason == "GatewayAPIMissing"
    assert "no Gateway API" in str(refused.value) and "HTTPRoute" in str(refused.value)
    assert kube.applied == ["Deployment/digits", "Service/digits", "Deployment/digits-canary",
                            "Service/digits-canary", "PodDisruptionBudget/digits"]


def test_other_missing_kinds_are_not_blamed_on_the_gateway_api() -> None:
    with pytest.raises(NotServed):
        production(FakeKube(missing={"PodDisruptionBudget"})).apply(canary_objects())
