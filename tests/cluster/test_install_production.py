"""The production install (manifests/overlays/production: the inference namespace and the GitOps
bot) and the learning overlay's NetworkPolicies, against the real API servers.

NEEDS is the review of the bot's code (operator/kakehashi/gitops/kube.py and the
delivery/direct.py Production it drives), the same list as the comments of
manifests/gitops-bot/rbac.yaml. With the RBAC applied for real, SubjectAccessReviews as the
bot's ServiceAccount prove each need granted in the inference namespace and the FORBIDDEN probes
denied; then the bot's own cluster code, authenticated only as that ServiceAccount, deploys,
diffs, prunes and rolls back a service there, so the list is also sufficient in practice.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

REPO = Path(__file__).resolve().parents[2]
BOT_NAMESPACE = "kakehashi-system"
SERVING = "kakehashi-serving"
SERVICE_ACCOUNT = "kakehashi-gitops-bot"
USER = f"system:serviceaccount:{BOT_NAMESPACE}:{SERVICE_ACCOUNT}"
GROUPS = ["system:serviceaccounts", f"system:serviceaccounts:{BOT_NAMESPACE}", "system:authenticated"]
FIELD_MANAGER = "kakehashi-install-test"


@dataclass(frozen=True)
class Need:
    group: str
    resource: str
    verbs: tuple[str, ...]
    callers: str


_SERVICE_VERBS = ("get", "list", "create", "patch", "delete")
_SERVICE_CALLERS = ("Production.apply (patch; create when new), kubectl diff --server-side (get, patch), "
                    "Production.prune + KubeCluster._owned (list, delete)")
NEEDS = [
    Need("apps", "deployments", _SERVICE_VERBS, _SERVICE_CALLERS),
    Need("", "services", _SERVICE_VERBS, _SERVICE_CALLERS),
    Need("autoscaling", "horizontalpodautoscalers", _SERVICE_VERBS, _SERVICE_CALLERS),
    Need("policy", "poddisruptionbudgets", _SERVICE_VERBS, _SERVICE_CALLERS),
    Need("gateway.networking.k8s.io", "httproutes", _SERVICE_VERBS, _SERVICE_CALLERS),
    Need("", "pods", ("list",), "KubeCluster._observe, Production.read (readiness)"),
    Need("", "pods/proxy", ("get",), "Production._served_digest (/ready of each pod)"),
    Need("", "configmaps", ("create", "list"), "KubeCluster._audit (create), KubeCluster.history (list)"),
]

# (verb, group, resource, namespace or "" for cluster-wide): what the bot must not do.
FORBIDDEN = [
    *[(verb, "", "secrets", namespace) for verb in ("get", "list", "watch", "create", "patch")
      for namespace in (SERVING, BOT_NAMESPACE)],
    ("list", "", "secrets", ""), ("watch", "", "secrets", ""),
    # The audit trail is append-only for the bot: a deploy cannot rewrite or erase its record.
    ("update", "", "configmaps", SERVING), ("patch", "", "configmaps", SERVING),
    ("delete", "", "configmaps", SERVING),
    # A PR's kustomization may name kinds the bot does not deploy: the API server refuses them.
    ("create", "", "pods", SERVING), ("delete", "", "pods", SERVING), ("create", "", "pods/exec", SERVING),
    ("create", "batch", "jobs", SERVING), ("create", "", "serviceaccounts", SERVING),
    ("create", "", "serviceaccounts/token", SERVING), ("create", "rbac.authorization.k8s.io", "roles", SERVING),
    ("create", "rbac.authorization.k8s.io", "rolebindings", SERVING),
    ("create", "rbac.authorization.k8s.io", "clusterrolebindings", ""),
    ("bind", "rbac.authorization.k8s.io", "clusterroles", ""), ("escalate", "rbac.authorization.k8s.io", "roles", SERVING),
    ("create", "", "namespaces", ""), ("delete", "", "namespaces", ""), ("patch", "", "namespaces", ""),
    ("impersonate", "", "users", ""), ("patch", "", "nodes", ""),
    ("create", "apiextensions.k8s.io", "customresourcedefinitions", ""),
    ("create", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", ""),
    # Only the inference namespace: not its own, not any other.
    *[(verb, "apps", "deployments", namespace) for verb in ("create", "patch", "delete", "list")
      for namespace in (BOT_NAMESPACE, "default", "kube-system", "")],
    ("patch", "", "services", "default"), ("list", "", "pods", "kube-system"), ("create", "", "configmaps", "default"),
    ("update", "apps", "deployments", SERVING),  # it applies (patch), never replaces whole objects
    ("watch", "apps", "deployments", SERVING),
]


def _kubectl(env: Any, cluster: str, *args: str, stdin: str | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:
    command = [str(env.bin_dir / "kubectl"), "--kubeconfig", str(env.cluster(cluster).kubeconfig), *args]
    result = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, f"kubectl {' '.join(args)} failed:\n{result.stderr}"
    return result


def _build(env: Any, directory: str) -> list[dict[str, Any]]:
    out = _kubectl(env, "production", "kustomize", str(REPO / directory)).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def _find(docs: list[dict[str, Any]], kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name
             and (namespace is None or d["metadata"].get("namespace") == namespace)]
    assert found, f"no {kind} {name} in the build"
    return found[0]


@pytest.fixture(scope="module")
def production_install(dev_env: Any) -> list[dict[str, Any]]:
    return _build(dev_env, "manifests/overlays/production")


def test_the_bot_is_part_of_the_production_install(production_install: list[dict[str, Any]]) -> None:
    kinds = {(d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")) for d in production_install}
    for expected in [("Namespace", SERVING, None), ("Namespace", BOT_NAMESPACE, None),
                     ("ServiceAccount", SERVICE_ACCOUNT, BOT_NAMESPACE), ("Role", SERVICE_ACCOUNT, SERVING),
                     ("RoleBinding", SERVICE_ACCOUNT, SERVING), ("Deployment", SERVICE_ACCOUNT, BOT_NAMESPACE),
                     ("Service", SERVICE_ACCOUNT, BOT_NAMESPACE)]:
        assert expected in kinds
    # Secrets are referenced, never shipped; no cluster-wide rights.
    assert not {d["kind"] for d in production_install} & {"Secret", "ClusterRole", "ClusterRoleBinding"}
    binding = _find(production_install, "RoleBinding", SERVICE_ACCOUNT)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": BOT_NAMESPACE}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": SERVICE_ACCOUNT}


def test_the_bot_runs_once_with_probes_secret_references_and_its_settings(
    production_install: list[dict[str, Any]],
) -> None:
    deployment = _find(production_install, "Deployment", SERVICE_ACCOUNT)
    # One process: its locks and delivery dedupe are in memory; Recreate never overlaps two.
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == SERVICE_ACCOUNT
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    for variable, key in (("KAKEHASHI_BOT_WEBHOOK_SECRET", "webhook-secret"), ("KAKEHASHI_BOT_GITHUB_TOKEN", "github-token")):
        assert "value" not in env[variable], f"{variable} must come from a Secret"
        assert env[variable]["valueFrom"]["secretKeyRef"] == {"name": SERVICE_ACCOUNT, "key": key}
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert env["KAKEHASHI_BOT_PORT"]["value"] == str(port)
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    # Pod Security restricted, field by field.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    # Everything it writes is on its volumes (the root filesystem is read-only).
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    for variable in ("KAKEHASHI_BOT_CHECKOUT", "KAKEHASHI_BOT_DELIVERIES_JOURNAL", "HOME"):
        assert any(env[variable]["value"].startswith(m) for m in mounts), variable
    settings = _find(production_install, "ConfigMap", container["envFrom"][0]["configMapRef"]["name"], BOT_NAMESPACE)
    assert {"KAKEHASHI_BOT_REPOSITORY_URL", "KAKEHASHI_BOT_NAMESPACE"} <= set(settings["data"])
    assert settings["data"]["KAKEHASHI_BOT_NAMESPACE"] == SERVING
    service = _find(production_install, "Service", SERVICE_ACCOUNT)
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_the_role_grants_exactly_what_the_code_uses(production_install: list[dict[str, Any]]) -> None:
    role = _find(production_install, "Role", SERVICE_ACCOUNT)
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    needed = {(n.group, n.resource, v) for n in NEEDS for v in n.verbs}
    assert not needed - granted, f"the bot needs rights the Role lacks: {sorted(needed - granted)}"
    assert not granted - needed, f"the Role grants what no code uses: {sorted(granted - needed)}"


def _exists(env: Any, cluster: str, *what: str) -> bool:
    return _kubectl(env, cluster, "get", *what, "--ignore-not-found", "-o", "name", check=False).stdout.strip() != ""


@pytest.fixture(scope="module")
def installed(dev_env: Any, production_install: list[dict[str, Any]]) -> Iterator[None]:
    """The production install's namespaces and the bot's RBAC applied for real; what this
    created is removed afterwards (namespaces that existed keep what they had)."""
    namespaces = [d for d in production_install if d["kind"] == "Namespace"]
    rbac = [d for d in production_install if d["kind"] in ("ServiceAccount", "Role", "RoleBinding")]
    created = [d["metadata"]["name"] for d in namespaces if not _exists(dev_env, "production", "namespace", d["metadata"]["name"])]
    try:
        _kubectl(dev_env, "production", "apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "-f", "-",
                 stdin=yaml.safe_dump_all(namespaces + rbac))
        yield
    finally:
        for d in rbac:
            _kubectl(dev_env, "production", "delete", d["kind"].lower(), d["metadata"]["name"], "-n",
                     d["metadata"]["namespace"], "--ignore-not-found", check=False)
        for name in created:
            _kubectl(dev_env, "production", "delete", "namespace", name, "--ignore-not-found", "--wait=false", check=False)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and any(_exists(dev_env, "production", "namespace", n) for n in created):
            time.sleep(1)


def test_production_install_is_accepted_by_the_api_server(
    dev_env: Any, installed: None, production_install: list[dict[str, Any]]
) -> None:
    result = _kubectl(dev_env, "production", "apply", "--server-side", "--dry-run=server", "--force-conflicts",
                      f"--field-manager={FIELD_MANAGER}", "-f", "-",
                      stdin=yaml.safe_dump_all(production_install), check=False)
    assert result.returncode == 0, f"the API server refused the production install:\n{result.stderr}"
    assert result.stdout.count("serverside-applied") == len(production_install), result.stdout
    # Both namespaces warn on Pod Security `restricted`: the bot's pod must not trip it.
    assert "PodSecurity" not in result.stderr, result.stderr


def _allowed(api: Any, verb: str, group: str, resource: str, namespace: str) -> bool:
    plural, _, subresource = resource.partition("/")
    review = client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
        user=USER, groups=GROUPS, resource_attributes=client.V1ResourceAttributes(
            verb=verb, group=group, resource=plural, subresource=subresource or None, namespace=namespace or None)))
    return bool(client.AuthorizationV1Api(api).create_subject_access_review(review).status.allowed)


def test_the_bot_may_do_everything_its_code_does(production: Any, installed: None) -> None:
    missing = [f"{verb} {n.group or 'core'}/{n.resource} ({n.callers})"
               for n in NEEDS for verb in n.verbs if not _allowed(production, verb, n.group, n.resource, SERVING)]
    assert not missing, "the bot's ServiceAccount is refused:\n" + "\n".join(missing)


def test_the_bot_cannot_do_what_it_should_not(dev_env: Any, production: Any, installed: None) -> None:
    granted = [f"{verb} {group or 'core'}/{resource} in {namespace or 'the cluster'}"
               for verb, group, resource, namespace in FORBIDDEN if _allowed(production, verb, group, resource, namespace)]
    assert not granted, "the bot's ServiceAccount may:\n" + "\n".join(granted)
    answer = _kubectl(dev_env, "production", "auth", "can-i", "list", "secrets", "-n", SERVING, f"--as={USER}",
                      check=False)
    assert (answer.returncode, answer.stdout.strip()) == (1, "no")


def _service_account_kubeconfig(env: Any, path: Path) -> Path:
    token = _kubectl(env, "production", "create", "token", SERVICE_ACCOUNT, "-n", BOT_NAMESPACE,
                     "--duration=1h").stdout.strip()
    admin = yaml.safe_load(Path(env.production.kubeconfig).read_text())
    config = {**admin, "users": [{"name": "bot", "user": {"token": token}}],
              "contexts": [{"name": "bot", "context": {"cluster": admin["clusters"][0]["name"], "user": "bot"}}],
              "current-context": "bot"}
    path.write_text(yaml.safe_dump(config))
    return path


def _service_dir(root: Path, name: str, image: str, *, with_service: bool) -> Path:
    """A GitOps service directory whose pods pass Pod Security `restricted` (kakehashi-serving
    enforces it) and land on a kwok node (Ready without running)."""
    directory = root / image.rsplit(":", 1)[-1]
    directory.mkdir(parents=True)
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": {
                     "securityContext": {"runAsNonRoot": True, "runAsUser": 1000,
                                         "seccompProfile": {"type": "RuntimeDefault"}},
                     "containers": [{"name": "server", "image": image, "securityContext": {
                         "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}]}}},
    }
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
               "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]}}
    (directory / "deployment.yaml").write_text(yaml.safe_dump(deployment))
    resources = ["deployment.yaml"]
    if with_service:
        (directory / "service.yaml").write_text(yaml.safe_dump(service))
        resources.append("service.yaml")
    (directory / "kustomization.yaml").write_text(yaml.safe_dump({"resources": resources}))
    return directory


@pytest.mark.slow
def test_the_bot_deploys_diffs_prunes_and_rolls_back_as_its_service_account(
    dev_env: Any, installed: None, tmp_path: Path
) -> None:
    from kakehashi.control.client import Kube, api_client
    from kakehashi.control.resources import DEPLOYMENTS, SERVICES
    from kakehashi.delivery.direct import Production
    from kakehashi.gitops.cluster import Origin, ServiceChange
    from kakehashi.gitops.kube import CONFIGMAPS, LABEL_AUDIT, KubeCluster
    from kakehashi.serving import render

    kubeconfig = _service_account_kubeconfig(dev_env, tmp_path / "bot.kubeconfig")
    production = Production(Kube(api_client(kubeconfig)), owner_label=render.LABEL_SERVICE, port=render.PORT)
    cluster = KubeCluster(production, kubeconfig=kubeconfig, namespace=SERVING,
                          kubectl=str(dev_env.bin_dir / "kubectl"), rollout_timeout_s=60, poll_s=0.5)
    admin = Kube(api_client(dev_env.production.kubeconfig))
    name = f"rbac-{uuid.uuid4().hex[:6]}"
    v1 = _service_dir(tmp_path, name, "registry.invalid/web:v1", with_service=True)
    v2 = _service_dir(tmp_path, name, "registry.invalid/web:v2", with_service=False)

    def origin(number: int) -> Origin:
        return Origin(actor="alice", repository="acme/gitops", pull_request=number, sha=f"{number:040d}",
                      at=datetime.now(UTC))

    def image() -> str:
        live = admin.get(DEPLOYMENTS, SERVING, name)
        return str(live["spec"]["template"]["spec"]["containers"][0]["image"]) if live else ""

    async def scenario() -> None:
        first = await cluster.apply(ServiceChange("production", name, v1), origin(1))
        assert first.ok, first.details
        assert image() == "registry.invalid/web:v1" and admin.get(SERVICES, SERVING, name) is not None
        diff = await cluster.diff(ServiceChange("production", name, v2))  # kubectl, as the bot
        assert "registry.invalid/web:v2" in diff and f"Service/{name} (pruned" in diff, diff
        second = await cluster.apply(ServiceChange("production", name, v2), origin(2))
        assert second.ok, second.details
        assert f"pruned: Service/{name}" in second.details
        assert image() == "registry.invalid/web:v2" and admin.get(SERVICES, SERVING, name) is None
        back = await cluster.rollback("production", name, None, origin(3))
        assert back.ok, back.details
        assert image() == "registry.invalid/web:v1" and admin.get(SERVICES, SERVING, name) is not None

    try:
        asyncio.run(scenario())
        records = admin.list_objects(CONFIGMAPS, SERVING, f"{LABEL_AUDIT},{render.LABEL_SERVICE}={name}")
        assert sorted(r["data"]["pullRequest"] for r in records) == ["1", "2", "3"]
        # A PR naming a kind the bot may not write is refused by the API server, and says so.
        secret_dir = tmp_path / "secret"
        secret_dir.mkdir()
        (secret_dir / "secret.yaml").write_text(yaml.safe_dump(
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": {"k": "v"}}))
        (secret_dir / "kustomization.yaml").write_text(yaml.safe_dump({"resources": ["secret.yaml"]}))
        refused = asyncio.run(cluster.apply(ServiceChange("production", name, secret_dir), origin(4)))
        assert not refused.ok and "403" in refused.summary, refused
    finally:
        for resource in (DEPLOYMENTS, SERVICES):
            admin.delete(resource, SERVING, name)
        for record in admin.list_objects(CONFIGMAPS, SERVING, f"{LABEL_AUDIT},{render.LABEL_SERVICE}={name}"):
            admin.delete(CONFIGMAPS, SERVING, record["metadata"]["name"])


# ---- the learning overlay: NetworkPolicies and Pod Security on the notebooks' namespace --------


def test_the_learning_policies_and_notebook_namespace_are_accepted(dev_env: Any) -> None:
    learning = [d for d in yaml.safe_load_all(_kubectl(dev_env, "learning", "kustomize",
                                                       str(REPO / "manifests/overlays/learning")).stdout) if d]
    policies = [d for d in learning if d["kind"] == "NetworkPolicy"]
    assert [p["metadata"]["name"] for p in policies] == ["notebooks-egress"]
    namespace = _find(learning, "Namespace", "kakehashi-notebooks")
    notebooks = [d for d in learning if d["kind"] == "StatefulSet" and d["metadata"]["namespace"] == "kakehashi-notebooks"]
    assert notebooks
    existed = _exists(dev_env, "learning", "namespace", "kakehashi-notebooks")
    try:
        _kubectl(dev_env, "learning", "apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "-f", "-",
                 stdin=yaml.safe_dump(namespace))
        # --force-conflicts: a notebook server an earlier test or user applied (another field
        # manager) must not hide whether the API server accepts these objects.
        result = _kubectl(dev_env, "learning", "apply", "--server-side", "--dry-run=server", "--force-conflicts",
                          f"--field-manager={FIELD_MANAGER}", "-f", "-",
                          stdin=yaml.safe_dump_all(policies + notebooks), check=False)
        assert result.returncode == 0, result.stderr
        assert "networkpolicy.networking.k8s.io/notebooks-egress serverside-applied (server dry run)" in result.stdout
        # The notebook servers' pods pass `restricted` (the namespace warns at apply time).
        assert "PodSecurity" not in result.stderr, result.stderr
        # And a pod that does not is refused: the label is enforced, not decorative.
        root = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "root", "namespace": "kakehashi-notebooks"},
                "spec": {"containers": [{"name": "c", "image": "registry.invalid/x:1",
                                         "securityContext": {"privileged": True}}]}}
        refused = _kubectl(dev_env, "learning", "apply", "--server-side", "--dry-run=server", "-f", "-",
                           stdin=yaml.safe_dump(root), check=False)
        assert refused.returncode != 0 and 'violates PodSecurity "restricted' in refused.stderr, refused.stderr
    finally:
        if not existed:
            _kubectl(dev_env, "learning", "delete", "namespace", "kakehashi-notebooks", "--wait=false",
                     "--ignore-not-found", check=False)



def _bot_overlay(image: str, directory: Path) -> Path:
    """The production overlay as an installation changes it: the bot's image (here, in the local
    registry), the Secret the installer creates, and the real node to run on (kwok nodes run no
    containers). The Deployment, its probes and settings are the install's own."""
    from kakehashi.dev import node

    repository, tag = image.rsplit(":", 1)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(REPO / "manifests" / "overlays" / "production", directory)],
        "images": [{"name": "kakehashi/gitops-bot", "newName": repository, "newTag": tag}],
        "secretGenerator": [{"name": SERVICE_ACCOUNT, "namespace": BOT_NAMESPACE,
                             "options": {"disableNameSuffixHash": True},
                             "literals": [f"webhook-secret={BOT_WEBHOOK_SECRET}", f"github-token={BOT_TOKEN}"]}],
        "patches": [{"target": {"kind": "Deployment", "name": SERVICE_ACCOUNT}, "patch": yaml.safe_dump([
            {"op": "add", "path": "/spec/template/spec/nodeSelector", "value": node.SELECTOR},
            {"op": "add", "path": "/spec/template/spec/tolerations", "value": [node.TOLERATION]}])}],
    }))
    return directory


