"""Model loading: the input size comes from the model, the compiled model matches the SavedModel
within the stated tolerance, and any batch size gives the same answers as one image at a time."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from kakehashi.modelformat import content_digest
from kakehashi_inference.model import (
    ImageSpec,
    Label,
    LoadedModel,
    ModelLoadError,
    load_labels,
    load_model,
)
from kakehashi_inference.settings import Settings

# The tolerance `kakehashi compile` checks by default (and Settings.parity_atol / parity_rtol).
ATOL, RTOL = 1e-5, 1e-3


def random_images(count: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (count, 32, 32, 3)).astype(np.float32)


def test_input_size_and_classes_are_read_from_the_model(image_model: LoadedModel) -> None:
    spec = image_model.image
    assert spec is not None
    assert (spec.height, spec.width, spec.channels, spec.classes) == (32, 32, 3, 10)
    assert isinstance(spec, ImageSpec)
    assert image_model.labels is not None and image_model.labels[3] == Label("n00000003", "class 3")


def test_compiled_model_matches_the_savedmodel_within_tolerance(
    image_model: LoadedModel, image_model_dir: Path
) -> None:
    assert image_model.runtime == "litert-compiled"
    savedmodel = load_model(
        Settings(model_name="tiny", model_dir=image_model_dir, runtime="savedmodel"), threads=2
    )
    images = random_images(16)
    reference = savedmodel.classify(images)
    np.testing.assert_allclose(image_model.classify(images), reference, atol=ATOL, rtol=RTOL)
    generic = next(iter(image_model.infer("serving_default", {"keras_tensor": images}).values()))
    np.testing.assert_allclose(generic, reference, atol=ATOL, rtol=RTOL)
    assert image_model.parity_max_abs_diff is not None
    assert image_model.parity_max_abs_diff <= ATOL + RTOL


def test_every_batch_size_answers_like_single_images(image_model: LoadedModel) -> None:
    images = random_images(13, seed=2)
    singles = np.concatenate([image_model.classify(images[i:i + 1]) for i in range(13)])
    for size in (2, 3, 5, 8, 13):  # 13 > max batch: 8 + 4 + 1 interpreters
        np.testing.assert_allclose(image_model.classify(images[:size]), singles[:size], atol=1e-6)


def test_savedmodel_runtime_runs_the_concrete_function(image_model_dir: Path) -> None:
    settings = Settings(model_name="tiny", model_dir=image_model_dir, runtime="savedmodel")
    model = load_model(settings, threads=2)
    assert model.runtime == "savedmodel"
    images = random_images(4)
    expected = next(iter(model.infer("serving_default", {"keras_tensor": images}).values()))
    np.testing.assert_allclose(model.classify(images), expected, atol=1e-6)


def test_convert_runtime_converts_at_start_and_checks_parity(image_model_dir: Path,
                                                             tmp_path: Path) -> None:
    shutil.copytree(image_model_dir / "savedmodel", tmp_path / "savedmodel")
    model = load_model(Settings(model_dir=tmp_path, max_batch_size=4), threads=2)  # never compiled
    assert model.runtime == "litert-converted"
    assert model.parity_max_abs_diff is not None and model.parity_max_abs_diff <= ATOL + RTOL
    images = random_images(5)
    reference = next(iter(model.infer("serving_default", {"keras_tensor": images}).values()))
    np.testing.assert_allclose(model.classify(images), reference, atol=ATOL, rtol=RTOL)


def test_labels_count_must_match_the_model(image_model_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(image_model_dir / "savedmodel", tmp_path / "savedmodel")
    (tmp_path / "labels.json").write_text(json.dumps(["a", "b"]))
    with pytest.raises(ModelLoadError, match="2 labels, the model 10 classes"):
        load_model(Settings(model_dir=tmp_path, runtime="savedmodel"), threads=1)


def test_missing_model_is_reported_without_its_path(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as raised:
        load_model(Settings(model_dir=tmp_path), threads=1)
    assert "no savedmodel/" in raised.value.message
    assert str(tmp_path) not in raised.value.message  # clients see the message
    assert raised.value.detail == str(tmp_path)  # the log sees the path


def test_digest_of_an_uncompiled_model_is_its_content_digest(image_model: LoadedModel,
                                                             tmp_path: Path) -> None:
    shutil.copytree(image_model.directory, tmp_path / "m")
    shutil.rmtree(tmp_path / "m" / "compiled")
    assert image_model.digest == content_digest(tmp_path / "m")


@pytest.mark.parametrize(
    "content",
    [
        ["tench", "goldfish"],
        [["n01440764", "tench"], ["n01443537", "goldfish"]],
        [{"category": "n01440764", "name": "tench"}, {"category": "n01443537", "name": "goldfish"}],
        {"1": ["n01443537", "goldfish"], "0": ["n01440764", "tench"]},  # Keras' class index
    ],
)
def test_common_label_file_shapes_are_read(tmp_path: Path, content: object) -> None:
    (tmp_path / "labels.json").write_text(json.dumps(content))
    labels = load_labels(tmp_path / "labels.json")
    assert labels is not None
    assert [label.name for label in labels] == ["tench", "goldfish"]


def test_default_model_dir_is_under_models_by_name() -> None:
    assert Settings(model_name="resnet").resolved_model_dir == Path("/models/resnet")
