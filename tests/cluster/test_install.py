"""The install manifests: every kustomization builds, the real API server accepts the learning
install, and the operator's ServiceAccount has exactly the rights its code uses.

NEEDS is the review of the operator's code (the Kube client calls and the kopf handlers), the
same list as the comments of manifests/operator/rbac.yaml. With the RBAC applied for real, a
SubjectAccessReview as the ServiceAccount proves each need is granted (sufficient), and the
ClusterRole granting nothing beyond NEEDS plus the FORBIDDEN probes being denied proves it least.

The Kubeflow integration: with the install's Notebook CRD applied first, Notebooks as Kubeflow's
web app spawns them from the install's form are accepted; and the install's shared claim, bound
to the dev environment's stand-in for EFS, keeps a notebook's work after the notebook is gone.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "kakehashi-system"
SERVICE_ACCOUNT = "kakehashi-operator"
USER = f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"
GROUPS = ["system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}", "system:authenticated"]
PROBE_NAMESPACE = "team-a"  # any namespace a data scientist works in: the operator is cluster-wide


@dataclass(frozen=True)
class Need:
    group: str
    resource: str  # "pods/log" names a subresource
    verbs: tuple[str, ...]
    modules: str  # who calls it, under operator/kakehashi/ (or kopf itself)


NEEDS = [
    Need("apiextensions.k8s.io", "customresourcedefinitions", ("list", "watch"), "kopf resource observer"),
    Need("", "events", ("create",), "training/reconciler.py kopf_events (training, serving)"),
    Need("kakehashi.dev", "trainingruns", ("get", "list", "watch"),
         "training/handlers.py (list, watch); serving/reconciler.py _resolve (get)"),
    Need("kakehashi.dev", "trainingruns/status", ("patch",), "training/reconciler.py"),
    Need("kakehashi.dev", "modelservices", ("list", "watch", "patch"),
         "serving/handlers.py (list, watch); serving/reconciler.py finalizer (patch)"),
    Need("kakehashi.dev", "modelservices/status", ("patch",), "serving/reconciler.py"),
    Need("batch", "jobs", ("get", "list", "watch", "create", "delete"),
         "training+serving handlers (list, watch); training+serving reconciler (get, create); bake retry (delete)"),
    Need("kubeflow.org", "tfjobs", ("get", "list", "watch", "create"),
         "training/handlers.py (list, watch); training/reconciler.py (get, create)"),
    Need("", "pods", ("list", "watch", "patch"),
         "training+serving handlers (list, watch); training/reconciler.py _release_pods (patch)"),
    Need("", "pods/log", ("get",), "training/reconciler.py _log_tails"),
    Need("", "secrets", ("get",), "notify.py, serving/reconciler.py, serving/gitops.py (Kube.read_secret)"),
]

LEADER_ROLE = "kakehashi-operator-leader"
LEASE = "kakehashi-operator"
# The Role in the operator's namespace (control/leader.py): (group, resource, verb, resourceName
# or "" for any), exactly.
LEADER_NEEDS = {
    ("coordination.k8s.io", "leases", "get", LEASE),  # every try: who holds it, at which version
    ("coordination.k8s.io", "leases", "update", LEASE),  # renew, take over, release
    ("coordination.k8s.io", "leases", "create", ""),  # the first replica ever started
}

# (verb, group, resource, namespace or "" for all namespaces / cluster-scoped): what it must not do.
FORBIDDEN = [
    ("list", "", "secrets", PROBE_NAMESPACE),
    ("watch", "", "secrets", PROBE_NAMESPACE),
    ("list", "", "secrets", ""),
    ("watch", "", "secrets", ""),
    ("create", "", "secrets", PROBE_NAMESPACE),
    ("update", "", "secrets", PROBE_NAMESPACE),
    ("delete", "", "secrets", PROBE_NAMESPACE),
    ("delete", "", "namespaces", ""),
    ("create", "", "namespaces", ""),
    ("patch", "", "namespaces", ""),
    ("list", "", "namespaces", ""),
    ("create", "rbac.authorization.k8s.io", "clusterroles", ""),
    ("create", "rbac.authorization.k8s.io", "clusterrolebindings", ""),
    ("escalate", "rbac.authorization.k8s.io", "clusterroles", ""),
    ("bind", "rbac.authorization.k8s.io", "clusterroles", ""),
    ("create", "rbac.authorization.k8s.io", "rolebindings", PROBE_NAMESPACE),
    ("impersonate", "", "users", ""),
    ("impersonate", "", "serviceaccounts", PROBE_NAMESPACE),
    ("create", "", "serviceaccounts/token", PROBE_NAMESPACE),
    ("create", "apiextensions.k8s.io", "customresourcedefinitions", ""),
    ("delete", "apiextensions.k8s.io", "customresourcedefinitions", ""),
    # Inference objects go to the production cluster (its kubeconfig, or a GitOps PR), never here.
    ("create", "apps", "deployments", PROBE_NAMESPACE),
    ("patch", "apps", "deployments", PROBE_NAMESPACE),
    ("delete", "apps", "deployments", PROBE_NAMESPACE),
    ("create", "", "services", PROBE_NAMESPACE),
    ("create", "autoscaling", "horizontalpodautoscalers", PROBE_NAMESPACE),
    ("create", "policy", "poddisruptionbudgets", PROBE_NAMESPACE),
    ("create", "gateway.networking.k8s.io", "httproutes", PROBE_NAMESPACE),
    ("get", "", "pods/proxy", PROBE_NAMESPACE),
    ("create", "", "pods", PROBE_NAMESPACE),
    ("delete", "", "pods", PROBE_NAMESPACE),
    ("create", "", "pods/exec", PROBE_NAMESPACE),
    ("create", "", "configmaps", PROBE_NAMESPACE),
    ("patch", "", "nodes", ""),
    ("delete", "kakehashi.dev", "trainingruns", PROBE_NAMESPACE),
    ("create", "kakehashi.dev", "trainingruns", PROBE_NAMESPACE),
    ("update", "kakehashi.dev", "trainingruns", PROBE_NAMESPACE),
    ("delete", "kakehashi.dev", "modelservices", PROBE_NAMESPACE),
    ("update", "kakehashi.dev", "trainingruns/status", PROBE_NAMESPACE),
    ("patch", "batch", "jobs", PROBE_NAMESPACE),
    ("delete", "kubeflow.org", "tfjobs", PROBE_NAMESPACE),
    ("delete", "", "events", PROBE_NAMESPACE),
    # Leases other than its own: node heartbeats, other controllers' leader elections.
    ("update", "coordination.k8s.io", "leases", "kube-node-lease"),
    ("update", "coordination.k8s.io", "leases", "kube-system"),
    ("create", "coordination.k8s.io", "leases", PROBE_NAMESPACE),
    ("list", "coordination.k8s.io", "leases", NAMESPACE),
    ("delete", "coordination.k8s.io", "leases", NAMESPACE),
    ("update", "coordination.k8s.io", "leases", ""),
]


def _kubectl(env: Any, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    command = [str(env.bin_dir / "kubectl"), "--kubeconfig", str(env.learning.kubeconfig), *args]
    result = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stderr}"
    return result


def _build(env: Any, directory: str) -> list[dict[str, Any]]:
    out = _kubectl(env, "kustomize", str(REPO / directory)).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def _find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert found, f"no {kind} {name} in the build"
    return found[0]


def _granted(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in role["rules"] for group in rule.get("apiGroups", [])
            for resource in rule.get("resources", []) for verb in rule.get("verbs", [])}


def _needed() -> set[tuple[str, str, str]]:
    return {(n.group, n.resource, verb) for n in NEEDS for verb in n.verbs}


@pytest.fixture(scope="module")
def learning_install(dev_env: Any) -> list[dict[str, Any]]:
    return _build(dev_env, "manifests/overlays/learning")


def test_every_kustomization_builds(dev_env: Any) -> None:
    root = _build(dev_env, ".")
    learning = _build(dev_env, "manifests/overlays/learning")
    production = _build(dev_env, "manifests/overlays/production")
    assert root == learning, "`kubectl apply -k .` must install exactly the learning overlay"
    kinds = {(d["kind"], d["metadata"]["name"]) for d in learning}
    for expected in [("CustomResourceDefinition", "trainingruns.kakehashi.dev"),
                     ("CustomResourceDefinition", "modelservices.kakehashi.dev"),
                     ("Deployment", "kakehashi-operator"), ("ServiceAccount", SERVICE_ACCOUNT),
                     ("ClusterRole", "kakehashi-operator"), ("ClusterRoleBinding", "kakehashi-operator"),
                     # Kubeflow Notebooks' API and spawner form; the team's shared volume.
                     ("CustomResourceDefinition", "notebooks.kubeflow.org"),
                     ("ConfigMap", "jupyter-web-app-config"),
                     ("StorageClass", "efs-sc"), ("PersistentVolumeClaim", "team-shared")]:
        assert expected in kinds
    monitoring = _build(dev_env, "manifests/monitoring")
    assert {d["kind"] for d in monitoring} == {"PodMonitor", "PrometheusRule"}
    assert all(d["metadata"]["namespace"] == NAMESPACE for d in monitoring)
    serving = _find(production, "Namespace", "kakehashi-serving")
    assert serving["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_operator_deployment_runs_as_the_service_account_with_probe_and_metrics(
    learning_install: list[dict[str, Any]],
) -> None:
    deployment = _find(learning_install, "Deployment", "kakehashi-operator")
    assert deployment["metadata"]["namespace"] == NAMESPACE
    # A leader and a standby, decided by the Lease; each names itself by its pod.
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == SERVICE_ACCOUNT
    (container,) = pod["containers"]
    args = container["args"]
    assert "--leader-election" in args
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    budget = _find(learning_install, "PodDisruptionBudget", "kakehashi-operator")
    assert budget["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert f"--metrics-port={ports['metrics']}" in args
    probe = container["livenessProbe"]["httpGet"]
    assert f"--liveness=http://0.0.0.0:{ports[probe['port']]}{probe['path']}" in args
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # The user's settings reach the operator from the overlay's one ConfigMap.
    settings_ref = container["envFrom"][0]["configMapRef"]["name"]
    settings = _find(learning_install, "ConfigMap", settings_ref)
    assert settings["metadata"]["namespace"] == NAMESPACE
    assert {"KAKEHASHI_MODEL_BUCKET", "AWS_REGION", "KAKEHASHI_BAKE_IMAGE"} <= set(settings["data"])
    assert not {e["name"] for e in container.get("env", [])} & set(settings["data"]), "env would shadow the settings"


def test_cluster_role_grants_exactly_what_the_code_uses(learning_install: list[dict[str, Any]]) -> None:
    role = _find(learning_install, "ClusterRole", "kakehashi-operator")
    granted, needed = _granted(role), _needed()
    assert not needed - granted, f"the operator needs rights the ClusterRole lacks: {sorted(needed - granted)}"
    assert not granted - needed, f"the ClusterRole grants what no code uses: {sorted(granted - needed)}"
    binding = _find(learning_install, "ClusterRoleBinding", "kakehashi-operator")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}]
    leader = _find(learning_install, "Role", LEADER_ROLE)
    assert leader["metadata"]["namespace"] == NAMESPACE
    granted_leader = {(group, resource, verb, name) for rule in leader["rules"]
                      for group in rule["apiGroups"] for resource in rule["resources"]
                      for verb in rule["verbs"] for name in rule.get("resourceNames") or [""]}
    assert granted_leader == LEADER_NEEDS
    leader_binding = _find(learning_install, "RoleBinding", LEADER_ROLE)
    assert leader_binding["metadata"]["namespace"] == NAMESPACE
    assert leader_binding["roleRef"]["name"] == LEADER_ROLE
    assert leader_binding["subjects"] == binding["subjects"]


def _exists(env: Any, kind: str, name: str) -> bool:
    return _kubectl(env, "get", kind, name, "--ignore-not-found", "-o", "name", check=False).stdout.strip() != ""


@pytest.fixture(scope="module")
def installed_rbac(dev_env: Any, learning_install: list[dict[str, Any]]) -> Iterator[None]:
    """The install's namespaces and the operator's RBAC applied for real; what this created is removed."""
    namespaces = [d for d in learning_install if d["kind"] == "Namespace"]
    rbac = [d for d in learning_install
            if d["kind"] in ("ClusterRole", "ClusterRoleBinding")
            or (d["kind"] in ("Role", "RoleBinding") and d["metadata"]["name"] == LEADER_ROLE)
            or (d["kind"] == "ServiceAccount" and d["metadata"]["name"] == SERVICE_ACCOUNT)]
    created_namespaces = [d["metadata"]["name"] for d in namespaces if not _exists(dev_env, "namespace", d["metadata"]["name"])]
    created_cluster = [(d["kind"].lower(), d["metadata"]["name"]) for d in rbac
                       if d["kind"] != "ServiceAccount" and not _exists(dev_env, d["kind"].lower(), d["metadata"]["name"])]
    try:
        _kubectl(dev_env, "apply", "--server-side", "--field-manager=kakehashi-install-test", "-f", "-",
                 stdin=yaml.safe_dump_all(namespaces + rbac))
        yield
    finally:
        for kind, name in created_cluster:
            _kubectl(dev_env, "delete", kind, name, "--ignore-not-found", check=False)
        for name in created_namespaces:
            _kubectl(dev_env, "delete", "namespace", name, "--ignore-not-found", "--wait=false", check=False)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and any(_exists(dev_env, "namespace", n) for n in created_namespaces):
            time.sleep(1)


def test_learning_install_is_accepted_by_the_api_server(
    dev_env: Any, installed_rbac: None, learning_install: list[dict[str, Any]]
) -> None:
    result = _kubectl(dev_env, "apply", "--server-side", "--dry-run=server", "--force-conflicts",
                      "--field-manager=kakehashi-install-test", "-f", "-",
                      stdin=yaml.safe_dump_all(learning_install), check=False)
    assert result.returncode == 0, f"the API server refused the learning install:\n{result.stderr}"
    applied = result.stdout.count("serverside-applied")
    assert applied == len(learning_install), result.stdout
    # kakehashi-system warns on Pod Security `restricted`: the operator's pod must not trip it.
    assert "PodSecurity" not in result.stderr, result.stderr


def _allowed(api: Any, verb: str, group: str, resource: str, namespace: str, name: str = "") -> bool:
    plural, _, subresource = resource.partition("/")
    review = client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
        user=USER, groups=GROUPS,
        resource_attributes=client.V1ResourceAttributes(
            verb=verb, group=group, resource=plural, subresource=subresource or None, namespace=namespace or None,
            name=name or None),
    ))
    answer = client.AuthorizationV1Api(api).create_subject_access_review(review)
    return bool(answer.status.allowed)


def test_operator_can_do_everything_its_code_does(learning: Any, installed_rbac: None) -> None:
    cluster_scoped = {"customresourcedefinitions"}
    missing = [
        f"{verb} {n.group or 'core'}/{n.resource} ({n.modules})"
        for n in NEEDS for verb in n.verbs
        for namespace in ([""] if n.resource in cluster_scoped else [PROBE_NAMESPACE, ""])
        if not _allowed(learning, verb, n.group, n.resource, namespace)
    ]
    missing += [f"{verb} {group}/{resource} {name} in {NAMESPACE} (control/leader.py)"
                for group, resource, verb, name in sorted(LEADER_NEEDS)
                if not _allowed(learning, verb, group, resource, NAMESPACE, name)]
    assert not missing, "the operator's ServiceAccount is refused:\n" + "\n".join(missing)


def test_operator_cannot_do_what_it_should_not(dev_env: Any, learning: Any, installed_rbac: None) -> None:
    granted = [f"{verb} {group or 'core'}/{resource} in {namespace or 'the cluster'}"
               for verb, group, resource, namespace in FORBIDDEN
               if _allowed(learning, verb, group, resource, namespace)]
    # Its own namespace's other Leases: the Role names one.
    granted += [f"{verb} lease kakehashi-other in {NAMESPACE}" for verb in ("get", "update")
                if _allowed(learning, verb, "coordination.k8s.io", "leases", NAMESPACE, "kakehashi-other")]
    assert not granted, "the operator's ServiceAccount may:\n" + "\n".join(granted)
    # The same answer a person gets from kubectl, impersonating the ServiceAccount.
    answer = _kubectl(dev_env, "auth", "can-i", "list", "secrets", "--all-namespaces", f"--as={USER}", check=False)
    assert (answer.returncode, answer.stdout.strip()) == (1, "no")
    answer = _kubectl(dev_env, "auth", "can-i", "get", "secret/kakehashi-gitops", "-n", PROBE_NAMESPACE,
                      f"--as={USER}", check=False)
    assert (answer.returncode, answer.stdout.strip()) == (0, "yes")


def _service_account_kubeconfig(env: Any, path: Path) -> Path:
    """A kubeconfig that authenticates as the operator's ServiceAccount (a bound token)."""
    token = _kubectl(env, "create", "token", SERVICE_ACCOUNT, "-n", NAMESPACE, "--duration=1h").stdout.strip()
    admin = yaml.safe_load(Path(env.learning.kubeconfig).read_text())
    config = {**admin, "users": [{"name": "operator", "user": {"token": token}}],
              "contexts": [{"name": "operator", "context": {"cluster": admin["clusters"][0]["name"], "user": "operator"}}],
              "current-context": "operator"}
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_operator_reconciles_as_its_service_account(
    dev_env: Any, learning: Any, namespace: str, installed_rbac: None, tmp_path: Path
) -> None:
    """Sufficient in practice: the operator itself, authenticated only as the ServiceAccount, runs a
    TrainingRun to a failure it explains (Job, pods, log, status, Event) and a ModelService through
    its finalizer, and the API server refuses none of its calls."""
    from trainingruns import Runs, wait_for

    from kakehashi import GROUP, VERSION
    from kakehashi.dev.operator import LocalOperator, install_crds

    if os.environ.get("KAKEHASHI_TEST_OPERATOR") == "in-cluster":
        pytest.skip("the session's operator runs in the cluster as this ServiceAccount already (and holds the Lease)")

    install_crds(dev_env)
    kubeconfig = _service_account_kubeconfig(dev_env, tmp_path / "operator.kubeconfig")
    log = tmp_path / "operator.log"
    # With the Deployment's leader election, on the Deployment's Lease: it is created (or taken),
    # renewed and released as the ServiceAccount too.
    operator = LocalOperator(dev_env, log, extra_env={
        "KUBECONFIG": str(kubeconfig), "KAKEHASHI_LEADER_ELECTION": "true",
        "KAKEHASHI_LEADER_ELECTION_NAMESPACE": NAMESPACE, "KAKEHASHI_LEADER_ELECTION_LEASE": LEASE})
    operator.start()
    try:
        runs = Runs(learning, namespace)
        runs.create("rbac", {"runPolicy": {"backoffLimit": 0}}, pod_annotations={
            "kwok.kakehashi.dev/outcome": "fail", "kwok.kakehashi.dev/exit-code": "3",
            "kwok.kakehashi.dev/log-tail": "ValueError: bad input"})
        status = runs.wait_phase("rbac", "Failed", "Succeeded", timeout=90)
        assert (status["phase"], status["reason"]) == ("Failed", "NonZeroExitCode"), status
        wait_for(lambda: any(e.reason == "RunFailed" for e in runs.events("rbac")), 15, "the RunFailed Event")
        wait_for(lambda: all(not (p.metadata.finalizers or []) for p in runs.pods("rbac")), 30,
                 "the pods' status-capture finalizer removed")

        custom = client.CustomObjectsApi(learning)
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modelservices", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelService", "metadata": {"name": "rbac"},
            "spec": {"model": {"trainingRun": "not-there"}, "servingImage": "example.invalid/serving:1",
                     "registry": "example.invalid/models", "delivery": {
                         "mode": "direct", "direct": {"kubeconfigSecret": {"name": "production"},
                                                      "namespace": "serving"}}}})

        def service() -> dict[str, Any]:
            body: dict[str, Any] = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "modelservices", "rbac")
            return body

        wait_for(lambda: (service().get("status") or {}).get("reason") == "TrainingRunNotFound", 60,
                 "the ModelService waiting for its TrainingRun")
        assert service()["metadata"].get("finalizers"), "the operator did not add its finalizer"
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "modelservices", "rbac")

        def gone() -> bool:
            try:
                service()
            except client.ApiException as error:
                return error.status == 404
            return False

        wait_for(gone, 60, "the ModelService deleted (the operator removed its finalizer)")
    finally:
        operator.stop()
    lease = client.CoordinationV1Api(learning).read_namespaced_lease(LEASE, NAMESPACE)
    assert lease.spec.holder_identity in ("", None), "a clean stop hands the Lease back"
    text = log.read_text()
    assert "Acquired the leader Lease" in text and "Released the leader Lease" in text
    refused = [line for line in text.splitlines()
               if "Forbidden" in line or "403" in line or "Not enough permissions" in line]
    assert not refused, "the API server refused calls of the operator:\n" + "\n".join(refused)[:3000]


