"""The trainer runtime: what training code calls inside a Kakehashi training container.

    from kakehashi import trainer

    ctx = trainer.context()               # hyperparameters, data/output URIs, lineage, TF_CONFIG
    epochs = ctx.get("epochs", 10)        # typed, from KAKEHASHI_HYPERPARAMETERS or --epochs=20
    ...train...
    trainer.save(model, labels=[...], metrics={"accuracy": acc})   # only the chief uploads

Importing this package does not import TensorFlow; `save` does, when called.
"""

from __future__ import annotations

from kakehashi.trainer.context import (
    Hyperparameters,
    HyperparameterValue,
    Task,
    TrainingContext,
    context,
    parse_hyperparameters,
    parse_tf_config,
)
from kakehashi.trainer.data import download, read_bytes
from kakehashi.trainer.save import save, write_artifact

__all__ = [
    "HyperparameterValue",
    "Hyperparameters",
    "Task",
    "TrainingContext",
    "context",
    "download",
    "parse_hyperparameters",
    "parse_tf_config",
    "read_bytes",
    "save",
    "write_artifact",
]
