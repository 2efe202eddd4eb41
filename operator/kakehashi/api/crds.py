"""The CustomResourceDefinitions, generated from the resource models.

`kakehashi crds` writes them to `manifests/crds/`; a unit test fails when the committed files
differ from what the models generate, so the schema the API server enforces and the models the
operator validates with cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from kakehashi import GROUP, VERSION
from kakehashi.api import modelservice, trainingrun
from kakehashi.api.schema import filled_default, structural_schema

# Every child's name is derived from the resource's, and a TFJob replica's Service name
# (<run>-worker-12) or a canary Deployment (<service>-canary) must stay a 63-character DNS label.
MAX_NAME = 50
LABELS = {"app.kubernetes.io/name": "kakehashi", "app.kubernetes.io/part-of": "kakehashi"}


@dataclass(frozen=True)
class Definition:
    """What makes one resource's CRD: names, models, printer columns."""

    kind: str
    plural: str
    singular: str
    short_names: list[str]
    spec: type[BaseModel]
    status: type[BaseModel]
    description: str
    columns: list[dict[str, Any]] = field(default_factory=list)
    # The API server must see a defaulted spec even when the user omits it (immutable specs).
    default_spec: bool = False


def crd(definition: Definition) -> dict[str, Any]:
    spec_schema = structural_schema(definition.spec)
    status_schema = structural_schema(definition.status)
    if definition.default_spec:
        spec_schema["default"] = filled_default(spec_schema)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{definition.plural}.{GROUP}", "labels": dict(LABELS)},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": definition.kind,
                "listKind": f"{definition.kind}List",
                "plural": definition.plural,
                "singular": definition.singular,
                "shortNames": definition.short_names,
                "categories": ["kakehashi", "ml"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        *definition.columns,
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": definition.description,
                            "x-kubernetes-validations": [
                                {
                                    "rule": f"self.metadata.name.size() <= {MAX_NAME}",
                                    "message": f"metadata.name: at most {MAX_NAME} characters (the objects it "
                                    "creates derive their names from it)",
                                }
                            ],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                            "required": ["spec"],
                        }
                    },
                }
            ],
        },
    }


TRAININGRUN = Definition(
    kind=trainingrun.KIND,
    plural=trainingrun.PLURAL,
    singular=trainingrun.SINGULAR,
    short_names=trainingrun.SHORT_NAMES,
    spec=trainingrun.TrainingRunSpec,
    status=trainingrun.TrainingRunStatus,
    description="A request to train one model, and the truth about how it went.",
    columns=[
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1},
        {"name": "Model", "type": "string", "jsonPath": ".status.model.uri"},
        {"name": "Promotable", "type": "string",
         "jsonPath": ".status.conditions[?(@.type==\"Promotable\")].status"},
    ],
    default_spec=True,
)

MODELSERVICE = Definition(
    kind=modelservice.KIND,
    plural=modelservice.PLURAL,
    singular=modelservice.SINGULAR,
    short_names=modelservice.SHORT_NAMES,
    spec=modelservice.ModelServiceSpec,
    status=modelservice.ModelServiceStatus,
    description="A model served on the production cluster from an image that contains it.",
    columns=[
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1},
        {"name": "Model", "type": "string", "jsonPath": ".status.modelDigest"},
        {"name": "Image", "type": "string", "jsonPath": ".status.image"},
        {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
    ],
)


def trainingrun_crd() -> dict[str, Any]:
    return crd(TRAININGRUN)


def modelservice_crd() -> dict[str, Any]:
    return crd(MODELSERVICE)


def all_crds() -> dict[str, dict[str, Any]]:
    """File name under manifests/crds/ → CRD document."""
    return {"trainingruns.yaml": trainingrun_crd(), "modelservices.yaml": modelservice_crd()}


def render(crd: dict[str, Any]) -> str:
    header = "# Generated by `kakehashi crds` from operator/kakehashi/api/: do not edit by hand.\n"
    return header + yaml.safe_dump(crd, sort_keys=False, width=120)


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, crd in all_crds().items():
        path = directory / filename
        path.write_text(render(crd))
        written.append(path)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": sorted(all_crds()),
    }
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    return written
