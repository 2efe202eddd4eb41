"""`trainer.save` with real TensorFlow, to a local output URI (no S3 needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kakehashi import contract, modelformat
from kakehashi.modelformat import ModelArtifact, content_digest
from kakehashi.trainer import context, save

tf = pytest.importorskip("tensorflow")
pytestmark = pytest.mark.slow

WORKER_1 = json.dumps({"cluster": {"worker": ["w0:2222", "w1:2222"]},
                       "task": {"type": "worker", "index": 1}})


def _keras_model() -> Any:
    import keras

    model = keras.Sequential([keras.Input(shape=(3,), name="features"),
                              keras.layers.Dense(2, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy")
    return model


def test_a_keras_model_is_saved_servable_with_its_artifact(tmp_path: Path) -> None:
    out = tmp_path / "out"
    ctx = context(argv=["--epochs=1"], environ={contract.ENV_OUTPUT_URI: out.as_uri() + "/"})
    artifact = save(_keras_model(), labels=["no", "yes"], metrics={"accuracy": 0.5}, ctx=ctx)

    assert ModelArtifact.model_validate_json((out / modelformat.MODEL_MANIFEST).read_text()) == artifact
    assert content_digest(out) == artifact.digest
    assert artifact.lineage.frameworks["tensorflow"] == tf.__version__
    loaded = tf.saved_model.load(str(out / modelformat.SAVEDMODEL_DIR))
    (probabilities,) = loaded.signatures["serving_default"](
        features=tf.constant([[1.0, 2.0, 3.0]])
    ).values()
    assert probabilities.shape == (1, 2)


def test_a_tf_module_without_a_serving_signature_is_refused(tmp_path: Path) -> None:
    module = tf.Module()
    module.v = tf.Variable(1.0)
    ctx = context(argv=[], environ={contract.ENV_OUTPUT_URI: str(tmp_path / "out")})
    with pytest.raises(ValueError, match="serving_default"):
        save(module, ctx=ctx)
    assert not (tmp_path / "out").exists()


def test_a_tf_module_with_a_signature_is_saved(tmp_path: Path) -> None:
    class Doubler(tf.Module):  # type: ignore[misc]
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])  # type: ignore[misc]
        def __call__(self, x: Any) -> Any:
            return {"y": 2 * x}

    model = Doubler()
    save(model, ctx=context(argv=[], environ={}), output_uri=str(tmp_path / "out"),
         signatures={"serving_default": model.__call__})
    loaded = tf.saved_model.load(str(tmp_path / "out" / modelformat.SAVEDMODEL_DIR))
    result = loaded.signatures["serving_default"](x=tf.constant([1.0, 2.0]))
    assert result["y"].numpy().tolist() == [2.0, 4.0]


def test_only_the_chief_writes_the_model(tmp_path: Path) -> None:
    out = tmp_path / "out"
    ctx = context(argv=[], environ={contract.ENV_OUTPUT_URI: str(out), "TF_CONFIG": WORKER_1})
    assert not ctx.is_chief
    artifact = save(_keras_model(), labels=["no", "yes"], ctx=ctx)
    assert artifact.digest.startswith("sha256:")
    assert not out.exists()


def test_without_an_output_uri_save_says_what_to_set() -> None:
    with pytest.raises(ValueError, match=contract.ENV_OUTPUT_URI):
        save(_keras_model(), ctx=context(argv=[], environ={}))
