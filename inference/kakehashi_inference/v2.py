"""Open Inference Protocol v2 over REST: every SavedModel signature with numeric tensors.

This is what KServe, Triton and Seldon clients speak, so a tabular or multi-input model is
served without writing a request format for it. `text/csv` bodies are accepted too: the rows
become one batch (a header row names each column's input when the signature has several).
"""

from __future__ import annotations

import asyncio
import csv
import io
import math
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from kakehashi_inference import __version__
from kakehashi_inference.app import Server, media_type, read_body
from kakehashi_inference.errors import InvalidInput, ModelNotFound, UnsupportedMediaType
from kakehashi_inference.model import (
    NUMPY_TO_V2,
    SERVING_SIGNATURE,
    V2_DATATYPES,
    Array,
    LoadedModel,
    Signature,
    TensorInfo,
    check_inputs,
)
from kakehashi_inference.schemas import (
    V2Error,
    V2InferenceRequest,
    V2InferenceResponse,
    V2ModelMetadata,
    V2ServerMetadata,
    V2Tensor,
    V2TensorMetadata,
)

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": V2Error}, 404: {"model": V2Error}, 413: {"model": V2Error},
    415: {"model": V2Error}, 503: {"model": V2Error},
}
_INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/V2InferenceRequest"}},
            "text/csv": {"schema": {"type": "string"}},
        },
    }
}


def v2_router(server: Server) -> APIRouter:
    router = APIRouter(prefix="/v2", tags=["open inference protocol v2"], responses=_ERRORS)

    def model_named(name: str) -> LoadedModel:
        model = server.require_model()
        if name != model.name:
            raise ModelNotFound(f"no model {name!r}; this server serves {model.name!r}")
        return model

    @router.get("", response_model=V2ServerMetadata)
    async def server_metadata() -> V2ServerMetadata:
        return V2ServerMetadata(name="kakehashi", version=__version__, extensions=[])

    @router.get("/health/live")
    async def live() -> dict[str, bool]:
        return {"live": server.load_error is None}

    @router.get("/health/ready")
    async def ready() -> Any:
        from fastapi.responses import JSONResponse

        is_ready = server.model is not None
        return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)

    @router.get("/models/{name}/ready")
    async def model_ready(name: str) -> dict[str, bool]:
        model_named(name)
        return {"ready": True}

    @router.get("/models/{name}", response_model=V2ModelMetadata)
    async def model_metadata(name: str) -> V2ModelMetadata:
        model = model_named(name)
        default = model.signatures.get(SERVING_SIGNATURE) or next(iter(model.signatures.values()))
        return V2ModelMetadata(
            name=model.name,
            versions=[model.digest],
            platform="tensorflow_savedmodel",
            inputs=[_meta(t) for t in default.inputs],
            outputs=[_meta(t) for t in default.outputs],
            parameters={
                "digest": model.digest,
                "signature_name": default.name,
                "signatures": {
                    sig.name: {
                        "inputs": [_meta(t).model_dump() for t in sig.inputs],
                        "outputs": [_meta(t).model_dump() for t in sig.outputs],
                    }
                    for sig in model.signatures.values()
                },
            },
        )

    @router.post(
        "/models/{name}/infer",
        response_model=V2InferenceResponse,
        response_model_exclude_none=True,
        openapi_extra=_INFER_BODY,
    )
    async def infer(name: str, request: Request) -> V2InferenceResponse:
        model = model_named(name)
        body = await read_body(request, server.settings.max_request_bytes)
        kind = media_type(request)
        requested: list[str] | None = None
        request_id: str | None = None
        if kind == "text/csv":
            signature = _signature(model, request.query_params.get("signature_name"))
            inputs = csv_inputs(body, signature)
        elif kind in ("", "application/json"):
            try:
                payload = V2InferenceRequest.model_validate_json(body)
            except ValidationError as error:
                raise RequestValidationError(error.errors(include_url=False)) from None
            parameters = payload.parameters or {}
            signature = _signature(model, parameters.get("signature_name"))
            inputs = {tensor.name: _to_array(tensor, signature) for tensor in payload.inputs}
            requested = [output.name for output in payload.outputs or []] or None
            request_id = payload.id
        else:
            raise UnsupportedMediaType(f"Content-Type {kind!r}: send application/json or text/csv")
        check_inputs(signature, inputs)
        outputs = await asyncio.get_running_loop().run_in_executor(
            server.cpu_executor, model.infer, signature.name, inputs
        )
        if requested is not None:
            unknown = sorted(set(requested) - set(outputs))
            if unknown:
                raise InvalidInput(f"unknown outputs {unknown}; the signature has {sorted(outputs)}")
            outputs = {key: outputs[key] for key in requested}
        return V2InferenceResponse(
            model_name=model.name,
            model_version=model.digest,
            id=request_id,
            outputs=[_from_array(key, value) for key, value in outputs.items()],
        )

    return router


