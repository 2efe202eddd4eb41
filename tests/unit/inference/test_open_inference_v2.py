"""Open Inference Protocol v2 REST: any signature with numeric tensors, the binary tensor data
extension, CSV rows; errors in v2's own shape. Every call runs on the compiled model (LiteRT)
and on the SavedModel (TensorFlow) alike."""

from __future__ import annotations

import gzip
import json
import struct
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from inference_helpers import ClientFactory

from kakehashi_inference.model import LoadedModel


@pytest.fixture(params=["compiled", "savedmodel"])
def tabular_any(request: pytest.FixtureRequest) -> LoadedModel:
    name = "tabular_model" if request.param == "compiled" else "tabular_savedmodel"
    model: LoadedModel = request.getfixturevalue(name)
    return model


@pytest.fixture
def tabular(make_client: ClientFactory, tabular_any: LoadedModel) -> TestClient:
    return make_client(tabular_any)


def test_health_and_model_metadata(tabular: TestClient, tabular_any: LoadedModel) -> None:
    assert tabular.get("/v2/health/live").json() == {"live": True}
    assert tabular.get("/v2/health/ready").json() == {"ready": True}
    assert tabular.get("/v2/models/tabular/ready").json() == {"ready": True}
    metadata = tabular.get("/v2/models/tabular").json()
    assert metadata["name"] == "tabular"
    assert metadata["platform"] == "tensorflow_savedmodel"
    assert metadata["versions"] == [tabular_any.digest]
    assert metadata["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]
    assert metadata["outputs"] == [{"name": "score", "datatype": "FP32", "shape": [-1, 1]}]
    total = metadata["parameters"]["signatures"]["total"]
    assert {t["name"]: t["datatype"] for t in total["inputs"]} == {"price": "FP32", "quantity": "INT64"}


def test_unknown_model_is_404(tabular: TestClient) -> None:
    response = tabular.get("/v2/models/other")
    assert response.status_code == 404
    assert "tabular" in response.json()["error"]


def test_infer_default_signature(tabular: TestClient) -> None:
    request = {
        "id": "req-1",
        "inputs": [{"name": "features", "shape": [2, 4], "datatype": "FP32",
                    "data": [1, 0, 0, 0, 1, 1, 1, 1]}],
    }
    response = tabular.post("/v2/models/tabular/infer", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "req-1" and body["model_name"] == "tabular"
    assert body["outputs"] == [{"name": "score", "shape": [2, 1], "datatype": "FP32",
                                "data": [1.0, 10.0]}]


def test_infer_named_signature_with_mixed_dtypes_and_output_filter(tabular: TestClient) -> None:
    request = {
        "parameters": {"signature_name": "total"},
        "inputs": [
            {"name": "price", "shape": [3], "datatype": "FP32", "data": [1.5, 2.0, 10.0]},
            {"name": "quantity", "shape": [3], "datatype": "INT64", "data": [2, 3, 0]},
        ],
        "outputs": [{"name": "total"}],
    }
    body = tabular.post("/v2/models/tabular/infer", json=request).json()
    assert body["outputs"] == [{"name": "total", "shape": [3], "datatype": "FP32",
                                "data": [3.0, 6.0, 0.0]}]


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({"name": "features", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}, "shape [1, 3]"),
        ({"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [1, 2]}, "do not fill"),
        ({"name": "other", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}, "missing"),
        ({"name": "features", "shape": [1, 4], "datatype": "BYTES", "data": ["a"] * 4}, "not numeric"),
    ],
)
def test_inputs_that_do_not_fit_are_400_saying_why(
    tabular: TestClient, tensor: dict[str, object], message: str
) -> None:
    response = tabular.post("/v2/models/tabular/infer", json={"inputs": [tensor]})
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_csv_rows_are_a_batch_for_a_single_input(tabular: TestClient) -> None:
    response = tabular.post("/v2/models/tabular/infer", content=b"1,0,0,0\n0,0,0,1\n",
                            headers={"Content-Type": "text/csv"})
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [1.0, 4.0]


def test_csv_header_names_each_input(tabular: TestClient) -> None:
    csv = b"quantity,price\n2,1.5\n4,0.25\n"
    response = tabular.post("/v2/models/tabular/infer?signature_name=total", content=csv,
                            headers={"Content-Type": "text/csv; header=present"})
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["total"]["data"] == [3.0, 1.0]
    assert outputs["items"]["datatype"] == "INT64"


def test_bad_csv_is_400_naming_the_line(tabular: TestClient) -> None:
    response = tabular.post("/v2/models/tabular/infer", content=b"1,2,3,4\n1,2,x,4\n",
                            headers={"Content-Type": "text/csv"})
    assert response.status_code == 400
    assert "line 2, column 3" in response.json()["error"]
    no_header = tabular.post("/v2/models/tabular/infer?signature_name=total", content=b"1,2\n",
                             headers={"Content-Type": "text/csv"})
    assert "header row" in no_header.json()["error"]


def test_image_model_is_served_over_v2_too(client: TestClient, image_model: LoadedModel) -> None:
    pixels = np.random.default_rng(3).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    request = {"inputs": [{"name": "keras_tensor", "shape": [2, 32, 32, 3], "datatype": "FP32",
                           "data": pixels.reshape(-1).tolist()}]}
    response = client.post("/v2/models/tiny/infer", json=request)
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    assert output["shape"] == [2, 10]
    np.testing.assert_allclose(
        np.array(output["data"]).reshape(2, 10), image_model.classify(pixels), atol=1e-5
    )


# Holes found from outside: CSV (5)


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b"5.1,3.5x,1.4,0.2\n6.7,3.0,5.2,2.3\n", "line 1, column 2"),  # was taken as a header
        (b"NA,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n", "line 1, column 1"),
        (b"5.1,,1.4,0.2\n6.7,3.0,5.2,2.3\n", "line 1, column 2: an empty field"),
        (b"1,2,3,4\n\n1,2,3,oops\n", "line 3, column 4"),
    ],
)
def test_csv_non_numeric_field_is_400_naming_line_and_column(
    tabular: TestClient, body: bytes, where: str
) -> None:
    response = tabular.post("/v2/models/tabular/infer", content=body,
                            headers={"Content-Type": "text/csv"})
    assert response.status_code == 400, response.text
    assert where in response.json()["error"]


