"""The notebook SDK: train, wait, deploy and predict from Python, no YAML.

    from kakehashi.sdk import TrainingRun
    run = TrainingRun("digits", command="python train.py", hyperparameters={"epochs": 5}).submit()
    run.wait()
    predictor = run.deploy(registry="...", production_namespace="inference")
    predictor.predict(images)

Needs `kakehashi[sdk]` (the Kubernetes client; tqdm for progress bars, pandas for DataFrames).
Inside a pod it uses the pod's service account, elsewhere KUBECONFIG (see connection.py).
"""

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
