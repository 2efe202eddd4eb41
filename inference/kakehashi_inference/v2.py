"""Open Inference Protocol v2 over REST: every signature with numeric tensors.

This is what KServe, Triton and Seldon clients speak, so a tabular or multi-input model is
served without writing a request format for it. Supported beyond JSON tensors:

- the binary tensor data extension (`Inference-Header-Content-Length`): inputs with
  `parameters.binary_data_size` are read from the bytes after the JSON header, and outputs
  asked for with `parameters.binary_data` (or the request's `binary_data_output`) are answered
  the same way; tritonclient sends and asks for binary data by default;
- request bodies sent with `Content-Encoding: gzip` or `deflate` (tritonclient's
  `request_compression_algorithm`), inflated within the request size limit;
- `text/csv` bodies: the rows become one batch. A header row is present only when the request
  says so (`Content-Type: text/csv; header=present`, RFC 4180), and it names each column's
  input when the signature has several.

A tensor's datatype must be its input's datatype (no silent conversion of INT32 data for an FP32
input); nan, inf and numbers out of the datatype's range are refused unless
`KAKEHASHI_ALLOW_NON_FINITE` allows them. Errors are v2's `{"error": "..."}` (see errors.py).
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from kakehashi_inference import __version__
from kakehashi_inference.errors import (
    InvalidInput,
    ModelNotFound,
    UnsupportedMediaType,
)
from kakehashi_inference.model import SERVING_SIGNATURE, Array, LoadedModel, Signature, check_inputs
from kakehashi_inference.runtimes import NUMPY_TO_V2, V2_DATATYPES, TensorInfo
from kakehashi_inference.schemas import (
    V2Error,
    V2InferenceRequest,
    V2InferenceResponse,
    V2ModelMetadata,
    V2ServerMetadata,
    V2Tensor,
    V2TensorMetadata,
)
from kakehashi_inference.server import Server, media_type, parse_json

HEADER_LENGTH = "inference-header-content-length"
EXTENSIONS = ["binary_tensor_data"]

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": V2Error}, 404: {"model": V2Error}, 413: {"model": V2Error},
    415: {"model": V2Error}, 503: {"model": V2Error},
}
_INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/V2InferenceRequest"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                         "description": "binary tensor data extension"},
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
        return V2ServerMetadata(name="kakehashi", version=__version__, extensions=EXTENSIONS)

    @router.get("/health/live")
    async def live() -> JSONResponse:
        is_live = server.load_error is None
        return JSONResponse({"live": is_live}, status_code=200 if is_live else 503)

    @router.get("/health/ready")
    async def ready() -> JSONResponse:
        is_ready = server.model is not None
        return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)

    @router.get("/models/{name}/ready")
    async def model_ready(name: str) -> dict[str, bool]:
        model_named(name)
        return {"ready": True}

    @router.get("/models/{name}/config")
    async def model_config(name: str) -> None:
        model_named(name)
        raise ModelNotFound(
            "model configuration is Triton's own extension, not served here; "
            f"GET /v2/models/{name} has the inputs, outputs and signatures"
        )

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
                "runtime": model.runtime,
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

    @router.post("/models/{name}/infer", response_model=V2InferenceResponse,
                 response_model_exclude_none=True, openapi_extra=_INFER_BODY)
    async def infer(name: str, request: Request) -> Response:
        model = model_named(name)
        body = await server.read_request(request)
        kind, parameters = media_type(request)
        header_length = request.headers.get(HEADER_LENGTH)
        allow = server.settings.allow_non_finite
        if header_length is not None:
            call = await server.run_cpu(binary_request, model, body, header_length, allow)
        elif kind == "text/csv":
            signature = _signature(model, request.query_params.get("signature_name"))
            header = parameters.get("header") == "present"
            inputs = await server.run_cpu(csv_inputs, body, signature, header, allow)
            call = _Call(signature, inputs, None, None, set(), False)
        elif kind in ("", "application/json"):
            call = await server.run_cpu(json_request, model, body, allow)
        else:
            raise UnsupportedMediaType(
                f"Content-Type {kind!r}: send application/json, text/csv, or binary tensor data "
                f"with an {HEADER_LENGTH.title()} header"
            )
        check_inputs(call.signature, call.inputs)
        outputs = await server.run_cpu(model.infer, call.signature.name, call.inputs)
        content, headers = await server.run_cpu(answer, model, call, outputs)
        if headers:
            return Response(content, media_type="application/octet-stream", headers=headers)
        return Response(content, media_type="application/json")

    return router


class _Call:
    """One inference call as parsed from any of the request forms."""

    def __init__(self, signature: Signature, inputs: dict[str, Array], requested: list[str] | None,
                 request_id: str | None, binary_outputs: set[str], all_binary: bool) -> None:
        self.signature = signature
        self.inputs = inputs
        self.requested = requested
        self.request_id = request_id
        self.binary_outputs = binary_outputs
        self.all_binary = all_binary


def json_request(model: LoadedModel, body: bytes, allow_non_finite: bool) -> _Call:
    return _call(model, parse_json(V2InferenceRequest, body), b"", allow_non_finite)


def binary_request(model: LoadedModel, body: bytes, header_length: str,
                   allow_non_finite: bool) -> _Call:
    if not header_length.isdigit() or int(header_length) > len(body):
        raise InvalidInput(
            f"{HEADER_LENGTH.title()} is {header_length!r}, the body has {len(body)} bytes"
        )
    split = int(header_length)
    payload = parse_json(V2InferenceRequest, memoryview(body)[:split])
    return _call(model, payload, memoryview(body)[split:], allow_non_finite)


def _call(model: LoadedModel, payload: V2InferenceRequest, binary: bytes | memoryview,
          allow_non_finite: bool) -> _Call:
    parameters = payload.parameters or {}
    signature = _signature(model, parameters.get("signature_name"))
    expected = {t.name: t for t in signature.inputs}
    inputs: dict[str, Array] = {}
    offset = 0
    for tensor in payload.inputs:
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InvalidInput(f"input {tensor.name!r}: binary_data_size {size!r} does not "
                                   f"fit the {len(binary)} bytes of binary data")
            inputs[tensor.name] = _from_bytes(tensor, expected.get(tensor.name),
                                              binary[offset:offset + size], allow_non_finite)
            offset += size
        else:
            inputs[tensor.name] = _to_array(tensor, expected.get(tensor.name), allow_non_finite)
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data belong to no input")
    requested = [output.name for output in payload.outputs or []] or None
    binary_outputs = {o.name for o in payload.outputs or []
                      if (o.parameters or {}).get("binary_data") is True}
    return _Call(signature, inputs, requested, payload.id, binary_outputs,
                 parameters.get("binary_data_output") is True)


def answer(model: LoadedModel, call: _Call, outputs: dict[str, Array]) -> tuple[bytes, dict[str, str]]:
    """The response body (JSON, or JSON then binary data) and its extra headers."""
    if call.requested is not None:
        unknown = sorted(set(call.requested) - set(outputs))
        if unknown:
            raise InvalidInput(f"unknown outputs {unknown}; the signature has {sorted(outputs)}")
        outputs = {key: outputs[key] for key in call.requested}
    tensors: list[V2Tensor] = []
    chunks: list[bytes] = []
    for key, value in outputs.items():
        datatype = NUMPY_TO_V2.get(value.dtype.name)
        if datatype is None:
            raise InvalidInput(f"output {key!r} has non-numeric dtype {value.dtype}")
        if call.all_binary or key in call.binary_outputs:
            raw = np.ascontiguousarray(value).astype(value.dtype.newbyteorder("<")).tobytes()
            chunks.append(raw)
            tensors.append(V2Tensor(name=key, shape=list(value.shape), datatype=datatype,
                                    parameters={"binary_data_size": len(raw)}))
        else:
            tensors.append(V2Tensor(name=key, shape=list(value.shape), datatype=datatype,
                                    data=value.reshape(-1).tolist()))
    response = V2InferenceResponse(model_name=model.name, model_version=model.digest,
                                   id=call.request_id, outputs=tensors)
    header = response.model_dump_json(exclude_none=True).encode()
    if not chunks:
        return header, {}
    return header + b"".join(chunks), {"Inference-Header-Content-Length": str(len(header))}


def _meta(tensor: TensorInfo) -> V2TensorMetadata:
    return V2TensorMetadata(name=tensor.name, datatype=tensor.datatype, shape=list(tensor.shape))


def _signature(model: LoadedModel, name: Any) -> Signature:
    name = name or SERVING_SIGNATURE
    if not isinstance(name, str) or name not in model.signatures:
        raise InvalidInput(f"no signature {name!r}; the model has {sorted(model.signatures)}")
    return model.signatures[name]


def _datatype(tensor: V2Tensor, expected: TensorInfo | None) -> np.dtype[Any]:
    if tensor.datatype not in V2_DATATYPES:
        raise InvalidInput(f"input {tensor.name!r}: datatype {tensor.datatype!r} is not numeric")
    if expected is not None and tensor.datatype != expected.datatype:
        raise InvalidInput(
            f"input {tensor.name!r} is {expected.datatype}, the request says {tensor.datatype}: "
            f"send {expected.datatype} data"
        )
    if any(not isinstance(dim, int) or dim < 0 for dim in tensor.shape):
        raise InvalidInput(f"input {tensor.name!r}: shape {tensor.shape} is not a tensor shape")
    return np.dtype(V2_DATATYPES[tensor.datatype])


def _to_array(tensor: V2Tensor, expected: TensorInfo | None, allow_non_finite: bool) -> Array:
    dtype = _datatype(tensor, expected)
    if tensor.data is None:
        raise InvalidInput(f"input {tensor.name!r} has neither data nor binary_data_size")
    try:
        values = np.asarray(tensor.data)
    except (TypeError, ValueError) as error:  # ragged nesting
        raise InvalidInput(f"input {tensor.name!r}: {error}") from None
    allowed = {"f": "iuf", "i": "iuf", "u": "iuf", "b": "b"}[dtype.kind]
    if values.size and values.dtype.kind not in allowed:
        what = "true/false" if values.dtype.kind == "b" else "values that are not numbers"
        raise InvalidInput(f"input {tensor.name!r} is {tensor.datatype}: its data holds {what}")
    if dtype.kind in "iu" and values.dtype.kind == "f":
        if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
            raise InvalidInput(f"input {tensor.name!r} is {tensor.datatype}: its data holds "
                               "numbers that are not integers")
    if dtype.kind in "iu" and values.size:
        info = np.iinfo(dtype)
        if values.min() < info.min or values.max() > info.max:
            raise InvalidInput(f"input {tensor.name!r}: values out of the {tensor.datatype} range")
    with np.errstate(over="ignore", invalid="ignore"):
        array = values.astype(dtype)
    _check_finite(tensor.name, array, allow_non_finite)
    if array.size != math.prod(tensor.shape):
        raise InvalidInput(
            f"input {tensor.name!r}: {array.size} values do not fill shape {tensor.shape}"
        )
    return array.reshape(tensor.shape)


def _from_bytes(tensor: V2Tensor, expected: TensorInfo | None, raw: bytes | memoryview,
                allow_non_finite: bool) -> Array:
    dtype = _datatype(tensor, expected).newbyteorder("<")
    count = math.prod(tensor.shape)
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(f"input {tensor.name!r}: {len(raw)} bytes of binary data, shape "
                           f"{tensor.shape} of {tensor.datatype} takes {count * dtype.itemsize}")
    array = np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="))
    _check_finite(tensor.name, array, allow_non_finite)
    return array.reshape(tensor.shape)


def _check_finite(name: str, array: Array, allow_non_finite: bool) -> None:
    if allow_non_finite or array.dtype.kind != "f" or array.size == 0:
        return
    finite = np.isfinite(array)
    if not finite.all():
        index = int(np.argmin(finite.reshape(-1)))
        raise InvalidInput(
            f"input {name!r}: value {index} is nan, inf or too large for "
            f"{NUMPY_TO_V2[array.dtype.name]} (KAKEHASHI_ALLOW_NON_FINITE=true accepts them)"
        )


_NON_FINITE = {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}


def csv_inputs(body: bytes, signature: Signature, header_present: bool,
               allow_non_finite: bool = False) -> dict[str, Array]:
    """CSV rows as the signature's inputs: one matrix for a single input, else one column each.

    The first row is a header only when the request says `header=present`. With several inputs
    the header is required and names them; a single-input model takes the rows as its
    [rows, columns] batch. Every field must be a number (errors name line and column).
    """
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InvalidInput(f"the CSV body is not UTF-8 (byte {error.start})") from None
    rows: list[tuple[int, list[str]]] = []
    try:
        reader = csv.reader(io.StringIO(text))
        for row in reader:
            if row:
                rows.append((reader.line_num, row))
    except csv.Error as error:
        raise InvalidInput(f"unreadable CSV: {error}") from None
    if not rows:
        raise InvalidInput("CSV body has no rows")
    header: list[str] | None = None
    if header_present:
        header = [cell.strip() for cell in rows[0][1]]
        rows = rows[1:]
        if not rows:
            raise InvalidInput("CSV body has a header but no rows")
    width = len(rows[0][1])
    values = np.empty((len(rows), width), np.float64)
    for number, (line, row) in enumerate(rows):
        if len(row) != width:
            raise InvalidInput(f"CSV line {line} has {len(row)} fields, line {rows[0][0]} {width}")
        for column, cell in enumerate(row, start=1):
            values[number, column - 1] = _number(cell, line, column, allow_non_finite)
    if len(signature.inputs) == 1:
        target = signature.inputs[0]
        if len(target.shape) == 1 and width != 1:
            raise InvalidInput(f"input {target.name!r} takes one value per row, CSV has {width}")
        matrix = values if len(target.shape) != 1 else values.reshape(-1)
        return {target.name: _cast(matrix, target, rows, allow_non_finite, None)}
    if header is None:
        raise InvalidInput(
            "CSV for a signature with several inputs needs a header row naming them "
            f"({', '.join(t.name for t in signature.inputs)}): send "
            "Content-Type: text/csv; header=present"
        )
    columns = {name: index for index, name in enumerate(header)}
    inputs: dict[str, Array] = {}
    for tensor in signature.inputs:
        if tensor.name not in columns:
            raise InvalidInput(f"CSV header has no column {tensor.name!r} (header: {header})")
        position = columns[tensor.name]
        cast = _cast(values[:, position], tensor, rows, allow_non_finite, position)
        inputs[tensor.name] = cast.reshape(-1, 1) if len(tensor.shape) == 2 else cast
    return inputs


def _number(cell: str, line: int, column: int, allow_non_finite: bool) -> float:
    text = cell.strip()
    try:
        value = float(text)
    except ValueError:
        what = "an empty field" if not text else f"{json.dumps(text)[:40]} is not a number"
        raise InvalidInput(f"CSV line {line}, column {column}: {what}") from None
    if not allow_non_finite and not math.isfinite(value):
        kind = "not a finite number" if text.lower() in _NON_FINITE else "too large"
        raise InvalidInput(f"CSV line {line}, column {column}: {text[:40]} is {kind} "
                           "(KAKEHASHI_ALLOW_NON_FINITE=true accepts it)")
    return value


def _cast(values: Array, tensor: TensorInfo, rows: list[tuple[int, list[str]]],
          allow_non_finite: bool, column: int | None) -> Array:
    """`values` as the tensor's dtype, refusing what would change on the way (line, column)."""
    dtype = tensor.numpy_dtype

    def where(flat_index: int) -> str:
        width = 1 if values.ndim == 1 else values.shape[1]
        row, col = divmod(flat_index, width)
        return f"CSV line {rows[row][0]}, column {(column if column is not None else col) + 1}"

    flat: Array = values.reshape(-1)
    if dtype.kind in "iub":
        bad = np.flatnonzero(flat != np.round(flat))
        if bad.size:
            raise InvalidInput(f"{where(int(bad[0]))}: {flat[bad[0]]:g} is not an integer "
                               f"(input {tensor.name!r} is {tensor.datatype})")
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            bad = np.flatnonzero((flat < info.min) | (flat > info.max))
            if bad.size:
                raise InvalidInput(f"{where(int(bad[0]))}: {flat[bad[0]]:g} is out of the "
                                   f"{tensor.datatype} range")
        return values.astype(dtype)
    with np.errstate(over="ignore"):
        cast = values.astype(dtype)
    if not allow_non_finite:
        bad = np.flatnonzero(~np.isfinite(cast.reshape(-1)))
        if bad.size:
            raise InvalidInput(f"{where(int(bad[0]))}: {flat[bad[0]]:g} is too large for "
                               f"{tensor.datatype}")
    return cast

