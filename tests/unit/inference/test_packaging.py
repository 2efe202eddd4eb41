"""What teams deploy: the Lambda handler behind API Gateway, the CloudFormation templates
(checked by cfn-lint), and the Dockerfiles' promises (non-root, healthcheck, model last)."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from inference_helpers import jpeg

from kakehashi_inference import lambda_handler

INFERENCE = Path(__file__).resolve().parents[3] / "inference"


def http_api_event(path: str, body: bytes, content_type: str, query: str = "") -> dict[str, Any]:
    """An API Gateway HTTP API (payload format 2.0) event, as AWS documents it."""
    binary = not content_type.startswith(("application/json", "text/"))
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": {"content-type": content_type, "host": "abc123.execute-api.eu-west-1.amazonaws.com",
                    "x-forwarded-proto": "https", "x-forwarded-port": "443"},
        "requestContext": {
            "accountId": "123456789012", "apiId": "abc123", "domainName":
            "abc123.execute-api.eu-west-1.amazonaws.com", "requestId": "id", "routeKey": "$default",
            "stage": "$default", "timeEpoch": 1700000000000,
            "http": {"method": "POST", "path": path, "protocol": "HTTP/1.1",
                     "sourceIp": "203.0.113.7", "userAgent": "pytest"},
        },
        "body": base64.b64encode(body).decode() if binary else body.decode(),
        "isBase64Encoded": binary,
    }


def test_lambda_handler_serves_json_and_raw_images(
    image_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAKEHASHI_MODEL_DIR", str(image_model_dir))
    monkeypatch.setenv("KAKEHASHI_MODEL_NAME", "tiny")
    monkeypatch.setattr(lambda_handler, "_adapter", None)
    body = json.dumps({"images": [{"data": base64.b64encode(jpeg()).decode()}]}).encode()
    response = lambda_handler.handler(
        http_api_event("/v1/predict", body, "application/json", "top_k=2"), None
    )
    assert response["statusCode"] == 200, response
    result = json.loads(response["body"])["images"][0]
    assert len(result["predictions"]) == 2
    raw = lambda_handler.handler(http_api_event("/v1/predict", jpeg(), "image/jpeg"), None)
    assert raw["statusCode"] == 200
    assert json.loads(raw["body"])["images"][0]["category"] == result["category"]
    bad = lambda_handler.handler(http_api_event("/v1/predict", b"nope", "image/png"), None)
    assert bad["statusCode"] == 400
    # Hole 2: a body that is not UTF-8, sent as JSON, is a 400 through Lambda too.
    event = http_api_event("/v1/predict", b'{"images": "\xff\xfe"}', "application/octet-stream")
    event["headers"]["content-type"] = "application/json"
    not_utf8 = lambda_handler.handler(event, None)
    assert not_utf8["statusCode"] == 400, not_utf8
    assert "UTF-8" in json.loads(not_utf8["body"])["detail"]


def test_cloudformation_templates_pass_cfn_lint() -> None:
    templates = sorted((INFERENCE / "cloudformation").glob("*.yaml"))
    assert {t.name for t in templates} == {"lambda.yaml", "elasticbeanstalk.yaml"}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), *map(str, templates)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split()[0].upper(), line) for line in lines if line and not line.startswith("#")]


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "lambda/Dockerfile"])
def test_dockerfiles_are_multi_stage_with_the_model_as_last_layer(dockerfile: str) -> None:
    instructions = _instructions(INFERENCE / dockerfile)
    assert sum(kind == "FROM" for kind, _ in instructions) >= 2
    layers = [line for kind, line in instructions if kind in ("COPY", "RUN", "ADD")]
    assert "MODEL_SRC" in layers[-1], "baking appends the model: it must be the last layer"


def _stages(dockerfile: Path) -> dict[str, list[tuple[str, str]]]:
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for kind, line in _instructions(dockerfile):
        if kind == "FROM":
            current = [(kind, line)]
            stages[line.split()[-1] if " AS " in line.upper() else str(len(stages))] = current
        else:
            current.append((kind, line))
    return stages


def _installed_extras(stages: dict[str, list[tuple[str, str]]], stage: str) -> set[str]:
    """The kakehashi extras pip installs for `stage`, following FROM and COPY --from."""
    extras: set[str] = set()
    for kind, line in stages[stage]:
        extras |= set(re.findall(r'"\.\[([a-z-]+)\]"', line))
        if kind == "FROM" and line.split()[1] in stages:
            extras |= _installed_extras(stages, line.split()[1])
        source = re.search(r"--from=(\S+)", line)
        if kind == "COPY" and source and source.group(1) in stages:
            extras |= _installed_extras(stages, source.group(1))
    return extras


def test_light_and_full_serving_images() -> None:
    stages = _stages(INFERENCE / "Dockerfile")
    # The light image (what the operator bakes onto) and Lambda's install no TensorFlow.
    assert _installed_extras(stages, "runtime") == {"serve"}
    assert _installed_extras(stages, "model") == {"serve"}
    assert _installed_extras(stages, "runtime-full") == {"serve-full"}
    assert _installed_extras(stages, "model-full") == {"serve-full"}
    lambda_stages = _stages(INFERENCE / "lambda" / "Dockerfile")
    assert set().union(*(_installed_extras(lambda_stages, s) for s in lambda_stages)) == {"serve"}
    for dockerfile in ("Dockerfile", "lambda/Dockerfile"):
        text = (INFERENCE / dockerfile).read_text().lower()
        assert "pip install tensorflow" not in text
        # The base image is a build argument (the images are built on a local Debian base).
        assert re.search(r"^ARG (PYTHON|LAMBDA)_IMAGE=", (INFERENCE / dockerfile).read_text(), re.M)


def test_serving_extras_keep_tensorflow_out_of_the_light_image() -> None:
    import tomllib

    project = tomllib.loads((INFERENCE.parent / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    light = " ".join(extras["serve"] + project["dependencies"]).lower()
    assert "tensorflow" not in light and "ai-edge-litert" in light
    assert any(dep.startswith("tensorflow") for dep in extras["serve-full"])


def _requirements(extras: dict[str, list[str]], requirements: list[str]) -> set[str]:
    """Distribution names `requirements` install, kakehashi[...] self-references followed."""
    names: set[str] = set()
    for requirement in requirements:
        name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower()
        if name == "kakehashi":
            for extra in re.findall(r"\[(.*)\]", requirement)[0].split(","):
                names |= _requirements(extras, extras[extra.strip()])
        else:
            names.add(name)
    return names


def test_the_control_plane_libraries_are_installed_by_the_operator_extras_only() -> None:
    import tomllib

    project = tomllib.loads((INFERENCE.parent / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    control_plane = {"kopf", "kubernetes", "kubeflow-training"}
    assert control_plane <= _requirements(extras, extras["operator"])
    # The serving images (light, full, Lambda) and the training/notebook images (and the
    # bake Jobs they run) install the base plus their own extra only.
    for image_extra in ("serve", "serve-full", "train"):
        installed = _requirements(extras, project["dependencies"] + extras[image_extra])
        assert not installed & control_plane, (image_extra, installed & control_plane)


def test_serving_image_runs_as_non_root_with_a_readiness_healthcheck() -> None:
    instructions = _instructions(INFERENCE / "Dockerfile")
    users = [line.split()[1] for kind, line in instructions if kind == "USER"]
    assert users and not users[-1].startswith(("root", "0"))
    healthcheck = [line for kind, line in instructions if kind == "HEALTHCHECK"]
    assert healthcheck and "/ready" in healthcheck[0]
    assert ("ENTRYPOINT", 'ENTRYPOINT ["kakehashi-serve"]') in instructions
