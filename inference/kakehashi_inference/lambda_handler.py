"""AWS Lambda entry point: the same app and API behind API Gateway, through Mangum.

For teams running the API on AWS without Kubernetes. The model loads during Lambda's init
phase (module import, which gets a full CPU burst and is not billed against the request), not
in a lifespan: Mangum runs lifespan start-up and shut-down around every invocation, which would
reload the model each time. Batching still works, but one Lambda instance sees one request at a
time, so batches are that request's images.

Image: `inference/lambda/Dockerfile`; handler `kakehashi_inference.lambda_handler.handler`.
"""

from __future__ import annotations

import os
from typing import Any

from kakehashi_inference import logs
from kakehashi_inference.settings import Settings

_adapter: Any = None


def build_handler(settings: Settings) -> Any:
    from mangum import Mangum

    from kakehashi_inference.app import create_app
    from kakehashi_inference.cgroup import cpu_threads
    from kakehashi_inference.model import load_model

    model = load_model(settings, settings.threads or cpu_threads())
    # One request at a time per instance: the larger batch interpreters would only cost init.
    app = create_app(settings, model)
    # API Gateway sends raw image bodies base64-encoded when they are binary media types.
    return Mangum(app, lifespan="off", text_mime_types=["application/json", "text/csv"])


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    global _adapter
    if _adapter is None:
        _adapter = build_handler(Settings())
    response: dict[str, Any] = _adapter(event, context)
    return response


if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):  # in Lambda: load during the init phase
    logs.configure(Settings().log_level)
    _adapter = build_handler(Settings())
