"""The thin layer that talks to the Kubernetes API for the operator (the sync client, in threads).

Everything here is blocking and is only ever called through `asyncio.to_thread` (or the
operator's executor), so the kopf event loop never waits on the network.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kakehashi import GROUP, VERSION
from kakehashi.api.trainingrun import PLURAL


def api_client(pool_size: int = 32) -> client.ApiClient:
    """An ApiClient for in-cluster or KUBECONFIG use, with a pool as wide as our thread pool."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = pool_size
    return client.ApiClient(configuration)


def _json(response: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(response.data)
    return data


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def create_child(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create a Job or TFJob; (object, created). A 409 means it exists: return that one."""
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        try:
            if body["kind"] == "Job":
                created = self.batch.create_namespaced_job(ns, body, _preload_content=False)
            else:
                created = self.custom.create_namespaced_custom_object(
                    "kubeflow.org", "v1", ns, "tfjobs", body, _preload_content=False
                )
            return _json(created), True
        except ApiException as exc:
            if exc.status != 409:
                raise
        existing = self.get_child(body["kind"], ns, name)
        if existing is None:  # deleted between the 409 and the read: the next reconcile retries
            raise RuntimeError(f"{body['kind']} {ns}/{name} vanished while being created")
        return existing, False

    def get_child(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            if kind == "Job":
                return _json(self.batch.read_namespaced_job(name, namespace, _preload_content=False))
            return _json(
                self.custom.get_namespaced_custom_object(
                    "kubeflow.org", "v1", namespace, "tfjobs", name, _preload_content=False
                )
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch_run_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, patch
            )
            return result
        except ApiException as exc:
            if exc.status == 404:  # the run was deleted meanwhile
                return None
            raise

    def remove_pod_finalizer(self, namespace: str, name: str, finalizers: list[str], finalizer: str) -> None:
        """Remove one finalizer by index, guarded by a test op so a concurrent change is not lost."""
        index = finalizers.index(finalizer)
        patch = [
            {"op": "test", "path": f"/metadata/finalizers/{index}", "value": finalizer},
            {"op": "remove", "path": f"/metadata/finalizers/{index}"},
        ]
        try:
            self.core.patch_namespaced_pod(name, namespace, patch)
        except ApiException as exc:
            if exc.status not in (404, 422):  # gone, or changed underneath: the next event retries
                raise

    def log_tail(self, namespace: str, pod: str, container: str, lines: int) -> str:
        try:
            text: str = self.core.read_namespaced_pod_log(
                pod, namespace, container=container, tail_lines=lines, _request_timeout=5
            )
            return text
        except Exception:  # no kubelet to ask (kwok, a lost node): the status says what it knows
            return ""

    def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        try:
            secret = self.core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        raw = (secret.data or {}).get(key)
        return base64.b64decode(raw).decode() if raw else None