@pytest.fixture(scope="module")
def notebook_crd(dev_env: Any, learning: Any, learning_install: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The install's Notebook CRD applied for real (CRDs first: a Notebook is accepted only once
    its API is served); removed again if this created it."""
    from kakehashi.dev.clusters import wait_crd_established

    crd = _find(learning_install, "CustomResourceDefinition", "notebooks.kubeflow.org")
    created = not _exists(dev_env, "crd", crd["metadata"]["name"])
    _kubectl(dev_env, "apply", "--server-side", "--field-manager=kakehashi-install-test", "-f", "-",
             stdin=yaml.safe_dump(crd))
    wait_crd_established(learning, crd["metadata"]["name"], timeout=30)
    yield crd
    if created:
        _kubectl(dev_env, "delete", "crd", crd["metadata"]["name"], "--ignore-not-found", check=False)


def _spawned_notebook(form: dict[str, Any], group: str, name: str) -> dict[str, Any]:
    """A Notebook as Kubeflow's web app makes it from the form's defaults for `group`."""
    annotations = {"notebooks.kubeflow.org/http-rewrite-uri": "/"} if group == "imageGroupOne" else {}
    (data,) = form["dataVolumes"]["value"]
    return {
        "apiVersion": "kubeflow.org/v1", "kind": "Notebook",
        "metadata": {"name": name, "annotations": annotations, "labels": {"app": name}},
        "spec": {"template": {"spec": {
            "serviceAccountName": "default-editor",
            "containers": [{"name": name, "image": form[group]["value"],
                            "resources": {"requests": {"cpu": form["cpu"]["value"], "memory": form["memory"]["value"]}},
                            "volumeMounts": [{"name": "shared", "mountPath": data["mount"]}]}],
            "volumes": [{"name": "shared", **data["existingSource"]}],
        }}},
    }


@pytest.mark.parametrize("group", ["image", "imageGroupOne"])
def test_a_spawned_notebook_is_accepted_and_one_without_an_image_refused(
    learning: Any, learning_install: list[dict[str, Any]], notebook_crd: dict[str, Any], namespace: str, group: str,
) -> None:
    config = _find(learning_install, "ConfigMap", "jupyter-web-app-config")
    form = yaml.safe_load(config["data"]["spawner_ui_config.yaml"])["spawnerFormDefaults"]
    notebook = _spawned_notebook(form, group, "ada")
    custom = client.CustomObjectsApi(learning)
    # Straight to the API (no kubectl discovery cache that may predate the CRD); dry run only:
    # no notebook-controller here to act on it.
    custom.create_namespaced_custom_object("kubeflow.org", "v1", namespace, "notebooks", notebook, dry_run="All")
    del notebook["spec"]["template"]["spec"]["containers"][0]["image"]
    with pytest.raises(client.ApiException) as refused:
        custom.create_namespaced_custom_object("kubeflow.org", "v1", namespace, "notebooks", notebook, dry_run="All")
    assert refused.value.status == 422 and "image" in str(refused.value.body), refused.value.body
