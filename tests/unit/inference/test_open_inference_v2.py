"""Open Inference Protocol v2 REST: any signature with numeric tensors, and CSV rows."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from inference_helpers import ClientFactory

from kakehashi_inference.model import LoadedModel


@pytest.fixture
def tabular(make_client: ClientFactory, tabular_model: LoadedModel) -> TestClient:
    return make_client(tabular_model)


def test_health_and_model_metadata(tabular: TestClient, tabular_model: LoadedModel) -> None:
    assert tabular.get("/v2/health/live").json() == {"live": True}
    assert tabular.get("/v2/health/ready").json() == {"ready": True}
    assert tabular.get("/v2/models/tabular/ready").json() == {"ready": True}
    metadata = tabular.get("/v2/models/tabular").json()
    assert metadata["name"] == "tabular"
    assert metadata["platform"] == "tensorflow_savedmodel"
    assert metadata["versions"] == [tabular_model.digest]
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
                            headers={"Content-Type": "text/csv"})
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["total"]["data"] == [3.0, 1.0]
    assert outputs["items"]["datatype"] == "INT64"


def test_bad_csv_is_400_naming_the_line(tabular: TestClient) -> None:
    response = tabular.post("/v2/models/tabular/infer", content=b"1,2,3,4\n1,2,x,4\n",
                            headers={"Content-Type": "text/csv"})
    assert response.status_code == 400
    assert "line 2" in response.json()["error"]
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
