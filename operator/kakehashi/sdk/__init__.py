"""The notebook SDK: train, wait, deploy and predict from Python, no YAML.

    from kakehashi.sdk import TrainingRun
    run = TrainingRun("digits", command="python train.py", hyperparameters={"epochs": 5}).submit()
    run.wait()
    predictor = run.deploy(registry="...", production_namespace="inference")
    predictor.predict(images)

Needs `kakehashi[sdk]` (the Kubernetes client; tqdm for progress bars, pandas for DataFrames).
Inside a pod it uses the pod's service account, elsewhere KUBECONFIG (see connection.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kakehashi.sdk.connection import Connection, connect
    from kakehashi.sdk.errors import (
        KakehashiError,
        NotFound,
        PredictionError,
        RunFailed,
        ServiceFailed,
        SpecConflict,
        WaitTimeout,
    )
    from kakehashi.sdk.predictor import Predictor
    from kakehashi.sdk.serving import ModelService, deploy
    from kakehashi.sdk.training import TrainingRun

# Where each name lives. They are imported on first use (PEP 562), so `kakehashi.sdk.cli`
# and `kakehashi.sdk.output` load without the Kubernetes client: `kakehashi --help` lists the
# verbs in images that do not install kakehashi[sdk].
_EXPORTS = {
    "Connection": "connection", "connect": "connection",
    "KakehashiError": "errors", "NotFound": "errors", "PredictionError": "errors", "RunFailed": "errors",
    "ServiceFailed": "errors", "SpecConflict": "errors", "WaitTimeout": "errors",
    "Predictor": "predictor", "ModelService": "serving", "deploy": "serving", "TrainingRun": "training",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


__all__ = [
    "Connection",
    "KakehashiError",
    "ModelService",
    "NotFound",
    "PredictionError",
    "Predictor",
    "RunFailed",
    "ServiceFailed",
    "SpecConflict",
    "TrainingRun",
    "WaitTimeout",
    "connect",
    "deploy",
]
