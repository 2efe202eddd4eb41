"""`/v1/predict`: the contract client teams already call."""

from __future__ import annotations

import numpy as np
from fastapi.testclient import TestClient
from inference_helpers import b64, jpeg

from kakehashi_inference.images import decode_image
from kakehashi_inference.model import LoadedModel


def expected_top(model: LoadedModel, data: bytes) -> tuple[str, float]:
    assert model.image is not None
    pixels = decode_image(data, 0, model.image, "tf", 10**8)
    scores = model.classify(pixels[None])[0]
    return model.label(int(np.argmax(scores))).category, float(np.max(scores))


def test_json_base64_images_get_one_answer_each_in_order(
    client: TestClient, image_model: LoadedModel
) -> None:
    images = [jpeg((250, 10, 10)), jpeg((10, 250, 10)), jpeg((10, 10, 250))]
    response = client.post("/v1/predict", json={"images": [{"data": b64(i)} for i in images]})
    assert response.status_code == 200, response.text
    results = response.json()["images"]
    assert len(results) == 3
    for result, image in zip(results, images, strict=True):
        assert set(result) == {"score", "category", "name"}
        category, score = expected_top(image_model, image)
        assert result["category"] == category
        assert result["name"] == f"class {int(category[1:])}"
        assert result["score"] == round(score, 4)


def test_score_is_rounded_to_four_places(client: TestClient) -> None:
    response = client.post("/v1/predict", json={"images": [{"data": b64(jpeg())}]})
    score = response.json()["images"][0]["score"]
    assert 0 < score <= 1
    assert round(score, 4) == score


def test_top_k_lists_the_best_classes_best_first(client: TestClient) -> None:
    response = client.post("/v1/predict?top_k=3", json={"images": [{"data": b64(jpeg())}]})
    result = response.json()["images"][0]
    predictions = result["predictions"]
    assert len(predictions) == 3
    assert [p["score"] for p in predictions] == sorted((p["score"] for p in predictions), reverse=True)
    assert predictions[0] == {k: result[k] for k in ("score", "category", "name")}
    assert len({p["category"] for p in predictions}) == 3


def test_top_k_out_of_range_is_refused(client: TestClient) -> None:
    response = client.post("/v1/predict?top_k=0", json={"images": [{"data": b64(jpeg())}]})
    assert response.status_code == 422


def test_raw_jpeg_and_png_bodies_skip_base64(client: TestClient, image_model: LoadedModel) -> None:
    for kind, data in (("image/jpeg", jpeg()), ("image/png", jpeg(fmt="PNG"))):
        response = client.post("/v1/predict", content=data, headers={"Content-Type": kind})
        assert response.status_code == 200, response.text
        assert response.json()["images"][0]["category"] == expected_top(image_model, data)[0]


def test_data_urls_are_accepted_as_base64(client: TestClient) -> None:
    data_url = "data:image/jpeg;base64," + b64(jpeg())
    response = client.post("/v1/predict", json={"images": [{"data": data_url}]})
    assert response.status_code == 200, response.text


def test_image_needs_exactly_one_of_url_and_data(client: TestClient) -> None:
    for image in ({}, {"url": "https://example.com/a.jpg", "data": b64(jpeg())}):
        response = client.post("/v1/predict", json={"images": [image]})
        assert response.status_code == 422


def test_other_content_types_are_refused_with_415(client: TestClient) -> None:
    response = client.post("/v1/predict", content=b"a,b", headers={"Content-Type": "text/csv"})
    assert response.status_code == 415
    assert "application/json" in response.json()["detail"]


def test_a_tabular_model_answers_409_on_v1(
    make_client: object, tabular_model: LoadedModel
) -> None:
    client = make_client(tabular_model)  # type: ignore[operator]
    response = client.post("/v1/predict", json={"images": [{"data": b64(jpeg())}]})
    assert response.status_code == 409
    assert "/v2/models/tabular/infer" in response.json()["detail"]
