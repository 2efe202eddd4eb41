"""The API server itself refuses an invalid TrainingRun, with a message naming the field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from trainingruns import Runs


@pytest.fixture
def runs(learning: Any, namespace: str, operator: Any) -> Runs:
    return Runs(learning, namespace)


def refusal(runs: Runs, spec: dict[str, Any], name: str = "bad") -> str:
    with pytest.raises(ApiException) as info:
        runs.create(name, spec)
    assert info.value.status == 422, info.value.body
    message: str = json.loads(info.value.body)["message"]
    return message


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"replicas": {"worker": 0}}, "spec.replicas", "at least one chief or worker"),
        ({"replicas": {"worker": 0, "chief": 0, "ps": 1}}, "spec.replicas", "need a chief or a worker"),
        ({"replicas": {"chief": 1, "worker": 0, "ps": 2}}, "spec.replicas", "replicas.ps needs replicas.worker"),
        ({"replicas": {"chief": 2}}, "spec.replicas.chief", "less than or equal to 1"),
        ({"data": {"uri": "ftp://host/data"}}, "spec.data.uri", "should match"),
        ({"output": {"uri": "gs://bucket/x"}}, "spec.output.uri", "should match"),
        ({"runPolicy": {"backoffLimit": -1}}, "spec.runPolicy.backoffLimit", "greater than or equal to 0"),
        ({"runPolicy": {"cleanPodPolicy": "Sometimes"}}, "spec.runPolicy.cleanPodPolicy", "Unsupported value"),
        ({"resources": {"memory": "lots"}}, "spec.resources.memory", "should match"),
        ({"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}, "spec.tolerations[0]", "operator Exists takes no value"),
        ({"gate": {"threshold": 0.9}}, "spec.gate.metric", "Required value"),
        ({"source": {"git": {"url": "https://git.example/r.git", "path": "../etc"}}}, "spec.source.git.path", "relative path"),
        ({"podMetadata": {"labels": {"bad key!": "x"}}}, "spec.podMetadata.labels", "qualified names"),
        ({"podMetadata": {"labels": {"team": "not a value!"}}}, "spec.podMetadata.labels.team", "should match"),
        ({"podMetadata": {"annotations": {"-x/y": "v"}}}, "spec.podMetadata.annotations", "qualified names"),
    ],
)
def test_invalid_spec_is_refused_naming_the_field(runs: Runs, spec: dict[str, Any], field: str, words: str) -> None:
    message = refusal(runs, spec)
    assert field in message and words in message, message


def test_a_long_name_is_refused(runs: Runs) -> None:
    message = refusal(runs, {}, name="x" * 51)
    assert "metadata.name: at most 50 characters" in message


def test_defaults_are_filled_by_the_api_server(runs: Runs) -> None:
    created = runs.create("defaults", {"hyperparameters": {"epochs": 3, "lr": 0.001, "shuffle": True}})
    spec = created["spec"]
    assert spec["image"] == "kakehashi/notebook-jupyter:0.1.0"
    assert spec["replicas"] == {"chief": 0, "worker": 1, "ps": 0, "evaluator": 0}
    assert spec["runPolicy"] == {"backoffLimit": 0, "cleanPodPolicy": "None"}
    assert spec["hyperparameters"] == {"epochs": 3, "lr": 0.001, "shuffle": True}


def test_spec_edits_after_creation_are_refused(runs: Runs) -> None:
    """A run is the record of what trained: editing it is refused, with the way forward named."""
    runs.create("immutable", {"image": "train:1"}, pod_annotations={"kwok.kakehashi.dev/outcome": "run"})
    with pytest.raises(ApiException) as info:
        runs.custom.patch_namespaced_custom_object(
            "kakehashi.dev", "v1alpha1", runs.namespace, "trainingruns", "immutable",
            {"spec": {"image": "train:2", "replicas": {"worker": 4}}},
        )
    assert info.value.status == 422
    message = json.loads(info.value.body)["message"]
    assert "spec is immutable" in message and "create a new TrainingRun" in message
    assert runs.get("immutable")["spec"]["image"] == "train:1"


def test_hyperparameter_edits_are_refused_too(runs: Runs) -> None:
    """The untyped hyperparameter map is covered by the spec's immutability rule as well."""
    runs.create("edited", {"hyperparameters": {"epochs": 3}}, pod_annotations={"kwok.kakehashi.dev/outcome": "run"})
    with pytest.raises(ApiException) as info:
        runs.custom.patch_namespaced_custom_object(
            "kakehashi.dev", "v1alpha1", runs.namespace, "trainingruns", "edited",
            {"spec": {"hyperparameters": {"epochs": 30}}},
        )
    assert info.value.status == 422 and "spec is immutable" in json.loads(info.value.body)["message"]
    assert runs.get("edited")["spec"]["hyperparameters"] == {"epochs": 3}


def test_nested_hyperparameters_fail_the_run_naming_the_field(runs: Runs) -> None:
    runs.create("nested", {"hyperparameters": {"layers": [64, 32]}})
    status = runs.wait_phase("nested", "Failed")
    assert status["reason"] == "InvalidSpec"
    assert "spec.hyperparameters.layers" in status["message"]
    assert not runs.jobs("nested")
