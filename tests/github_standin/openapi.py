"""Validation of requests and responses against the vendored OpenAPI 3.0 subset.

A small validator of the schema keywords the subset uses; `Spec` refuses to load a subset with
a keyword it does not know, so a regenerated subset can never be validated only in part.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

SUBSET: Final = Path(__file__).with_name("openapi-subset.json")

CHECKED: Final = {
    "type", "nullable", "properties", "required", "additionalProperties", "items", "enum",
    "oneOf", "anyOf", "allOf", "$ref", "minimum", "maximum", "minLength", "maxLength",
    "minItems", "maxItems", "pattern",
}
# Annotations: they say nothing a validator must check.
IGNORED: Final = {"format", "default", "deprecated", "examples", "example", "readOnly", "writeOnly"}


@dataclass(frozen=True)
class Operation:
    method: str
    template: str
    spec: dict[str, Any]


class Spec:
    def __init__(self, path: Path = SUBSET) -> None:
        self.doc: dict[str, Any] = json.loads(path.read_text())
        self._routes: list[tuple[re.Pattern[str], str, str]] = []
        for template, methods in self.doc["paths"].items():
            pattern = re.compile("^" + re.sub(r"\\\{([a-z_]+)\\\}", r"(?P<\1>[^/]+)", re.escape(template)) + "$")
            for method in methods:
                self._routes.append((pattern, method, template))
        for name, schema in self.doc["components"].get("schemas", {}).items():
            self._check_keywords(schema, f"#/components/schemas/{name}")

    def _check_keywords(self, schema: Any, where: str) -> None:
        if not isinstance(schema, dict):
            return
        unknown = {k for k in schema if k not in CHECKED | IGNORED and not k.startswith("x-")}
        if unknown:
            raise ValueError(f"{where}: schema keywords the validator does not check: {sorted(unknown)}")
        for name, sub in (schema.get("properties") or {}).items():
            self._check_keywords(sub, f"{where}/properties/{name}")
        for key in ("items", "additionalProperties"):
            self._check_keywords(schema.get(key), f"{where}/{key}")
        for key in ("oneOf", "anyOf", "allOf"):
            for i, sub in enumerate(schema.get(key) or []):
                self._check_keywords(sub, f"{where}/{key}/{i}")

    def resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            _, _, kind, name = node["$ref"].split("/", 3)
            node = self.doc["components"][kind][name]
        return node

    def match(self, method: str, path: str) -> tuple[Operation, dict[str, str]] | None:
        for pattern, op_method, template in self._routes:
            found = pattern.match(path)
            if found and op_method == method.lower():
                return Operation(op_method, template, self.doc["paths"][template][op_method]), found.groupdict()
        return None

    # ---- requests ---------------------------------------------------------------------------

    def check_request(
        self, operation: Operation, path_params: dict[str, str], query: dict[str, str], body: Any
    ) -> list[str]:
        errors: list[str] = []
        declared = {}
        for parameter in operation.spec.get("parameters", []):
            parameter = self.resolve(parameter)
            declared[(parameter["in"], parameter["name"])] = parameter
        for name, value in path_params.items():
            param = declared.get(("path", name))
            if param is None:
                errors.append(f"path parameter {name} not declared")
            else:
                errors += self.validate(param["schema"], _coerce(value, param["schema"]), f"path {name}")
        for name, value in query.items():
            param = declared.get(("query", name))
            if param is None:
                errors.append(f"query parameter {name} not declared for {operation.method} {operation.template}")
            else:
                errors += self.validate(param["schema"], _coerce(value, param["schema"]), f"query {name}")
        request_body = operation.spec.get("requestBody")
        if request_body is None:
            if body is not None:
                errors.append("a body was sent to an operation that takes none")
        else:
            request_body = self.resolve(request_body)
            if body is None:
                if request_body.get("required"):
                    errors.append("the required request body is missing")
            else:
                schema = request_body["content"]["application/json"]["schema"]
                errors += self.validate(schema, body, "request body")
        return errors

    # ---- responses --------------------------------------------------------------------------

    def check_response(self, operation: Operation, status: int, body: Any) -> list[str]:
        response = operation.spec["responses"].get(str(status))
        if response is None:
            return [f"status {status} is not a documented answer of {operation.method} {operation.template}"]
        response = self.resolve(response)
        content = response.get("content", {}).get("application/json")
        if content is None:
            return [] if body is None else [f"status {status} documents no body, one was sent"]
        return self.validate(content["schema"], body, f"response {status}")

    def example(self, operation: Operation, status: int) -> Any:
        response = self.resolve(operation.spec["responses"][str(status)])
        examples = response["content"]["application/json"]["examples"]
        return json.loads(json.dumps(self.resolve(next(iter(examples.values())))["value"]))

    # ---- schemas ----------------------------------------------------------------------------

    def validate(self, schema: dict[str, Any], value: Any, where: str) -> list[str]:
        schema = self.resolve(schema)
        if value is None:
            if schema.get("nullable") or schema.get("type") == "null":
                return []
            if "type" in schema or "properties" in schema:
                return [f"{where}: null is not allowed"]
        errors: list[str] = []
        kind = schema.get("type")
        if kind is not None and not _is_type(value, kind):
            return [f"{where}: expected {kind}, got {type(value).__name__} {str(value)[:60]!r}"]
        if "enum" in schema and value not in schema["enum"] and not (value is None and schema.get("nullable")):
            errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
        if isinstance(value, dict):
            properties = schema.get("properties") or {}
            for name in schema.get("required", []):
                if name not in value:
                    errors.append(f"{where}: required property {name!r} missing")
            for name, item in value.items():
                if name in properties:
                    errors += self.validate(properties[name], item, f"{where}.{name}")
                else:
                    extra = schema.get("additionalProperties", True)
                    if extra is False:
                        errors.append(f"{where}: property {name!r} is not allowed")
                    elif isinstance(extra, dict):
                        errors += self.validate(extra, item, f"{where}.{name}")
        if isinstance(value, list):
            if "items" in schema:
                for i, item in enumerate(value):
                    errors += self.validate(schema["items"], item, f"{where}[{i}]")
            if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
                errors.append(f"{where}: {len(value)} items is out of bounds")
        if isinstance(value, str):
            if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", len(value)):
                errors.append(f"{where}: length {len(value)} is out of bounds")
            if "pattern" in schema and not re.search(schema["pattern"], value):
                errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if value < schema.get("minimum", value) or value > schema.get("maximum", value):
                errors.append(f"{where}: {value} is out of bounds")
        for sub in schema.get("allOf", []):
            errors += self.validate(sub, value, where)
        if "anyOf" in schema and all(self.validate(sub, value, where) for sub in schema["anyOf"]):
            errors.append(f"{where}: matches none of anyOf")
        if "oneOf" in schema:
            matching = sum(not self.validate(sub, value, where) for sub in schema["oneOf"])
            if matching != 1:
                errors.append(f"{where}: matches {matching} of oneOf, not exactly one")
        return errors


def _is_type(value: Any, kind: str) -> bool:
    match kind:
        case "object":
            return isinstance(value, dict)
        case "array":
            return isinstance(value, list)
        case "string":
            return isinstance(value, str)
        case "boolean":
            return isinstance(value, bool)
        case "integer":
            return isinstance(value, int) and not isinstance(value, bool)
        case "number":
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        case "null":
            return value is None
    raise ValueError(f"unknown type {kind}")


def _coerce(text: str, schema: dict[str, Any]) -> Any:
    """Path and query values arrive as text; the schema says what they must parse as."""
    if schema.get("type") == "integer":
        return int(text) if re.fullmatch(r"-?\d+", text) else text
    if schema.get("type") == "boolean":
        return {"true": True, "false": False}.get(text, text)
    return text