def test_csv_header_only_when_the_request_says_so(tabular: TestClient) -> None:
    body = b"a,b,c,d\n1,0,0,0\n"
    absent = tabular.post("/v2/models/tabular/infer", content=body,
                          headers={"Content-Type": "text/csv"})
    assert absent.status_code == 400 and "line 1, column 1" in absent.json()["error"]
    present = tabular.post("/v2/models/tabular/infer", content=body,
                           headers={"Content-Type": "text/csv; header=present"})
    assert present.status_code == 200, present.text
    assert present.json()["outputs"][0]["data"] == [1.0]


@pytest.mark.parametrize("value", [b"nan", b"inf", b"-Infinity", b"1e400", b"1e39"])
def test_csv_non_finite_and_overflowing_numbers_are_refused(
    tabular: TestClient, value: bytes
) -> None:
    response = tabular.post("/v2/models/tabular/infer", content=b"1,2,3," + value + b"\n",
                            headers={"Content-Type": "text/csv"})
    assert response.status_code == 400, response.text
    assert "line 1, column 4" in response.json()["error"]


def test_non_finite_numbers_pass_when_a_setting_allows_them(
    make_client: ClientFactory, tabular_model: LoadedModel
) -> None:
    client = make_client(tabular_model, allow_non_finite=True)
    response = client.post("/v2/models/tabular/infer", content=b"1,0,0,inf\n",
                           headers={"Content-Type": "text/csv"})
    assert response.status_code == 200, response.text