def _meta(tensor: TensorInfo) -> V2TensorMetadata:
    return V2TensorMetadata(name=tensor.name, datatype=tensor.datatype, shape=list(tensor.shape))


def _signature(model: LoadedModel, name: str | None) -> Signature:
    name = name or SERVING_SIGNATURE
    if name not in model.signatures:
        raise InvalidInput(f"no signature {name!r}; the model has {sorted(model.signatures)}")
    return model.signatures[name]


def _to_array(tensor: V2Tensor, signature: Signature) -> Array:
    if tensor.datatype not in V2_DATATYPES:
        raise InvalidInput(f"input {tensor.name!r}: datatype {tensor.datatype!r} is not numeric")
    expected = {t.name: t for t in signature.inputs}.get(tensor.name)
    dtype = expected.numpy_dtype if expected is not None else np.dtype(V2_DATATYPES[tensor.datatype])
    try:
        array = np.asarray(tensor.data, dtype=dtype)
    except (TypeError, ValueError) as error:
        raise InvalidInput(f"input {tensor.name!r}: {error}") from None
    if array.size != math.prod(tensor.shape):
        raise InvalidInput(
            f"input {tensor.name!r}: {array.size} values do not fill shape {tensor.shape}"
        )
    return array.reshape(tensor.shape)


def _from_array(name: str, array: Array) -> V2Tensor:
    datatype = NUMPY_TO_V2.get(array.dtype.name)
    if datatype is None:
        raise InvalidInput(f"output {name!r} has non-numeric dtype {array.dtype}")
    return V2Tensor(
        name=name, shape=list(array.shape), datatype=datatype, data=array.reshape(-1).tolist()
    )


def csv_inputs(body: bytes, signature: Signature) -> dict[str, Array]:
    """CSV rows as the signature's inputs: one matrix for a single input, else one column each.

    A first row that is not all numbers is a header. With several inputs the header is
    required and names them; a single-input model takes the rows as its [rows, columns] batch.
    """
    try:
        rows = [row for row in csv.reader(io.StringIO(body.decode("utf-8-sig"))) if row]
    except (UnicodeDecodeError, csv.Error) as error:
        raise InvalidInput(f"unreadable CSV: {error}") from None
    if not rows:
        raise InvalidInput("CSV body has no rows")
    header: list[str] | None = None
    if not all(_is_number(cell) for cell in rows[0]):
        header, rows = [cell.strip() for cell in rows[0]], rows[1:]
    if not rows:
        raise InvalidInput("CSV body has a header but no rows")
    width = len(rows[0])
    for number, row in enumerate(rows, start=2 if header else 1):
        if len(row) != width:
            raise InvalidInput(f"CSV line {number} has {len(row)} values, line 1 {width}")
        bad = [cell for cell in row if not _is_number(cell)]
        if bad:
            raise InvalidInput(f"CSV line {number}: {bad[0]!r} is not a number")
    values = np.array([[float(cell) for cell in row] for row in rows])
    if len(signature.inputs) == 1:
        target = signature.inputs[0]
        matrix = values if len(target.shape) != 1 else values.reshape(-1)
        if len(target.shape) == 1 and width != 1:
            raise InvalidInput(f"input {target.name!r} takes one value per row, CSV has {width}")
        return {target.name: matrix.astype(target.numpy_dtype)}
    if header is None:
        raise InvalidInput(
            "CSV for a signature with several inputs needs a header row naming them: "
            f"{', '.join(t.name for t in signature.inputs)}"
        )
    columns = {name: values[:, i] for i, name in enumerate(header)}
    inputs: dict[str, Array] = {}
    for tensor in signature.inputs:
        if tensor.name not in columns:
            raise InvalidInput(f"CSV header has no column {tensor.name!r} (header: {header})")
        column = columns[tensor.name].astype(tensor.numpy_dtype)
        inputs[tensor.name] = column.reshape(-1, 1) if len(tensor.shape) == 2 else column
    return inputs


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True
