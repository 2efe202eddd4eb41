"""The one layer that talks to the Kubernetes API, for every resource (the sync client, in threads).

Why the sync `kubernetes` client in a thread pool rather than `kubernetes_asyncio`: kopf already
owns the watches (on aiohttp); what is left are a few point reads and writes per reconcile, the
kubeflow-training models are written against the sync client, and the thread pool is measured
(benchmarks/operator_throughput.py) to keep up with the Job controller. Every call here blocks
and is only made from a worker thread, never on the event loop. Every call has a timeout, so a
hung API server becomes a `TimeoutError` that the queue retries, not a stuck reconcile.

Calls are generic over `Resource` (group, version, plural) through `ApiClient.call_api`, so a
new resource needs no new client code.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kakehashi.control.resources import PODS, SECRETS, Resource

TIMEOUT_S: Final = 30.0
MERGE_PATCH: Final = "application/merge-patch+json"
JSON_PATCH: Final = "application/json-patch+json"
APPLY_PATCH: Final = "application/apply-patch+yaml"


@dataclass(frozen=True)
class Secret:
    labels: dict[str, str] = field(default_factory=dict)
    data: dict[str, str] = field(default_factory=dict)  # decoded; never log or report these


def api_client(kubeconfig: Path | str | None = None, pool_size: int = 32) -> client.ApiClient:
    """An ApiClient: the given kubeconfig, else in-cluster, else KUBECONFIG / ~/.kube/config."""
    configuration = client.Configuration()
    if kubeconfig is not None:
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = pool_size
    return client.ApiClient(configuration)


class Kube:
    def __init__(self, api: client.ApiClient, timeout_s: float = TIMEOUT_S) -> None:
        self.api = api
        self.timeout_s = timeout_s

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        query: list[tuple[str, str]] | None = None,
        raw: bool = False,
    ) -> Any:
        response = self.api.call_api(
            path,
            method,
            query_params=query or [],
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _return_http_data_only=True,
            _request_timeout=self.timeout_s,
        )
        data = response.data
        if raw:
            return data.decode(errors="replace")
        return json.loads(data) if data else None

    def create(self, resource: Resource, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create; (object, created). A 409 means it exists already: that object is returned."""
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        try:
            return self._call("POST", resource.path(namespace), body), True
        except ApiException as error:
            if error.status != 409:
                raise
        existing = self.get(resource, namespace, name)
        if existing is None:  # deleted between the 409 and the read: a temporary state
            raise TimeoutError(f"{resource.kind} {namespace}/{name} vanished while being created")
        return existing, False

    def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self._call("GET", resource.path(namespace, name))
            return result
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def replace(self, resource: Resource, body: dict[str, Any]) -> dict[str, Any]:
        """PUT the whole object; with `metadata.resourceVersion` set, a 409 means someone else
        changed it since it was read (optimistic concurrency)."""
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        result: dict[str, Any] = self._call("PUT", resource.path(namespace, name), body)
        return result

    def list_objects(self, resource: Resource, namespace: str, label_selector: str = "") -> list[dict[str, Any]]:
        query = [("labelSelector", label_selector)] if label_selector else []
        result: dict[str, Any] = self._call("GET", resource.path(namespace), query=query)
        return list(result.get("items") or [])

    def pod_proxy_get(self, namespace: str, pod: str, port: int, path: str) -> str:
        """GET a pod's own HTTP endpoint through the API server (no route to pods needed)."""
        text: str = self._call("GET", f"{PODS.path(namespace, pod)}:{port}/proxy{path}", raw=True)
        return text

    def patch_status(
        self, resource: Resource, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any] | None:
        """JSON merge patch of the status subresource; None if the object is gone."""
        try:
            result: dict[str, Any] = self._call(
                "PATCH", resource.path(namespace, name, "status"), patch, content_type=MERGE_PATCH
            )
            return result
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def patch(self, resource: Resource, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any] | None:
        """JSON merge patch of the object itself; None if it is gone."""
        try:
            result: dict[str, Any] = self._call("PATCH", resource.path(namespace, name), patch, content_type=MERGE_PATCH)
            return result
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def apply(
        self, resource: Resource, body: dict[str, Any], *, field_manager: str, force: bool = True
    ) -> dict[str, Any]:
        """Server-side apply: the fields this manager owns become exactly `body`'s."""
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        query = [("fieldManager", field_manager), ("force", "true" if force else "false")]
        result: dict[str, Any] = self._call(
            "PATCH", resource.path(namespace, name), body, content_type=APPLY_PATCH, query=query
        )
        return result

    def delete(self, resource: Resource, namespace: str, name: str) -> bool:
        """Delete with background propagation; False if it was already gone."""
        try:
            self._call("DELETE", resource.path(namespace, name), {"propagationPolicy": "Background"})
            return True
        except ApiException as error:
            if error.status == 404:
                return False
            raise

    def remove_finalizer(
        self, resource: Resource, namespace: str, name: str, finalizers: list[str], finalizer: str
    ) -> None:
        """Remove one finalizer by index, guarded by a test op so a concurrent change is not lost."""
        index = finalizers.index(finalizer)
        patch = [
            {"op": "test", "path": f"/metadata/finalizers/{index}", "value": finalizer},
            {"op": "remove", "path": f"/metadata/finalizers/{index}"},
        ]
        try:
            self._call("PATCH", resource.path(namespace, name), patch, content_type=JSON_PATCH)
        except ApiException as error:
            if error.status not in (404, 422):  # gone, or changed underneath: the next event retries
                raise

    def log_tail(self, namespace: str, pod: str, container: str, lines: int) -> str:
        query = [("container", container), ("tailLines", str(lines))]
        try:
            text: str = self._call("GET", PODS.path(namespace, pod, "log"), query=query, raw=True)
            return text
        except Exception:  # no kubelet to ask (kwok, a lost node): the status says what it knows
            return ""

    def read_secret(self, namespace: str, name: str) -> Secret | None:
        """A Secret's labels and decoded data; None if it does not exist."""
        body = self.get(SECRETS, namespace, name)
        if body is None:
            return None
        data = {
            key: base64.b64decode(value).decode(errors="replace")
            for key, value in (body.get("data") or {}).items()
        }
        return Secret(labels=dict(body["metadata"].get("labels") or {}), data=data)
