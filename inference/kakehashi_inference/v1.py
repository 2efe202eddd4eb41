"""`/v1/predict`: the image classification API client teams already call."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from kakehashi_inference.errors import NotAnImageModel, UnsupportedMediaType
from kakehashi_inference.model import Array, LoadedModel
from kakehashi_inference.schemas import (
    ErrorResponse,
    ImageInput,
    ImageResult,
    Prediction,
    PredictRequest,
    PredictResponse,
)
from kakehashi_inference.server import Server, media_type, parse_json

IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp")

_PREDICT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
            **{kind: {"schema": {"type": "string", "format": "binary"}} for kind in IMAGE_TYPES},
        },
    }
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": description}
    for code, description in {
        400: "The body is not UTF-8 JSON, or an image is undecodable, its URL refused or "
             "unreachable (names the image); fails this request only",
        409: "The model is not an image classifier",
        413: "Request, image, image pixels or image count over the limits (names the limit)",
        415: "Body is neither JSON nor an image, or its Content-Encoding is not gzip or deflate",
        422: "JSON that does not fit the request schema, or top_k out of range",
        503: "The model is not loaded yet",
        504: "An image URL did not answer in time",
    }.items()
}


def v1_router(server: Server) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["predict"])

    @router.post(
        "/predict",
        response_model=PredictResponse,
        response_model_exclude_none=True,
        responses=_ERRORS,
        openapi_extra=_PREDICT_BODY,
        summary="Classify images",
        description="JSON `{\"images\": [{\"url\": ...} | {\"data\": base64}]}`, or one raw "
        "image as the body (`Content-Type: image/jpeg` or `image/png`). One result per image, "
        "in order.",
    )
    async def predict(
        request: Request,
        top_k: int = Query(1, ge=1, le=1000, description="Also list the k best classes"),
    ) -> Response:
        model = server.require_model()
        if model.image is None or server.batcher is None:
            raise NotAnImageModel(
                f"model {model.name!r} is not an image classifier; use /v2/models/{model.name}/infer"
            )
        body = await server.read_request(request)
        kind, _ = media_type(request)
        images: list[bytes | ImageInput]
        if kind.startswith("image/"):
            images = [body]
        elif kind in ("", "application/json") or kind.endswith("+json"):
            parsed = await server.run_cpu(parse_json, PredictRequest, body)
            images = list(parsed.images)
        else:
            raise UnsupportedMediaType(
                f"Content-Type {kind!r}: send application/json or an image ({', '.join(IMAGE_TYPES)})"
            )
        rows = await server.classify(images)
        content = await server.run_cpu(_answer, model, rows, top_k)
        return Response(content, media_type="application/json")

    return router


def _answer(model: LoadedModel, rows: list[Array], top_k: int) -> bytes:
    response = PredictResponse(images=[_top(model, row, top_k) for row in rows])
    return response.model_dump_json(exclude_none=True).encode()


def _top(model: LoadedModel, row: Array, top_k: int) -> ImageResult:
    scores = np.asarray(row, dtype=np.float64)
    # Classifiers exported without their final softmax return logits; scores must still be
    # probabilities for clients that threshold them.
    if scores.min() < 0 or abs(scores.sum() - 1.0) > 1e-3:
        exp = np.exp(scores - scores.max())
        scores = exp / exp.sum()
    k = min(top_k, len(scores))
    best = np.argsort(-scores, kind="stable")[:k]
    predictions = [
        Prediction(score=round(float(scores[i]), 4), category=model.label(int(i)).category,
                   name=model.label(int(i)).name)
        for i in best
    ]
    return ImageResult(
        **predictions[0].model_dump(), predictions=predictions if top_k > 1 else None
    )