BOT_WEBHOOK_SECRET = "whsec-" + uuid.uuid4().hex
BOT_TOKEN = "ghp_" + uuid.uuid4().hex


@pytest.mark.timeout(900)
def test_the_bot_runs_from_its_image_on_the_real_node(
    dev_env: Any, production: Any, installed: None, tmp_path: Path
) -> None:
    """The bot's image (operator/Dockerfile, target gitops-bot) runs as the production install
    deploys it, Pod Security restricted, read-only root filesystem: Ready by its probe, webhooks
    refused unless signed with the installed secret, kubectl on board, no secret in its log."""
    import hashlib
    import hmac
    import json

    import httpx
    from kubernetes.stream import stream

    from kakehashi.dev import stack

    if not dev_env.real_nodes:
        pytest.skip(f"no real nodes on this machine: {dev_env.no_real_nodes_reason}")
    started = time.monotonic()
    image = stack.build_images(["gitops-bot"])["gitops-bot"]
    built = time.monotonic() - started
    overlay = _bot_overlay(image, tmp_path / "overlay")
    docs = [d for d in yaml.safe_load_all(_kubectl(dev_env, "production", "kustomize", str(overlay)).stdout)
            if d and d["kind"] in ("Deployment", "Service", "ConfigMap", "Secret")]
    apps, core = client.AppsV1Api(production), client.CoreV1Api(production)
    try:
        _kubectl(dev_env, "production", "apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "-f", "-",
                 stdin=yaml.safe_dump_all(docs))
        deadline = time.monotonic() + 300
        while (apps.read_namespaced_deployment(SERVICE_ACCOUNT, BOT_NAMESPACE).status.ready_replicas or 0) < 1:
            assert time.monotonic() < deadline, _kubectl(dev_env, "production", "describe", "pods", "-n", BOT_NAMESPACE,
                                                         "-l", f"app.kubernetes.io/name={SERVICE_ACCOUNT}").stdout
            time.sleep(2)
        print(f"\nbot image built (or cached) in {built:.0f}s; applied to Ready in {time.monotonic() - started - built:.0f}s")
        (pod,) = core.list_namespaced_pod(BOT_NAMESPACE, label_selector=f"app.kubernetes.io/name={SERVICE_ACCOUNT}").items
        assert pod.spec.node_name == "production-real" and pod.spec.containers[0].image == image
        url = f"http://{pod.status.pod_ip}:8080"
        assert httpx.get(f"{url}/healthz", timeout=10).text == "ok"
        body = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}).encode()
        headers = {"X-GitHub-Event": "ping", "X-GitHub-Delivery": str(uuid.uuid4()), "Content-Type": "application/json"}
        assert httpx.post(f"{url}/webhook", content=body, headers=headers, timeout=10).status_code == 401
        forged = "sha256=" + hmac.new(b"not-the-secret", body, hashlib.sha256).hexdigest()
        assert httpx.post(f"{url}/webhook", content=body, headers={**headers, "X-Hub-Signature-256": forged},
                          timeout=10).status_code == 401
        signed = "sha256=" + hmac.new(BOT_WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
        answer = httpx.post(f"{url}/webhook", content=body, headers={**headers, "X-Hub-Signature-256": signed}, timeout=10)
        assert answer.status_code < 300, answer.text
        # kubectl, which the bot applies, diffs and prunes with, is in the image.
        version = stream(core.connect_get_namespaced_pod_exec, pod.metadata.name, BOT_NAMESPACE,
                         command=["kubectl", "version", "--client"], stderr=True, stdout=True)
        assert "Client Version: v1.36" in version, version
        log = core.read_namespaced_pod_log(pod.metadata.name, BOT_NAMESPACE)
        assert BOT_WEBHOOK_SECRET not in log and BOT_TOKEN not in log
    finally:
        for d in docs:
            _kubectl(dev_env, "production", "delete", d["kind"].lower(), d["metadata"]["name"], "-n", BOT_NAMESPACE,
                     "--ignore-not-found", "--wait=false", check=False)
