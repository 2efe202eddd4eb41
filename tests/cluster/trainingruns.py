"""Helpers for TrainingRun cluster tests: create runs, wait for what a user would wait for."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kubernetes import client

from kakehashi import GROUP, VERSION


def real_digits_spec(dev_env: Any) -> dict[str, Any]:
    """The digits example trained for real on the learning cluster's real node (TensorFlow in
    the training image, the model to MinIO), gated on accuracy."""
    from kakehashi.dev import node

    return {
        "image": dev_env.images["training"],
        "command": ["python", "/opt/kakehashi/examples/digits/train.py"],
        "hyperparameters": {"epochs": 20, "learning_rate": 0.005},
        "gate": {"metric": "accuracy", "threshold": 0.8},
        "env": [{"name": "AWS_REGION", "value": dev_env.s3.region}],
        "resources": {"cpu": 1, "memory": "2Gi"},
        "nodeSelector": node.SELECTOR,
        "tolerations": [node.TOLERATION],
    }


def wait_for(predicate: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Runs:
    def __init__(self, api: Any, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.namespace = namespace

    def create(self, name: str, spec: dict[str, Any], *, pod_annotations: dict[str, str] | None = None) -> dict[str, Any]:
        spec = dict(spec)
        if pod_annotations:
            spec["podMetadata"] = {"annotations": pod_annotations}
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingRun", "metadata": {"name": name}, "spec": spec}
        created: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "trainingruns", body
        )
        return created

    def get(self, name: str) -> dict[str, Any]:
        run: dict[str, Any] = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, "trainingruns", name)
        return run

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, "trainingruns", name)

    def status(self, name: str) -> dict[str, Any]:
        return self.get(name).get("status") or {}

    def wait_phase(self, name: str, *phases: str, timeout: float = 60) -> dict[str, Any]:
        status: dict[str, Any] = wait_for(
            lambda: (s := self.status(name)).get("phase") in phases and s,
            timeout,
            f"TrainingRun {name} to reach {phases}",
        )
        return status

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        return next(c for c in self.status(name)["conditions"] if c["type"] == type_)

    def jobs(self, name: str) -> list[Any]:
        return list(self.batch.list_namespaced_job(self.namespace, label_selector=f"{GROUP}/trainingrun={name}").items)

    def pods(self, name: str) -> list[Any]:
        return list(self.core.list_namespaced_pod(self.namespace, label_selector=f"{GROUP}/trainingrun={name}").items)

    def tfjobs(self, name: str) -> list[dict[str, Any]]:
        result = self.custom.list_namespaced_custom_object(
            "kubeflow.org", "v1", self.namespace, "tfjobs", label_selector=f"{GROUP}/trainingrun={name}"
        )
        return list(result["items"])

    def events(self, name: str) -> list[Any]:
        return list(
            self.core.list_namespaced_event(self.namespace, field_selector=f"involvedObject.name={name}").items
        )
