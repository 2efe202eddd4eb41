"""`Predictor.predict(data)`: numpy arrays, lists, pandas DataFrames and images in, Python out.

It talks to the ModelService's Service on the production cluster through that API server's
service proxy (`/api/v1/namespaces/NS/services/NAME:80/proxy/...`), so a notebook needs no
route to the production pods, only the kubeconfig delivery already uses. What goes where:

- arrays and (nested) lists: Open Inference Protocol v2 JSON (`/v2/models/NAME/infer`), typed
  and named from the model's own metadata (`GET /v2/models/NAME`); one example (a rank lower
  than the input's) is sent as a batch of one and answered unbatched;
- a dict {input name: array}: the same, for models with several inputs;
- a pandas DataFrame: its rows as CSV with a header row (`text/csv; header=present`), each
  column naming an input when the model has several;
- image bytes, or a path to an image file (or a list of either): `/v1/predict`, the image
  classification API, answered with the top class of each image.
"""

from __future__ import annotations

import base64
import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kakehashi.control.client import api_client
from kakehashi.serving.render import SERVICE_PORT

TIMEOUT_S: Final = 60.0
# v2 datatypes and the numpy dtypes that carry them (the server's runtimes.V2_DATATYPES).
V2_TO_NUMPY: Final = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64",
}


def _is_image(item: Any) -> bool:
    return isinstance(item, bytes | bytearray | Path) or (
        isinstance(item, str) and Path(item).suffix.lower() in (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp"))


def _image_bytes(item: Any) -> bytes:
    return bytes(item) if isinstance(item, bytes | bytearray) else Path(item).read_bytes()


def _is_dataframe(data: Any) -> bool:
    return hasattr(data, "to_csv") and hasattr(data, "columns")


class Predictor:
    """Predictions from one served model (named like its ModelService)."""

    def __init__(self, service: str, namespace: str, api: client.ApiClient, *, model: str | None = None,
                 timeout: float = TIMEOUT_S) -> None:
        self.service = service
        self.namespace = namespace  # on the production cluster
        self.api = api
        self.model = model or service  # the server names its model after the service
        self.timeout = timeout
        self._metadata: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"Predictor({self.service!r}, namespace={self.namespace!r})"

    @classmethod
    def from_kubeconfig(cls, service: str, namespace: str, kubeconfig: Path | str, **kwargs: Any) -> Predictor:
        return cls(service, namespace, api_client(kubeconfig, pool_size=4), **kwargs)

    @classmethod
    def from_kubeconfig_text(cls, service: str, namespace: str, text: str, **kwargs: Any) -> Predictor:
        # The client reads kubeconfigs from files (and loads the credentials at once): the
        # file, which holds a credential, lives only while it is parsed.
        with tempfile.NamedTemporaryFile("w", suffix=".kubeconfig") as handle:
            handle.write(text)
            handle.flush()
            return cls.from_kubeconfig(service, namespace, handle.name, **kwargs)

    # -- transport --------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"/api/v1/namespaces/{self.namespace}/services/{self.service}:{SERVICE_PORT}/proxy{path}"

    def _call(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        from kakehashi.sdk.errors import PredictionError

        try:
            response = self.api.call_api(
                self._url(path), method, body=body, header_params={"Content-Type": content_type,
                                                                   "Accept": "application/json"},
                auth_settings=["BearerToken"], _preload_content=False, _return_http_data_only=True,
                _request_timeout=self.timeout)
        except ApiException as error:
            raise PredictionError(error.status or 0, _detail(error.body) or str(error.reason)) from None
        return json.loads(response.data)

    # -- the model --------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        """The model's v2 metadata: inputs and outputs (name, datatype, shape), digest."""
        if self._metadata is None:
            self._metadata = dict(self._call("GET", f"/v2/models/{self.model}"))
        return self._metadata

    # -- predictions ------------------------------------------------------------------------

    def predict(self, data: Any, *, top_k: int | None = None) -> Any:
        """Predictions for `data` (see the module's docstring for what is accepted)."""
        if _is_dataframe(data):
            return self.predict_csv(data.to_csv(index=False), header=True)
        if _is_image(data):
            return self.classify([data], top_k=top_k)[0]
        if isinstance(data, list | tuple) and data and all(_is_image(item) for item in data):
            return self.classify(list(data), top_k=top_k)
        if isinstance(data, Mapping):
            return self.infer(dict(data))
        return self.infer({None: data})

    def classify(self, images: Sequence[Any], *, top_k: int | None = None) -> list[dict[str, Any]]:
        """The top class (and the `top_k` best) of each image: bytes or paths."""
        query = f"?top_k={top_k}" if top_k else ""
        payload = {"images": [{"data": base64.b64encode(_image_bytes(image)).decode()} for image in images]}
        answer = self._call("POST", f"/v1/predict{query}", payload)
        return list(answer["images"])

    def predict_csv(self, text: str, *, header: bool = True) -> Any:
        """CSV rows as one batch (`header`: the first row names the columns)."""
        content_type = "text/csv; header=present" if header else "text/csv"
        answer = self._call("POST", f"/v2/models/{self.model}/infer", text.encode(), content_type)
        return _outputs(answer, unbatch=False)

    def infer(self, inputs: dict[str | None, Any]) -> Any:
        """v2 inference: {input name (None: the model's only input): array or list}."""
        import numpy as np

        declared = {i["name"]: i for i in self.metadata()["inputs"]}
        tensors = []
        single = False
        for name, value in inputs.items():
            if name is None:
                if len(declared) != 1:
                    raise ValueError(f"the model has inputs {sorted(declared)}: pass a dict of them")
                name = next(iter(declared))
            if name not in declared:
                raise ValueError(f"the model has no input {name!r}; it has {sorted(declared)}")
            spec = declared[name]
            array = np.asarray(value, dtype=V2_TO_NUMPY.get(spec["datatype"]))
            if array.ndim == len(spec["shape"]) - 1:  # one example: send a batch of one
                array, single = array[np.newaxis, ...], True
            tensors.append({"name": name, "shape": list(array.shape), "datatype": spec["datatype"],
                            "data": array.reshape(-1).tolist()})
        answer = self._call("POST", f"/v2/models/{self.model}/infer", {"inputs": tensors})
        return _outputs(answer, unbatch=single)


def _outputs(answer: dict[str, Any], *, unbatch: bool) -> Any:
    """v2 outputs as nested lists: the only output's, else {name: ...}."""
    import numpy as np

    results = {}
    for tensor in answer["outputs"]:
        value = np.asarray(tensor["data"]).reshape(tensor["shape"])
        results[tensor["name"]] = (value[0] if unbatch else value).tolist()
    return next(iter(results.values())) if len(results) == 1 else results


def _detail(body: Any) -> str:
    """The server's own words from an error body: v1's detail, v2's error, or the text."""
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    if not body:
        return ""
    try:
        parsed = json.loads(body)
    except ValueError:
        return str(body)[:2000]
    if isinstance(parsed, dict):
        return str(parsed.get("detail") or parsed.get("error") or parsed.get("message") or parsed)
    return str(parsed)
