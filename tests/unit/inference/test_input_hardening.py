"""Input hardening: size and count limits, undecodable images, and that a bad image never
takes down the server or other requests."""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient
from inference_helpers import ClientFactory, b64, jpeg
from PIL import Image


def test_undecodable_image_is_400_naming_the_image_and_why(client: TestClient) -> None:
    images = [{"data": b64(jpeg())}, {"data": b64(b"this is not an image at all")}]
    response = client.post("/v1/predict", json={"images": images})
    assert response.status_code == 400
    body = response.json()
    assert body["image"] == 1
    assert body["detail"].startswith("images[1]: not a decodable image")


def test_truncated_jpeg_is_400_naming_the_image(client: TestClient) -> None:
    broken = jpeg(size=(200, 200))[:300]
    response = client.post("/v1/predict", json={"images": [{"data": b64(broken)}]})
    assert response.status_code == 400
    assert response.json()["detail"].startswith("images[0]: image data is corrupt or truncated")


def test_invalid_base64_is_400(client: TestClient) -> None:
    response = client.post("/v1/predict", json={"images": [{"data": "%%% not base64 %%%"}]})
    assert response.status_code == 400
    assert "images[0]" in response.json()["detail"] and "base64" in response.json()["detail"]


def test_image_over_the_per_image_limit_is_413(make_client: ClientFactory) -> None:
    client = make_client(max_image_bytes=2000)
    big = jpeg(size=(400, 400))
    assert len(big) > 2000
    response = client.post("/v1/predict", json={"images": [{"data": b64(big)}]})
    assert response.status_code == 413
    assert response.json()["image"] == 0
    raw = client.post("/v1/predict", content=big, headers={"Content-Type": "image/jpeg"})
    assert raw.status_code == 413


def test_request_over_the_per_request_limit_is_413(make_client: ClientFactory) -> None:
    client = make_client(max_request_bytes=4000)
    images = [{"data": b64(jpeg())} for _ in range(8)]
    response = client.post("/v1/predict", json={"images": images})
    assert response.status_code == 413
    assert "request body" in response.json()["detail"]


def test_too_many_images_in_one_request_is_413(make_client: ClientFactory) -> None:
    client = make_client(max_images=3)
    response = client.post("/v1/predict", json={"images": [{"data": b64(jpeg())}] * 4})
    assert response.status_code == 413
    assert "4 images" in response.json()["detail"]


def test_decompression_bomb_is_refused_before_decoding(make_client: ClientFactory) -> None:
    client = make_client(max_image_pixels=1_000_000)
    buffer = io.BytesIO()
    Image.new("L", (2000, 2000)).save(buffer, "PNG")  # 4 Mpixel, a few KB compressed
    response = client.post("/v1/predict", content=buffer.getvalue(),
                           headers={"Content-Type": "image/png"})
    assert response.status_code == 413
    assert "2000x2000 pixels" in response.json()["detail"]


def test_bad_images_never_fail_concurrent_good_requests(client: TestClient) -> None:
    good = {"images": [{"data": b64(jpeg())}]}
    bad = {"images": [{"data": b64(b"\xff\xd8\xff garbage")}]}
    barrier = threading.Barrier(16)

    def call(index: int) -> int:
        barrier.wait()
        return client.post("/v1/predict", json=bad if index % 2 else good).status_code

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(call, range(16)))
    assert codes == [200, 400] * 8
    assert client.get("/health").status_code == 200
    assert client.post("/v1/predict", json=good).status_code == 200
