"""ModelService and Predictor in the SDK: the spec a deploy renders, rollback, what predict sends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sdk_fakes import FakeConnection

from kakehashi.sdk import KakehashiError, ModelService, PredictionError, Predictor
from kakehashi.sdk.serving import render_spec

DIGEST = "sha256:" + "b" * 64


def _service(connection: FakeConnection) -> ModelService:
    return ModelService("digits", connection=connection)  # type: ignore[arg-type]


def test_a_deploy_renders_a_direct_delivery_of_the_runs_model() -> None:
    spec = render_spec(training_run="digits", registry="registry/models", production_namespace="inference",
                       cpu="250m", memory="512Mi", node_selector={"kakehashi.dev/node": "real"},
                       tolerations=[{"key": "kakehashi.dev/node", "value": "real", "effect": "NoSchedule"}])
    dumped = spec.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    assert dumped["model"] == {"trainingRun": "digits"}
    assert dumped["delivery"] == {"mode": "direct", "direct": {"kubeconfigSecret": {"name": "production"},
                                                               "namespace": "inference"}}
    assert dumped["resources"] == {"cpu": "250m", "memory": "512Mi"}
    assert dumped["tolerations"][0]["effect"] == "NoSchedule"


def test_a_model_by_uri_needs_its_digest() -> None:
    spec = render_spec(model_uri="s3://models/x/", model_digest=DIGEST, registry="r/m", production_namespace="p")
    assert (spec.model.uri, spec.model.digest, spec.model.training_run) == ("s3://models/x/", DIGEST, None)
    with pytest.raises(ValidationError, match="uri and digest go together"):
        render_spec(model_uri="s3://models/x/", registry="r/m", production_namespace="p")


def test_updating_a_service_replaces_the_model_and_clears_a_rollback() -> None:
    connection = FakeConnection()
    service = _service(connection).apply(render_spec(training_run="v1", registry="r/m", production_namespace="p"))
    connection.kube.objects[("modelservices", "team", "digits")]["spec"]["rollbackTo"] = "1"
    service.apply(render_spec(training_run="v2", registry="r/m", production_namespace="p"))
    assert connection.kube.creates == 1
    stored = connection.kube.objects[("modelservices", "team", "digits")]
    assert stored["spec"]["model"] == {"trainingRun": "v2"} and "rollbackTo" not in stored["spec"]
    assert stored["metadata"]["generation"] == 2
    # Who changed it goes into the service's history (the operator reads this annotation).
    assert stored["metadata"]["annotations"] == {"kakehashi.dev/changed-by": "ada via kakehashi sdk"}


def test_the_changed_by_annotation_is_the_operators() -> None:
    from kakehashi.sdk.serving import CHANGED_BY
    from kakehashi.serving.reconciler import ANNOTATION_CHANGED_BY

    assert CHANGED_BY == ANNOTATION_CHANGED_BY


def _history(connection: FakeConnection, image: str) -> None:
    connection.kube.objects[("modelservices", "team", "digits")]["status"] = {
        "image": image,
        "history": [{"id": i, "modelDigest": DIGEST, "image": f"r/m@sha256:{i}", "time": "2026-11-26T10:00:00Z"}
                    for i in (1, 2, 3)],
    }


def test_rollback_defaults_to_the_deploy_before_the_current_one() -> None:
    connection = FakeConnection()
    service = _service(connection).apply(render_spec(training_run="v1", registry="r/m", production_namespace="p"))
    _history(connection, "r/m@sha256:3")
    service.rollback()
    assert connection.kube.patches[-1]["spec"] == {"rollbackTo": "2"}
    service.rollback(1)
    assert connection.kube.patches[-1]["spec"] == {"rollbackTo": "1"}
    assert connection.kube.patches[-1]["metadata"]["annotations"]["kakehashi.dev/changed-by"] == "ada via kakehashi sdk"


def test_rollback_without_an_earlier_deploy_says_so() -> None:
    connection = FakeConnection()
    service = _service(connection).apply(render_spec(training_run="v1", registry="r/m", production_namespace="p"))
    with pytest.raises(KakehashiError, match="no earlier deploy"):
        service.rollback()


class FakeResponse:
    def __init__(self, data: Any) -> None:
        self.data = json.dumps(data).encode()


class FakeApi:
    """Answers the service proxy's paths like the inference server behind it."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def call_api(self, path: str, method: str, body: Any = None, header_params: Any = None, **_: Any) -> FakeResponse:
        self.calls.append({"path": path, "method": method, "body": body, "headers": header_params})
        if path.endswith("/v2/models/scorer"):
            return FakeResponse({"name": "scorer", "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 3]}],
                                 "outputs": [{"name": "score", "datatype": "FP32", "shape": [-1, 1]}]})
        if path.endswith("/infer"):
            rows = 2 if isinstance(body, bytes) else body["inputs"][0]["shape"][0]
            return FakeResponse({"model_name": "scorer", "outputs": [
                {"name": "score", "shape": [rows, 1], "datatype": "FP32", "data": [6.0] * rows}]})
        if path.endswith("/v1/predict"):
            return FakeResponse({"images": [{"score": 0.9, "category": "7", "name": "seven"}
                                            for _ in body["images"]]})
        raise AssertionError(path)


