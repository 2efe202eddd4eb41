"""Fixtures for the inference server: one tiny image classifier and one tabular model per
session (real SavedModels, built with Keras / tf.Module, then compiled once by
`kakehashi.compile` as the bake step does), a factory for test clients, JPEG payloads, and a
real local HTTP server to fetch image URLs from."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from fastapi.testclient import TestClient
from inference_helpers import ClientFactory, ImageServer, jpeg

from kakehashi.compile import compile_model
from kakehashi_inference.app import create_app
from kakehashi_inference.model import LoadedModel, load_model
from kakehashi_inference.settings import Settings

IMAGE_SIZE = 32
CLASSES = 10
LABELS = [[f"n{index:08d}", f"class {index}"] for index in range(CLASSES)]


def build_image_model(directory: Path) -> Path:
    import keras

    keras.utils.set_random_seed(7)
    model = keras.Sequential([
        keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3)),
        keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
        keras.layers.DepthwiseConv2D(3, padding="same", activation="relu"),
        keras.layers.Conv2D(16, 1, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(CLASSES, activation="softmax"),
    ])
    model.export(str(directory / "savedmodel"), verbose=False)
    (directory / "labels.json").write_text(json.dumps(LABELS))
    return directory


def build_tabular_model(directory: Path) -> Path:
    """Two signatures, neither an image: a [rows, 4] scorer and a two-input column model."""
    import tensorflow as tf

    class Tabular(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.weights = tf.Variable([[1.0], [2.0], [3.0], [4.0]])

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="features")])
        def score(self, features: Any) -> Any:
            return {"score": tf.matmul(features, self.weights)}

        @tf.function(input_signature=[
            tf.TensorSpec([None], tf.float32, name="price"),
            tf.TensorSpec([None], tf.int64, name="quantity"),
        ])
        def total(self, price: Any, quantity: Any) -> Any:
            return {"total": price * tf.cast(quantity, tf.float32), "items": quantity}

    module = Tabular()
    tf.saved_model.save(
        module,
        str(directory / "savedmodel"),
        signatures={"serving_default": module.score, "total": module.total},
    )
    return directory


@pytest.fixture(scope="session")
def image_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image model, compiled (`compiled/` beside `savedmodel/`)."""
    directory = build_image_model(tmp_path_factory.mktemp("image-model"))
    assert compile_model(directory).passed
    return directory


@pytest.fixture(scope="session")
def tabular_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = build_tabular_model(tmp_path_factory.mktemp("tabular-model"))
    assert compile_model(directory).passed
    return directory


@pytest.fixture(scope="session")
def image_model(image_model_dir: Path) -> LoadedModel:
    """The image model as the light image serves it: compiled, on LiteRT."""
    settings = Settings(model_name="tiny", model_dir=image_model_dir, max_batch_size=8)
    model = load_model(settings, threads=2)
    model.runner.complete()
    return model


@pytest.fixture(scope="session")
def tabular_model(tabular_model_dir: Path) -> LoadedModel:
    return load_model(Settings(model_name="tabular", model_dir=tabular_model_dir), threads=2)


@pytest.fixture(scope="session")
def tabular_savedmodel(tabular_model_dir: Path) -> LoadedModel:
    """The tabular model on TensorFlow (the full image's fallback path)."""
    settings = Settings(model_name="tabular", model_dir=tabular_model_dir, runtime="savedmodel")
    return load_model(settings, threads=2)


@pytest.fixture
def make_client(image_model: LoadedModel, image_model_dir: Path) -> Iterator[ClientFactory]:
    """A started test client over the session's image model, with settings overridden."""
    clients: list[TestClient] = []

    def make(model: LoadedModel | None = None, **overrides: Any) -> TestClient:
        model = model or image_model
        settings = Settings(
            model_name=model.name, model_dir=model.directory, max_batch_size=8, **overrides
        )
        client = TestClient(create_app(settings, model), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: ClientFactory) -> TestClient:
    return make_client()


@pytest.fixture(scope="session")
def image_server() -> Iterator[ImageServer]:
    state = ImageServer(port=0)
    image = jpeg((30, 160, 90))

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            parsed = urlparse(self.path)
            query = parse_qs(parsed.query)
            group = query.get("group", [""])[0]
            with state.lock:
                state.in_flight[group] = state.in_flight.get(group, 0) + 1
                state.max_in_flight[group] = max(
                    state.max_in_flight.get(group, 0), state.in_flight[group]
                )
            counted = True
            try:
                if parsed.path == "/image.jpg":
                    self._send(200, image)
                elif parsed.path == "/slow.jpg":
                    time.sleep(float(query.get("seconds", ["0.3"])[0]))
                    # Leave the count before answering: once the client has the answer it
                    # may start the next download at once.
                    with state.lock:
                        state.in_flight[group] -= 1
                    counted = False
                    self._send(200, image)
                elif parsed.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", query["to"][0])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif parsed.path == "/big.jpg":
                    # No Content-Length: the limit must hold while streaming, too.
                    self.send_response(200)
                    self.end_headers()
                    for _ in range(64):
                        self.wfile.write(b"\xff" * 65536)
                elif parsed.path == "/text":
                    self._send(200, b"hello, not an image")
                else:
                    self._send(404, b"not found")
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                if counted:
                    with state.lock:
                        state.in_flight[group] -= 1

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("0.0.0.0", 0), Handler)
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
