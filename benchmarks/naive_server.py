"""The usual FastAPI model server, re-implemented faithfully as the benchmark's baseline.

This is the design the inference server replaces: Keras `model.predict` on every request, PIL
for decoding, the model call made directly inside an `async def` endpoint (so the event loop
serves one request at a time), the same `/v1/predict` API and the same model. It is kept
honest rather than strawman: `verbose=0`, the model loaded once at start-up, the same
preprocessing (scale to [-1, 1]) and the same top-1 answer.

    python benchmarks/naive_server.py --model-dir DIR --port 8081
"""

from __future__ import annotations

import argparse
import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI
from PIL import Image
from pydantic import BaseModel


class ImageInput(BaseModel):
    data: str


class PredictRequest(BaseModel):
    images: list[ImageInput]


def build_app(model_dir: Path) -> FastAPI:
    import keras

    model: Any = keras.models.load_model(model_dir / "model.keras")
    labels = json.loads((model_dir / "labels.json").read_text())
    _, height, width, _ = model.input_shape
    app = FastAPI()

    @app.get("/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/v1/predict")
    async def predict(request: PredictRequest) -> dict[str, list[dict[str, Any]]]:
        results = []
        for item in request.images:
            image = Image.open(io.BytesIO(base64.b64decode(item.data))).convert("RGB")
            image = image.resize((width, height))
            x = np.asarray(image, dtype=np.float32)[None] / 127.5 - 1.0
            scores = model.predict(x, verbose=0)[0]
            best = int(np.argmax(scores))
            category, name = labels[best]
            results.append({"score": round(float(scores[best]), 4), "category": category,
                            "name": name})
        return {"images": results}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args()
    uvicorn.run(build_app(args.model_dir), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