def _predictor() -> tuple[Predictor, FakeApi]:
    api = FakeApi()
    return Predictor("scorer", "inference", api), api  # type: ignore[arg-type]


def test_an_array_goes_to_the_v2_endpoint_typed_and_named_from_the_models_metadata() -> None:
    import numpy as np

    predictor, api = _predictor()
    assert predictor.predict(np.ones((2, 3), dtype=np.float64)) == [[6.0], [6.0]]
    call = api.calls[-1]
    assert call["path"] == "/api/v1/namespaces/inference/services/scorer:80/proxy/v2/models/scorer/infer"
    assert call["body"] == {"inputs": [{"name": "features", "shape": [2, 3], "datatype": "FP32",
                                        "data": [1.0] * 6}]}


def test_one_example_is_sent_as_a_batch_of_one_and_answered_unbatched() -> None:
    predictor, api = _predictor()
    assert predictor.predict([1, 1, 1]) == [6.0]
    assert api.calls[-1]["body"]["inputs"][0]["shape"] == [1, 3]


def test_a_dataframe_goes_as_csv_with_its_header() -> None:
    pandas = pytest.importorskip("pandas")
    predictor, api = _predictor()
    frame = pandas.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0], "c": [5.0, 6.0]})
    assert predictor.predict(frame) == [[6.0], [6.0]]
    call = api.calls[-1]
    assert call["headers"]["Content-Type"] == "text/csv; header=present"
    assert call["body"] == b"a,b,c\n1.0,3.0,5.0\n2.0,4.0,6.0\n"


def test_images_go_to_v1_as_bytes_or_paths(tmp_path: Path) -> None:
    predictor, api = _predictor()
    image = tmp_path / "seven.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    assert predictor.predict(image) == {"score": 0.9, "category": "7", "name": "seven"}
    assert predictor.predict([b"\xff\xd8\xffjpeg", str(image)])[1]["name"] == "seven"
    call = api.calls[-1]
    assert call["path"].endswith("/proxy/v1/predict") and len(call["body"]["images"]) == 2


def test_the_servers_refusal_is_raised_in_its_own_words() -> None:
    from kubernetes.client.exceptions import ApiException

    class Refusing(FakeApi):
        def call_api(self, path: str, method: str, body: Any = None, header_params: Any = None, **_: Any) -> FakeResponse:
            error = ApiException(status=400, reason="Bad Request")
            error.body = json.dumps({"error": "input 'features': 2 values do not fill shape [1, 3]"}).encode()
            raise error

    predictor = Predictor("scorer", "inference", Refusing())  # type: ignore[arg-type]
    predictor._metadata = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 3]}]}
    with pytest.raises(PredictionError, match=r"\(400\): input 'features': 2 values do not fill"):
        predictor.predict([[1, 1]])
