"""The digits example, run the way a TrainingRun's container runs it, against the local S3.

The process gets exactly the environment the operator injects (KAKEHASHI_*, the S3 endpoint and
credentials, hyperparameters both as JSON and as `--key=value` arguments) and nothing of the
test's own environment beyond PATH and HOME, so a variable the operator forgets to set fails
here rather than in a cluster.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kakehashi import contract, modelformat, trainer
from kakehashi.api.trainingrun import TrainingRun
from kakehashi.artifacts import download_directory, read_model_artifact
from kakehashi.modelformat import content_digest
from kakehashi.settings import OperatorSettings
from kakehashi.training import children

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "digits" / "train.py"
HYPERPARAMETERS: dict[str, Any] = {"epochs": 30, "learning_rate": 0.005, "holdout": 0.2}
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def run_prefix(dev_env: Any, s3: Any) -> Iterator[str]:
    """A fresh s3:// prefix in the model bucket, emptied afterwards."""
    prefix = f"test-trainer/{uuid.uuid4().hex[:12]}/"
    yield f"s3://{dev_env.s3.model_bucket}/{prefix}"
    listed = s3.list_objects_v2(Bucket=dev_env.s3.model_bucket, Prefix=prefix)
    for item in listed.get("Contents", []):
        s3.delete_object(Bucket=dev_env.s3.model_bucket, Key=item["Key"])


def test_digits_example_trains_saves_and_serves_from_s3(
    dev_env: Any, s3: Any, run_prefix: str, tmp_path: Path
) -> None:
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    bucket = dev_env.s3.model_bucket
    # The data comes from S3 too, as it would in a cluster: the bundled digits, as an .npz.
    data_key = run_prefix.removeprefix(f"s3://{bucket}/") + "data/digits.npz"
    buffer = io.BytesIO()
    np.savez(buffer, images=digits.images, labels=digits.target)
    s3.put_object(Bucket=bucket, Key=data_key, Body=buffer.getvalue())
    output_uri = f"{run_prefix}model/"
    commit_file = tmp_path / "commit"
    commit_file.write_text(COMMIT + "\n")

    # The operator's own renderer gives the container's environment and arguments, so this
    # test fails if the operator and the trainer ever disagree on the contract.
    run = TrainingRun.model_validate({
        "metadata": {"name": "digits", "namespace": "team-a", "uid": "3f1c2a9e-run-uid"},
        "spec": {
            "hyperparameters": HYPERPARAMETERS,
            "data": {"uri": f"s3://{bucket}/{data_key}"},
            "output": {"uri": output_uri},
            "source": {"git": {"url": "https://git.example/team-a/digits.git", "revision": "main"}},
        },
    })
    exports = dev_env.exports()
    settings = OperatorSettings(model_bucket=bucket, s3_endpoint=exports["AWS_ENDPOINT_URL_S3"])
    container = children.render_job(run, settings)["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, str] = {}
    for var in container["env"]:
        # What the kubelet does with the Secret reference, from the dev environment's keys.
        env[var["name"]] = var["value"] if "value" in var else exports[var["valueFrom"]["secretKeyRef"]["key"]]
    # The pod's mount points, mapped to this machine: the clone's commit file and checkout.
    env.update({
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", str(tmp_path)),
        contract.ENV_SOURCE_COMMIT_FILE: str(commit_file),
        contract.ENV_WORKSPACE: str(REPO),
    })
    args = container["args"]

    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=180,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-4000:]
    print(f"digits example ran in {elapsed:.1f}s")

    artifact = read_model_artifact(s3, output_uri)
    assert artifact is not None, "model.json was not written"
    assert artifact.uri == output_uri
    assert artifact.metrics["accuracy"] > 0.8
    lineage = artifact.lineage
    assert lineage.run_id == "3f1c2a9e-run-uid" and lineage.namespace == "team-a"
    assert lineage.git.commit == COMMIT and lineage.git.revision == "main"
    assert lineage.data_uri == f"s3://{bucket}/{data_key}"
    assert lineage.hyperparameters == HYPERPARAMETERS
    assert lineage.frameworks["tensorflow"] and lineage.frameworks["python"]

    local = download_directory(s3, output_uri, tmp_path / "model")
    assert content_digest(local) == artifact.digest
    assert json.loads((local / modelformat.LABELS_FILE).read_text()) == [str(d) for d in range(10)]
    assert json.loads((local / modelformat.METRICS_FILE).read_text()) == artifact.metrics

    import tensorflow as tf

    loaded = tf.saved_model.load(str(local / modelformat.SAVEDMODEL_DIR))
    serve = loaded.signatures["serving_default"]
    cut = int(len(digits.images) * (1 - HYPERPARAMETERS["holdout"]))
    held_out = tf.constant(digits.images[cut:], dtype=tf.float32)
    (probabilities,) = serve(pixels=held_out).values()
    predicted = np.argmax(probabilities.numpy(), axis=1)
    accuracy = float(np.mean(predicted == digits.target[cut:]))
    print(f"held-out accuracy of the served model: {accuracy:.3f} on {len(predicted)} digits")
    assert accuracy > 0.8  # chance is 0.1
    assert accuracy == pytest.approx(artifact.metrics["accuracy"], abs=1e-6)


def test_no_model_json_reads_as_not_yet_written(dev_env: Any, s3: Any, run_prefix: str) -> None:
    assert read_model_artifact(s3, run_prefix) is None


def test_training_data_is_read_from_s3_as_an_object_or_a_prefix(
    dev_env: Any, s3: Any, run_prefix: str, tmp_path: Path
) -> None:
    bucket = dev_env.s3.model_bucket
    prefix = run_prefix.removeprefix(f"s3://{bucket}/")
    s3.put_object(Bucket=bucket, Key=f"{prefix}data/a.csv", Body=b"x,y\n1,2\n")
    s3.put_object(Bucket=bucket, Key=f"{prefix}data/nested/b.csv", Body=b"x,y\n3,4\n")

    assert trainer.read_bytes(f"{run_prefix}data/a.csv", client=s3) == b"x,y\n1,2\n"
    single = trainer.download(f"{run_prefix}data/a.csv", tmp_path / "one", client=s3)
    assert single.read_bytes() == b"x,y\n1,2\n"
    tree = trainer.download(f"{run_prefix}data/", tmp_path / "all", client=s3)
    assert sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*.csv")) == [
        "a.csv", "nested/b.csv"]
    with pytest.raises(FileNotFoundError):
        trainer.download(f"{run_prefix}absent/", tmp_path / "none", client=s3)
