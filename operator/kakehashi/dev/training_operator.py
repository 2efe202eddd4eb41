"""The Kubeflow training-operator (TFJob controller) on the learning cluster, as a process."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import yaml

from kakehashi.control.client import api_client
from kakehashi.dev import tools
from kakehashi.dev.clusters import FIELD_MANAGER, wait_crd_established
from kakehashi.dev.layout import Layout
from kakehashi.dev.processes import Service

NAMESPACE = "kubeflow"
MODULE = "github.com/kubeflow/training-operator"
VERSION = "v1.9.0"
WEBHOOK_CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")  # fixed in training-operator


def crds() -> list[Path]:
    directory = tools.module_dir(MODULE, VERSION, "training-operator")
    return sorted((directory / "manifests" / "base" / "crds").glob("kubeflow.org_*.yaml"))


def install_prerequisites(layout: Layout) -> None:
    # The TFJob CRD is ~576 KB: past the 256 KiB last-applied annotation, so server-side only.
    args = ["apply", "--server-side", "--force-conflicts", f"--field-manager={FIELD_MANAGER}"]
    for crd in crds():
        args += ["-f", str(crd)]
    layout.kubectl("learning", *args)
    wait_crd_established(api_client(layout.kubeconfig("learning")), "tfjobs.kubeflow.org")
    # Its certificate rotator fills in this Secret and the webhook's caBundle, and the
    # controllers start only once it has. The API server cannot reach the webhook (no Service
    # endpoints for a local process), so the webhook fails open: TFJobs are validated by the
    # CRD schema only.
    manifests = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
         "metadata": {"name": "training-operator-webhook-cert", "namespace": NAMESPACE}},
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": "validator.training-operator.kubeflow.org"},
            "webhooks": [{
                "name": "validator.tfjob.training-operator.kubeflow.org",
                "admissionReviewVersions": ["v1"],
                "clientConfig": {"service": {
                    "name": "training-operator", "namespace": NAMESPACE,
                    "path": "/validate-kubeflow-org-v1-tfjob", "port": 443}},
                "failurePolicy": "Ignore",
                "timeoutSeconds": 2,
                "sideEffects": "None",
                "rules": [{"apiGroups": ["kubeflow.org"], "apiVersions": ["v1"],
                           "operations": ["CREATE", "UPDATE"], "resources": ["tfjobs"]}],
            }],
        },
    ]
    # The rotator owns the Secret's data and the caBundle afterwards: apply only our fields.
    layout.kubectl("learning", "apply", "--server-side", f"--field-manager={FIELD_MANAGER}",
                   "-f", "-", stdin=yaml.safe_dump_all(manifests))


def mount_webhook_certs(layout: Layout, timeout_s: float = 60.0) -> None:
    """Do what the kubelet's secret volume does in a real cluster: put the Secret's certs
    where the training-operator's webhook server reads them. Its certificate rotator fills
    the Secret, then waits for the files before it starts any controller."""
    from kubernetes import client

    core = client.CoreV1Api(api_client(layout.kubeconfig("learning")))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        secret = core.read_namespaced_secret("training-operator-webhook-cert", NAMESPACE)
        data = secret.data or {}
        if data.get("tls.crt") and data.get("tls.key"):
            WEBHOOK_CERT_DIR.mkdir(parents=True, exist_ok=True)
            for key, value in data.items():
                (WEBHOOK_CERT_DIR / key).write_bytes(base64.b64decode(value))
            return
        time.sleep(0.5)
    raise RuntimeError("training-operator did not fill its webhook certificate Secret in time")


def service(layout: Layout, binaries: dict[str, Path]) -> Service:
    ports = layout.ports
    return Service(
        name="training-operator",
        binary=binaries["training-operator"],
        args=[
            f"--metrics-bind-address=127.0.0.1:{ports['training-operator-metrics']}",
            f"--health-probe-bind-address=127.0.0.1:{ports['training-operator-health']}",
            f"--webhook-server-port={ports['training-operator-webhook']}",
            "--enable-scheme=tfjob",
            "--controller-threads=4",
            f"--kubeconfig={layout.kubeconfig('learning')}",
        ],
        run_dir=layout.root,
        health_url=f"http://127.0.0.1:{ports['training-operator-health']}/readyz",
        env={"MY_POD_NAMESPACE": NAMESPACE},
    )
