"""Request and response payloads: `/v1/predict` (the API client teams already call) and the
Open Inference Protocol v2 REST messages."""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ImageInput(BaseModel):
    """One image: a URL the server fetches, or the encoded bytes in base64."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, examples=["https://example.com/cat.jpg"])
    data: str | None = Field(default=None, description="JPEG, PNG, GIF, WebP or BMP, base64")

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.url is None) == (self.data is None):
            raise ValueError("give exactly one of `url` and `data`")
        return self


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # fail_fast: a body of 20,000 bad items stops at the first, instead of holding the GIL
    # (and so the event loop) while 20,000 errors are built.
    images: list[ImageInput] = Field(min_length=1, fail_fast=True)


class Prediction(BaseModel):
    score: float = Field(description="Class probability, rounded to 4 decimal places")
    category: str = Field(examples=["n03770679"])
    name: str = Field(examples=["minivan"])


class ImageResult(Prediction):
    """The top class of one image, and the `top_k` best when more than one was asked for."""

    predictions: list[Prediction] | None = Field(
        default=None, description="The `top_k` best classes, best first (only when top_k > 1)"
    )


class PredictResponse(BaseModel):
    images: list[ImageResult]


class ErrorResponse(BaseModel):
    detail: str
    image: int | None = Field(default=None, description="Index of the image at fault")


# Open Inference Protocol v2 (https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/)


class V2Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = Field(
        default=None,
        description="Row-major, flat or nested; absent when the tensor is binary data "
        "(`parameters.binary_data_size`, the binary tensor data extension)",
    )


class V2RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class V2InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        default=None, description='`{"signature_name": ...}` picks a signature other than serving_default'
    )
    inputs: list[V2Tensor] = Field(min_length=1, fail_fast=True)
    outputs: list[V2RequestedOutput] | None = None


class V2InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[V2Tensor]


class V2TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]
    parameters: dict[str, Any] | None = None


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2Error(BaseModel):
    error: str