def test_csv_integer_input_refuses_fractions(tabular: TestClient) -> None:
    response = tabular.post("/v2/models/tabular/infer?signature_name=total",
                            content=b"quantity,price\n2.5,1\n",
                            headers={"Content-Type": "text/csv; header=present"})
    assert response.status_code == 400
    assert "line 2, column 1" in response.json()["error"] and "INT64" in response.json()["error"]


# Holes found from outside: v2 (4)


@pytest.mark.parametrize(
    "body",
    [b'{"inputs": "nope"}', b'{"inputs": [{"name": "features"}]}', b"{not json", b"\xff\xfe{}"],
)
def test_v2_errors_use_the_protocol_shape(tabular: TestClient, body: bytes) -> None:
    response = tabular.post("/v2/models/tabular/infer", content=body,
                            headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"}
    assert isinstance(response.json()["error"], str)


def test_v2_unknown_routes_and_model_config_answer_in_the_protocol_shape(
    tabular: TestClient
) -> None:
    for path in ("/v2/models/tabular/config", "/v2/models/tabular/versions/1/stats", "/v2/nope"):
        response = tabular.get(path)
        assert response.status_code == 404, path
        assert set(response.json()) == {"error"}, path


def test_int32_data_for_an_fp32_input_is_refused(tabular: TestClient) -> None:
    request = {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "INT32",
                           "data": [1, 2, 3, 4]}]}
    response = tabular.post("/v2/models/tabular/infer", json=request)
    assert response.status_code == 400
    assert "is FP32, the request says INT32" in response.json()["error"]


