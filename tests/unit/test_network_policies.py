"""The learning overlay's NetworkPolicies, evaluated by Kubernetes' NetworkPolicy rules: a notebook
pod reaches the learning cluster (its API server, DNS, other namespaces) and the internet (S3,
package indexes), never the production cluster's API server or its inference pods; and every
namespace the install creates enforces Pod Security `restricted`.

The local dev clusters' bridge CNI enforces no NetworkPolicy, so no cluster test can show a
packet dropped; this evaluates the policies the way an enforcing CNI does (allow-lists, the union
of every policy selecting the pod; `ipBlock` except; namespace and pod selectors). Where CNIs
differ (whether `ipBlock` also matches in-cluster pod addresses: Calico yes, Cilium no), both
readings are checked. tests/cluster/test_install_policies.py has the API server accept them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
POLICIES = MANIFESTS / "overlays" / "learning" / "networkpolicies.yaml"
NOTEBOOKS = "kakehashi-notebooks"


@dataclass(frozen=True)
class Peer:
    """Where a packet goes: a pod of this cluster (namespace set) or an address outside it."""

    ip: str
    namespace: str | None = None
    namespace_labels: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)


def matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A metav1.LabelSelector: matchLabels and matchExpressions, all of them (empty: everything)."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        ok = {"In": key in labels and labels[key] in values,
              "NotIn": key not in labels or labels[key] not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[operator]
        if not ok:
            return False
    return True


def _peer_matches(peer: Mapping[str, Any], policy_namespace: str, to: Peer, ipblock_matches_pods: bool) -> bool:
    if "ipBlock" in peer:
        if to.namespace is not None and not ipblock_matches_pods:
            return False
        address = ipaddress.ip_address(to.ip)
        block = peer["ipBlock"]
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(cidr) for cidr in block.get("except") or [])
    if to.namespace is None:
        return False  # selectors select pods, never outside addresses
    if "namespaceSelector" in peer:
        namespace_ok = matches(peer["namespaceSelector"], {**to.namespace_labels,
                                                          "kubernetes.io/metadata.name": to.namespace})
    else:
        namespace_ok = to.namespace == policy_namespace
    return namespace_ok and matches(peer.get("podSelector"), to.labels)


def egress_allowed(policies: list[dict[str, Any]], namespace: str, labels: Mapping[str, str], to: Peer,
                   *, ipblock_matches_pods: bool) -> bool:
    selecting = [p for p in policies if p["kind"] == "NetworkPolicy" and p["metadata"]["namespace"] == namespace
                 and matches(p["spec"].get("podSelector"), labels)
                 and "Egress" in (p["spec"].get("policyTypes") or ["Ingress"])]
    if not selecting:
        return True  # a pod no policy selects for egress is not isolated
    return any(not rule.get("to") or any(_peer_matches(peer, p["metadata"]["namespace"], to, ipblock_matches_pods)
                                          for peer in rule["to"])
               for p in selecting for rule in p["spec"].get("egress") or [])


def _policies() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(POLICIES.read_text()) if d]


def _except() -> list[str]:
    return [cidr for p in _policies() for rule in p["spec"]["egress"] for peer in rule.get("to", [])
            for cidr in peer.get("ipBlock", {}).get("except", [])]


# Addresses as an EKS pair of clusters has them: learning VPC 10.0.0.0/16, production VPC
# 10.1.0.0/16 (the policy's first `except`), the production API's public endpoint (the second).
NOTEBOOK = {"app.kubernetes.io/name": "jupyter", "app.kubernetes.io/component": "notebook"}
REACHABLE = {
    "CoreDNS": Peer("10.0.3.10", "kube-system", labels={"k8s-app": "kube-dns"}),
    "the operator's metrics": Peer("10.0.3.20", "kakehashi-system", labels={"app.kubernetes.io/name": "kakehashi-operator"}),
    "another notebook": Peer("10.0.3.30", NOTEBOOKS, labels={"app.kubernetes.io/name": "code-server"}),
    "the learning API server (the kubernetes Service's endpoint)": Peer("10.0.0.15"),
    "S3": Peer("52.216.8.1"),
    "a package index": Peer("151.101.0.223"),
}
UNREACHABLE = {
    "the production API server's private endpoint": Peer("10.1.0.40"),
    "the production API server's public endpoint": Peer("203.0.113.20"),
    "an inference pod (VPC CNI address)": Peer("10.1.64.7"),
    "the inference load balancer": Peer("10.1.200.9"),
}


@pytest.mark.parametrize("ipblock_matches_pods", [False, True], ids=["cilium", "calico"])
@pytest.mark.parametrize("what", REACHABLE)
def test_a_notebook_reaches_the_learning_cluster_and_the_internet(what: str, ipblock_matches_pods: bool) -> None:
    assert egress_allowed(_policies(), NOTEBOOKS, NOTEBOOK, REACHABLE[what], ipblock_matches_pods=ipblock_matches_pods)


@pytest.mark.parametrize("ipblock_matches_pods", [False, True], ids=["cilium", "calico"])
@pytest.mark.parametrize("what", UNREACHABLE)
def test_a_notebook_never_reaches_production(what: str, ipblock_matches_pods: bool) -> None:
    assert not egress_allowed(_policies(), NOTEBOOKS, NOTEBOOK, UNREACHABLE[what],
                              ipblock_matches_pods=ipblock_matches_pods)


def test_the_inference_namespace_is_excluded_by_name_should_it_run_on_this_cluster() -> None:
    # Not this project's layout (inference runs on the production cluster), so only the reading
    # where ipBlock leaves pod addresses alone; with Calico the policy's comment says what to add.
    inference = Peer("10.0.3.40", "kakehashi-serving", labels={"app.kubernetes.io/name": "kakehashi-inference"})
    assert not egress_allowed(_policies(), NOTEBOOKS, NOTEBOOK, inference, ipblock_matches_pods=False)


def test_every_pod_of_the_notebooks_namespace_is_isolated_whatever_its_labels() -> None:
    production_api = UNREACHABLE["the production API server's private endpoint"]
    assert not egress_allowed(_policies(), NOTEBOOKS, {"made-up": "by-a-user"}, production_api,
                              ipblock_matches_pods=False)
    # The operator's namespace is not the notebooks': its pods are not isolated by these.
    assert egress_allowed(_policies(), "kakehashi-system", {}, production_api, ipblock_matches_pods=False)


def test_the_evaluation_would_catch_a_policy_without_the_production_addresses() -> None:
    opened = yaml.safe_load(yaml.safe_dump(_policies()))
    for policy in opened:
        for rule in policy["spec"]["egress"]:
            for peer in rule.get("to", []):
                peer.get("ipBlock", {}).pop("except", None)
    assert egress_allowed(opened, NOTEBOOKS, NOTEBOOK, UNREACHABLE["the production API server's private endpoint"],
                          ipblock_matches_pods=False)


def test_the_policies_name_the_installs_own_namespaces_and_valid_cidrs() -> None:
    notebooks = yaml.safe_load((MANIFESTS / "notebooks" / "namespace.yaml").read_text())
    serving = yaml.safe_load((MANIFESTS / "overlays" / "production" / "namespace.yaml").read_text())
    assert {p["metadata"]["namespace"] for p in _policies()} == {notebooks["metadata"]["name"]}
    text = POLICIES.read_text()
    assert serving["metadata"]["name"] in text, "the inference namespace's name changed: update the policy"
    assert len(_except()) >= 2
    for cidr in _except():
        ipaddress.ip_network(cidr)  # a typo here would be refused by the API server at install
    learning = yaml.safe_load((MANIFESTS / "overlays" / "learning" / "kustomization.yaml").read_text())
    assert POLICIES.name in learning["resources"]


NAMESPACES = [MANIFESTS / "operator" / "namespace.yaml", MANIFESTS / "notebooks" / "namespace.yaml",
              MANIFESTS / "overlays" / "production" / "namespace.yaml", MANIFESTS / "gitops-bot" / "namespace.yaml"]


@pytest.mark.parametrize("path", NAMESPACES, ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_every_namespace_of_the_install_enforces_pod_security_restricted(path: Path) -> None:
    namespace = yaml.safe_load(path.read_text())
    assert namespace["kind"] == "Namespace"
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"
