"""Train a small Keras classifier on scikit-learn's bundled 8x8 digits; save it with Kakehashi.

Runs unchanged in a notebook and as a TrainingRun's command:

    python examples/digits/train.py --epochs=30

Data: `KAKEHASHI_DATA_URI`, when set, names an .npz with `images` (N x 8 x 8, values 0..16) and
`labels` (N); otherwise the digits bundled with scikit-learn are used, so nothing is downloaded.
The last `holdout` fraction of the samples, in dataset order, is never trained on; the accuracy
on it is the `accuracy` metric a TrainingRun's gate can require.
"""

from __future__ import annotations

import io
import time
from typing import Any

from kakehashi import trainer

CLASSES = [str(digit) for digit in range(10)]


def load(data_uri: str | None) -> tuple[Any, Any]:
    """Images (N x 8 x 8 float32, raw 0..16 intensities) and integer labels (N)."""
    import numpy as np

    if data_uri:
        with np.load(io.BytesIO(trainer.read_bytes(data_uri))) as data:
            return data["images"].astype("float32"), data["labels"].astype("int64")
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype("float32"), digits.target.astype("int64")


def split(images: Any, labels: Any, holdout: float) -> tuple[Any, Any, Any, Any]:
    """Train on the first samples, hold out the last `holdout` fraction (in dataset order)."""
    cut = int(len(images) * (1 - holdout))
    return images[:cut], labels[:cut], images[cut:], labels[cut:]


def build(hidden: int, learning_rate: float, dropout: float) -> Any:
    import keras

    # The rescaling is part of the model, so the inference server sends raw pixel intensities.
    model = keras.Sequential(
        [
            keras.Input(shape=(8, 8), name="pixels"),
            keras.layers.Rescaling(1.0 / 16.0),
            keras.layers.Flatten(),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dropout(dropout),
            keras.layers.Dense(len(CLASSES), activation="softmax", name="probabilities"),
        ],
        name="digits",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def main() -> None:
    ctx = trainer.context()
    epochs = ctx.get("epochs", 30)
    batch_size = ctx.get("batch_size", 32)
    hidden = ctx.get("hidden", 64)
    learning_rate = ctx.get("learning_rate", 0.005)
    dropout = ctx.get("dropout", 0.1)
    holdout = ctx.get("holdout", 0.2)
    seed = ctx.get("seed", 0)

    import keras

    keras.utils.set_random_seed(seed)
    images, labels = load(ctx.data_uri)
    x_train, y_train, x_test, y_test = split(images, labels, holdout)

    model = build(hidden, learning_rate, dropout)
    started = time.monotonic()
    history = model.fit(x_train, y_train, epochs=epochs, batch_size=batch_size, verbose=2)
    training_seconds = time.monotonic() - started
    loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"digits: held-out accuracy {accuracy:.4f} on {len(x_test)} samples, "
          f"trained in {training_seconds:.1f}s")

    trainer.save(
        model,
        labels=CLASSES,
        metrics={
            "accuracy": accuracy,
            "loss": loss,
            "train_accuracy": history.history["accuracy"][-1],
            "training_seconds": training_seconds,
        },
    )


if __name__ == "__main__":
    main()