@pytest.mark.parametrize(
    ("data", "message"),
    [(["1", "2", "3", "4"], "not numbers"), ([True, False, True, False], "true/false")],
)
def test_json_tensor_data_of_another_kind_is_refused(
    tabular: TestClient, data: list[object], message: str
) -> None:
    request = {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": data}]}
    response = tabular.post("/v2/models/tabular/infer", json=request)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_json_tensor_values_out_of_range_are_refused(tabular: TestClient) -> None:
    request = {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32",
                           "data": [1, 2, 3, 1e39]}]}
    response = tabular.post("/v2/models/tabular/infer", json=request)
    assert response.status_code == 400
    assert "too large for FP32" in response.json()["error"]


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_json_nan_and_infinity_literals_are_refused(tabular: TestClient, literal: bytes) -> None:
    # Python's json.dumps writes NaN and Infinity, and the JSON parser reads them as floats.
    body = (b'{"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", '
            b'"data": [1, 2, 3, ' + literal + b"]}]}")
    response = tabular.post("/v2/models/tabular/infer", content=body,
                            headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "value 3 is nan, inf or too large for FP32" in response.json()["error"]


def _binary_request(header: dict[str, object], data: bytes) -> tuple[bytes, dict[str, str]]:
    """A request as tritonclient sends it: JSON header, then the raw tensor bytes."""
    encoded = json.dumps(header).encode()
    return encoded + data, {"Content-Type": "application/octet-stream",
                            "Inference-Header-Content-Length": str(len(encoded))}


def _binary_outputs(response: object) -> dict[str, np.ndarray]:
    length = int(response.headers["Inference-Header-Content-Length"])  # type: ignore[attr-defined]
    content: bytes = response.content  # type: ignore[attr-defined]
    header = json.loads(content[:length])
    offset, outputs = length, {}
    for output in header["outputs"]:
        size = output["parameters"]["binary_data_size"]
        dtype = {"FP32": "<f4", "INT64": "<i8"}[output["datatype"]]
        outputs[output["name"]] = np.frombuffer(
            content[offset:offset + size], dtype=dtype).reshape(output["shape"])
        offset += size
    assert offset == len(content)
    return outputs


def test_binary_tensor_data_extension_in_and_out(tabular: TestClient) -> None:
    features = np.array([[1, 0, 0, 0], [1, 1, 1, 1]], np.float32)
    body, headers = _binary_request(
        {"inputs": [{"name": "features", "shape": [2, 4], "datatype": "FP32",
                     "parameters": {"binary_data_size": features.nbytes}}],
         "parameters": {"binary_data_output": True}},
        features.astype("<f4").tobytes(),
    )
    response = tabular.post("/v2/models/tabular/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    np.testing.assert_allclose(_binary_outputs(response)["score"], [[1.0], [10.0]])


def test_binary_inputs_with_json_outputs_and_mixed_dtypes(tabular: TestClient) -> None:
    price = np.array([1.5, 2.0], "<f4").tobytes()
    quantity = struct.pack("<2q", 2, 3)
    body, headers = _binary_request(
        {"parameters": {"signature_name": "total"},
         "inputs": [{"name": "price", "shape": [2], "datatype": "FP32",
                     "parameters": {"binary_data_size": len(price)}},
                    {"name": "quantity", "shape": [2], "datatype": "INT64",
                     "parameters": {"binary_data_size": len(quantity)}}],
         "outputs": [{"name": "total", "parameters": {"binary_data": False}}]},
        price + quantity,
    )
    response = tabular.post("/v2/models/tabular/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"] == [{"name": "total", "shape": [2], "datatype": "FP32",
                                           "data": [3.0, 6.0]}]


def test_binary_data_that_does_not_fit_is_a_v2_400(tabular: TestClient) -> None:
    body, headers = _binary_request(
        {"inputs": [{"name": "features", "shape": [2, 4], "datatype": "FP32",
                     "parameters": {"binary_data_size": 16}}]},
        b"\0" * 16,
    )
    response = tabular.post("/v2/models/tabular/infer", content=body, headers=headers)
    assert response.status_code == 400
    assert "takes 32" in response.json()["error"]
    headers["Inference-Header-Content-Length"] = "100000"
    response = tabular.post("/v2/models/tabular/infer", content=body, headers=headers)
    assert response.status_code == 400 and set(response.json()) == {"error"}


# Found in the audit: tritonclient's request_compression_algorithm ("gzip" or "deflate") sends
# the body compressed, with Inference-Header-Content-Length counting the uncompressed JSON; the
# server read the compressed bytes as JSON and answered a misleading 400.


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_binary_requests_are_inflated(tabular: TestClient, encoding: str) -> None:
    features = np.array([[1, 0, 0, 0], [1, 1, 1, 1]], np.float32)
    body, headers = _binary_request(
        {"inputs": [{"name": "features", "shape": [2, 4], "datatype": "FP32",
                     "parameters": {"binary_data_size": features.nbytes}}]},
        features.astype("<f4").tobytes(),
    )
    compressed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    response = tabular.post("/v2/models/tabular/infer", content=compressed,
                            headers={**headers, "Content-Encoding": encoding})
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [1.0, 10.0]


def test_a_compressed_body_never_inflates_past_the_request_limit(
    make_client: ClientFactory, tabular_model: LoadedModel
) -> None:
    client = make_client(tabular_model, max_request_bytes=1_000_000)
    bomb = gzip.compress(b"\0" * 50_000_000)  # 49 KB on the wire
    response = client.post("/v2/models/tabular/infer", content=bomb,
                           headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert response.status_code == 413
    assert response.json() == {
        "error": "the request body inflates to over the 1000000 bytes allowed"}


@pytest.mark.parametrize(
    ("encoding", "body", "status", "message"),
    [
        ("br", b"{}", 415, "Content-Encoding 'br'"),
        ("gzip", b'{"inputs": []}', 400, "not valid gzip data"),
        ("gzip", gzip.compress(b'{"inputs": []}')[:-12], 400, "truncated"),
    ],
)
def test_bodies_in_other_or_broken_encodings_are_refused_v2_shaped(
    tabular: TestClient, encoding: str, body: bytes, status: int, message: str
) -> None:
    response = tabular.post("/v2/models/tabular/infer", content=body,
                            headers={"Content-Type": "application/json",
                                     "Content-Encoding": encoding})
    assert response.status_code == status
    assert set(response.json()) == {"error"} and message in response.json()["error"]
