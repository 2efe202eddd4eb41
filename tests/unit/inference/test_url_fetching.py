"""Image URLs: http(s) only, SSRF protection with an explicit allowlist, redirects checked
again, size limit while streaming, download timeout, bounded concurrent downloads."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from inference_helpers import ClientFactory, ImageServer

LOOPBACK = ("127.0.0.1/32",)


def predict_url(client: TestClient, url: str) -> tuple[int, dict[str, object]]:
    response = client.post("/v1/predict", json={"images": [{"url": url}]})
    return response.status_code, response.json()


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.jpg",
                                 "gopher://127.0.0.1:70/", "//example.com/a.jpg"])
def test_only_http_and_https_urls_are_fetched(client: TestClient, url: str) -> None:
    status, body = predict_url(client, url)
    assert status == 400
    assert "only http and https" in str(body["detail"])


def test_loopback_is_refused_without_the_allowlist(
    client: TestClient, image_server: ImageServer
) -> None:
    for host in ("127.0.0.1", "localhost", "[::ffff:127.0.0.1]"):
        status, body = predict_url(client, image_server.url("/image.jpg", host))
        assert status == 400, host
        assert "refused" in str(body["detail"]) and "loopback" in str(body["detail"])


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/iam/", "cloud metadata"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "cloud metadata"),
        ("http://10.0.0.7/cat.jpg", "private"),
        ("http://192.168.1.1/cat.jpg", "private"),
        ("http://169.254.10.10/cat.jpg", "link-local"),
        ("http://0.0.0.0/cat.jpg", "unspecified"),
        ("http://100.64.0.1/cat.jpg", "not a public"),
        # Hole 6: IPv6 forms that embed an IPv4 address are judged by that address.
        ("http://[64:ff9b::a9fe:a9fe]/latest/meta-data/", "cloud metadata"),  # NAT64
        ("http://[64:ff9b::7f00:1]/cat.jpg", "loopback"),
        ("http://[2002:a9fe:a9fe::1]/latest/meta-data/", "cloud metadata"),  # 6to4
        ("http://[2002:c0a8:101::]/cat.jpg", "private"),
        ("http://[::169.254.169.254]/latest/meta-data/", "cloud metadata"),  # IPv4-compatible
        ("http://[::127.0.0.1]/cat.jpg", "loopback"),
        ("http://[::ffff:0:a9fe:a9fe]/latest/meta-data/", "cloud metadata"),  # IPv4-translated
        ("http://[::ffff:0:10.0.0.1]/cat.jpg", "private"),
    ],
)
def test_internal_addresses_are_refused(client: TestClient, url: str, reason: str) -> None:
    status, body = predict_url(client, url)
    assert status == 400
    assert reason in str(body["detail"])


def test_nat64_of_a_public_address_is_not_refused_for_its_form(client: TestClient) -> None:
    # 64:ff9b::808:808 is 8.8.8.8 through NAT64: public, so the refusal (if any) is not ours.
    _, body = predict_url(client, "http://[64:ff9b::808:808]:9/cat.jpg")
    assert "refused" not in str(body.get("detail", ""))


def test_allowlisted_address_is_fetched(
    make_client: ClientFactory, image_server: ImageServer
) -> None:
    client = make_client(url_allowlist=LOOPBACK)
    status, body = predict_url(client, image_server.url("/image.jpg"))
    assert status == 200, body
    assert body["images"][0]["category"].startswith("n")  # type: ignore[index]


def test_allowlisted_host_name_is_fetched(
    make_client: ClientFactory, image_server: ImageServer
) -> None:
    client = make_client(url_allowlist=("localhost",))
    status, body = predict_url(client, image_server.url("/image.jpg", "localhost"))
    assert status == 200, body


def test_redirects_are_followed_and_checked_again(
    make_client: ClientFactory, image_server: ImageServer
) -> None:
    client = make_client(url_allowlist=LOOPBACK)
    allowed = image_server.url("/image.jpg")
    status, _ = predict_url(client, image_server.url(f"/redirect?to={quote(allowed)}"))
    assert status == 200
    # 127.0.0.2 serves the same image (all of 127/8 is loopback) but is not allowlisted.
    elsewhere = image_server.url("/image.jpg", "127.0.0.2")
    status, body = predict_url(client, image_server.url(f"/redirect?to={quote(elsewhere)}"))
    assert status == 400
    assert "127.0.0.2" in str(body["detail"]) and "refused" in str(body["detail"])
    metadata = "http://169.254.169.254/latest/meta-data/"
    status, body = predict_url(client, image_server.url(f"/redirect?to={quote(metadata)}"))
    assert status == 400 and "cloud metadata" in str(body["detail"])


def test_download_over_the_image_limit_is_413_while_streaming(
    make_client: ClientFactory, image_server: ImageServer
) -> None:
    client = make_client(url_allowlist=LOOPBACK, max_image_bytes=100_000)
    status, body = predict_url(client, image_server.url("/big.jpg"))
    assert status == 413
    assert body["image"] == 0


def test_slow_download_is_504(make_client: ClientFactory, image_server: ImageServer) -> None:
    client = make_client(url_allowlist=LOOPBACK, download_timeout_s=0.3)
    status, body = predict_url(client, image_server.url("/slow.jpg?seconds=2"))
    assert status == 504
    assert "within 0.3 s" in str(body["detail"])


def test_upstream_error_and_non_image_name_the_image(
    make_client: ClientFactory, image_server: ImageServer
) -> None:
    client = make_client(url_allowlist=LOOPBACK)
    images = [{"url": image_server.url("/image.jpg")}, {"url": image_server.url("/missing")}]
    response = client.post("/v1/predict", json={"images": images})
    assert response.status_code == 400
    assert response.json()["detail"].startswith("images[1]: download of")
    assert "HTTP 404" in response.json()["detail"]
    status, body = predict_url(client, image_server.url("/text"))
    assert status == 400 and "not a decodable image" in str(body["detail"])


def test_concurrent_downloads_are_bounded(
    make_client: ClientFactory, image_server: ImageServer
) -> None:
    client = make_client(url_allowlist=LOOPBACK, max_downloads=2)
    images = [{"url": image_server.url(f"/slow.jpg?seconds=0.2&group=bounded&n={i}")}
              for i in range(6)]
    response = client.post("/v1/predict", json={"images": images})
    assert response.status_code == 200, response.text
    assert len(response.json()["images"]) == 6
    assert image_server.max_in_flight["bounded"] == 2
