"""Helpers for ModelService cluster tests: apply services, wait for what a user waits for,
predict through the production Service, and put small real models in S3."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kubernetes import client
from trainingruns import wait_for

from kakehashi import GROUP, VERSION
from kakehashi.dev import node
from kakehashi.dev.operator import create_team_secrets
from kakehashi.modelformat import ModelArtifact
from kakehashi.modelformat.compiled import source_digest


class Services:
    def __init__(self, api: Any, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.namespace = namespace

    def create(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelService", "metadata": {"name": name}, "spec": spec}
        created: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "modelservices", body)
        return created

    def apply(self, name: str, spec: dict[str, Any]) -> None:
        """Create, or replace the spec of, the service `name`."""
        try:
            self.create(name, spec)
        except client.exceptions.ApiException as error:
            if error.status != 409:
                raise
            self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, "modelservices", name,
                                                       {"spec": spec})

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, "modelservices", name)

    def status(self, name: str) -> dict[str, Any]:
        body = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, "modelservices", name)
        return dict(body.get("status") or {})

    def wait(self, name: str, predicate: Any, timeout: float, what: str) -> dict[str, Any]:
        last: dict[str, Any] = {}

        def check() -> Any:
            nonlocal last
            last = self.status(name)
            return predicate(last) and last

        try:
            result: dict[str, Any] = wait_for(check, timeout, what)
        except AssertionError as error:
            raise AssertionError(f"{error}; status: {json.dumps(last, indent=1)[:3000]}") from None
        return result

    def bake_jobs(self, batch: Any, name: str) -> list[Any]:
        return list(batch.list_namespaced_job(self.namespace, label_selector=f"{GROUP}/modelservice={name}").items)


def prepare_namespace(learning: Any, namespace: str, dev_env: Any) -> None:
    """The Secrets a team creates once: S3 credentials for bake Jobs, the production kubeconfig
    (one its pods can use when the operator runs in the cluster: tests/cluster/conftest.py)."""
    create_team_secrets(dev_env, namespace, for_pods=os.environ.get("KAKEHASHI_TEST_OPERATOR") == "in-cluster")


def service_spec(dev_env: Any, production_namespace: str, repository: str, **extra: Any) -> dict[str, Any]:
    """A service on the production cluster's real node, delivered directly."""
    return {
        "servingImage": dev_env.images["serving"],
        "registry": f"{dev_env.registry}/{repository}",
        "replicas": 1,
        "resources": {"cpu": "250m", "memory": "512Mi"},
        "nodeSelector": node.SELECTOR,
        "tolerations": [node.TOLERATION],
        "delivery": {"mode": "direct", "direct": {"kubeconfigSecret": {"name": "production"},
                                                  "namespace": production_namespace}},
        **extra,
    }


def predict(production: Any, namespace: str, service: str, inputs: list[dict[str, Any]]) -> dict[str, Any]:
    """A v2 prediction through the Service (the API server's service proxy reaches its pods)."""
    path = f"/api/v1/namespaces/{namespace}/services/{service}:80/proxy/v2/models/{service}/infer"
    response = production.call_api(path, "POST", body={"inputs": inputs},
                                   header_params={"Content-Type": "application/json"},
                                   auth_settings=["BearerToken"], _preload_content=False, _request_timeout=30,
                                   _return_http_data_only=True)
    answer: dict[str, Any] = json.loads(response.data)
    return answer


def upload_model(s3: Any, bucket: str, prefix: str, directory: Path, metrics: dict[str, float]) -> dict[str, str]:
    """Put a model directory in S3 as a training run leaves it (model.json last); the
    ModelService `model` reference to it."""
    digest = source_digest(directory)
    uri = f"s3://{bucket}/{prefix.strip('/')}/"
    artifact = ModelArtifact.model_validate({"uri": uri, "digest": digest, "createdAt": "2026-11-26T10:00:00Z",
                                             "metrics": metrics})
    (directory / "model.json").write_text(artifact.model_dump_json(by_alias=True))
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != "model.json")
    for path in [*files, directory / "model.json"]:
        s3.upload_file(str(path), bucket, f"{prefix.strip('/')}/{path.relative_to(directory).as_posix()}")
    return {"uri": uri, "digest": digest}
