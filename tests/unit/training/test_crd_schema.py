"""The committed CRD is exactly what the models generate, and the schema is structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kakehashi.api import crds
from kakehashi.api.trainingrun import TrainingRunSpec

REPO = Path(__file__).resolve().parents[3]


def test_committed_crds_match_the_models() -> None:
    for filename, crd in crds.all_crds().items():
        committed = (REPO / "manifests" / "crds" / filename).read_text()
        assert committed == crds.render(crd), f"manifests/crds/{filename} is stale: run `kakehashi crds`"


def _walk(node: dict[str, Any], path: str = "") -> list[str]:
    """Every place that breaks the API server's structural-schema rules."""
    problems = []
    for bad in ("$ref", "$defs", "title", "additionalProperties", "const"):
        if bad in node and not (bad == "additionalProperties" and isinstance(node[bad], dict)):
            problems.append(f"{path}: {bad}")
    if "type" not in node and not (
        node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string")
    ):
        problems.append(f"{path}: no type")
    if node.get("default", 0) is None:
        problems.append(f"{path}: null default")
    for name, sub in (node.get("properties") or {}).items():
        problems += _walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        problems += _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        problems += _walk(node["additionalProperties"], f"{path}{{}}")
    return problems


DEFINITIONS = [crds.TRAININGRUN, crds.MODELSERVICE]


@pytest.mark.parametrize("definition", DEFINITIONS, ids=lambda d: d.kind)
def test_schema_is_structural(definition: crds.Definition) -> None:
    schema = crds.crd(definition)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _walk(schema) == []


@pytest.mark.parametrize("definition", DEFINITIONS, ids=lambda d: d.kind)
def test_every_spec_and_status_field_is_in_the_schema_and_back(definition: crds.Definition) -> None:
    schema = crds.crd(definition)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for part, model in (("spec", definition.spec), ("status", definition.status)):
        props = set(schema["properties"][part]["properties"])
        aliases = {f.alias or n for n, f in model.model_fields.items()}
        assert props == aliases, part


def test_schema_defaults_are_what_the_models_default_to() -> None:
    """A resource defaulted by the API server validates to the same spec the operator assumes."""
    spec_schema = crds.trainingrun_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]

    def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
        if value is None:
            value = schema.get("default")
        if isinstance(value, dict) and "properties" in schema:
            for key, sub in schema["properties"].items():
                filled = apply_defaults(sub, value.get(key))
                if filled is not None:
                    value[key] = filled
        return value

    defaulted = apply_defaults(spec_schema, {})
    assert TrainingRunSpec.model_validate(defaulted) == TrainingRunSpec()
    assert defaulted["replicas"] == {"chief": 0, "worker": 1, "ps": 0, "evaluator": 0}
    assert defaulted["runPolicy"]["backoffLimit"] == 0


def test_crd_kustomization_lists_the_crds() -> None:
    kustomization = yaml.safe_load((REPO / "manifests" / "crds" / "kustomization.yaml").read_text())
    assert kustomization["resources"] == sorted(crds.all_crds())
