"""Turn a pydantic model's JSON Schema into a Kubernetes structural OpenAPI v3 schema.

The API server only accepts a subset of JSON Schema in a CRD: no `$ref`, no `anyOf` that
changes the type, no `additionalProperties: false`, no `null` type. Generating the CRD from the
models (instead of writing both by hand) is what keeps them from disagreeing.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

# Keys the API server accepts in a structural schema, beyond `properties`/`items`.
_KEPT = {
    "type", "description", "default", "enum", "format", "pattern", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "minItems", "maxItems",
    "minProperties", "maxProperties", "required", "x-kubernetes-validations",
    "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-map-type",
}
_SCALARS = {"string", "integer", "number", "boolean"}


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI v3 schema of `model` (by alias, as it is written in YAML)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _convert(raw, raw.get("$defs", {}))


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        # Keys beside a $ref (description, default) win over the referenced definition's.
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _convert(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    node = _resolve(node, defs)
    extra = {k: v for k, v in node.items() if k not in ("anyOf", "$defs")}
    if "anyOf" in node:
        branches = [_resolve(b, defs) for b in node["anyOf"]]
        non_null = [b for b in branches if b.get("type") != "null"]
        types = {b.get("type") for b in non_null}
        if len(non_null) == 1:
            # Optional[X]: the API server has no null type; leaving the field out means None.
            node = {**non_null[0], **extra}
        elif types == {"integer", "string"}:
            string = next(b for b in non_null if b.get("type") == "string")
            out: dict[str, Any] = {
                "x-kubernetes-int-or-string": True,
                "anyOf": [{"type": "integer"}, {"type": "string"}],
                **{k: string[k] for k in ("pattern", "maxLength") if k in string},
            }
            return _drop_null_default({**out, **_copy_kept(extra)})
        elif types <= _SCALARS:
            # A scalar of any type (hyperparameter values): the API server cannot express the
            # union, so it keeps the value as given and a CEL rule on the map checks it is scalar.
            return _drop_null_default({"x-kubernetes-preserve-unknown-fields": True, **_copy_kept(extra)})
        else:
            raise ValueError(f"cannot express anyOf {node['anyOf']} in a structural schema")
    if "const" in node:
        node = {**node, "enum": [node["const"]]}
    out = _drop_null_default(_copy_kept(node))
    if "type" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        if "enum" in node:
            out["type"] = "string"
        else:
            raise ValueError(f"no type in {node}")
    if "properties" in node:
        props: dict[str, Any] = {}
        for name, sub in node["properties"].items():
            converted = _convert(sub, defs)
            # A nested object with its own defaults must exist for the API server to fill them.
            if (
                converted.get("type") == "object"
                and "properties" in converted
                and name not in node.get("required", [])
                and "default" not in converted
                and not _nullable(sub, defs)
            ):
                converted["default"] = filled_default(converted)
            props[name] = converted
        out["properties"] = props
    elif out.get("type") == "object" and isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = _convert(node["additionalProperties"], defs)
    if "items" in node:
        out["items"] = _convert(node["items"], defs)
    return out


def _copy_kept(node: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in node.items() if k in _KEPT}


def _nullable(node: dict[str, Any], defs: dict[str, Any]) -> bool:
    node = _resolve(node, defs)
    return any(_resolve(b, defs).get("type") == "null" for b in node.get("anyOf", []))


def _drop_null_default(node: dict[str, Any]) -> dict[str, Any]:
    # Optional fields default to None in the models; in the API server that is simply absence.
    if "default" in node and node["default"] is None:
        del node["default"]
    return node


def filled_default(schema: dict[str, Any]) -> dict[str, Any]:
    """The object the API server would build from `{}`: its CEL rules validate defaults as
    written, without applying nested defaults first, so a default must already be complete."""
    out: dict[str, Any] = {}
    for name, sub in (schema.get("properties") or {}).items():
        if "default" in sub:
            out[name] = sub["default"]
    return out
