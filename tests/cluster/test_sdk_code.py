"""Training code straight from a notebook, on the learning cluster's real node in the project's
training image (notebook-images/jupyter, real TensorFlow, real MinIO): a Python function
(`train_func=`) and a notebook executed with papermill (`notebook=`), each training a tiny Keras
model saved with the trainer runtime, and each failing with the failing line in the run's reason
and log tail. Then the SDK inside a pod of that image (which is also the notebook image): it
submits and waits with the pod's service account, in the pod's namespace."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from kakehashi import contract
from kakehashi.artifacts import download_directory, parse_s3_uri
from kakehashi.bake.layer import model_layer
from kakehashi.dev import node
from kakehashi.dev.operator import create_team_secrets
from kakehashi.modelformat import EXECUTED_NOTEBOOK, content_digest
from kakehashi.sdk import Connection, RunFailed, TrainingRun

FAST = {"kwok.kakehashi.dev/run-duration": "1s"}
REPO = Path(__file__).resolve().parents[2]


def train_tiny(epochs: int = 1, units: int = 4) -> None:
    """A tiny classifier (is the sum of four numbers positive?), saved as a model artifact."""
    import keras
    import numpy as np

    from kakehashi import trainer

    rng = np.random.default_rng(0)
    features = rng.normal(size=(256, 4)).astype("float32")
    labels = (features.sum(axis=1) > 0).astype("int32")
    model = keras.Sequential([keras.Input((4,), name="features"), keras.layers.Dense(units, activation="relu"),
                              keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(features, labels, epochs=epochs, verbose=2)
    trainer.save(model, labels=["negative", "positive"],
                 metrics={"accuracy": history.history["accuracy"][-1], "epochs": epochs, "units": units})


def diverge(learning_rate: float = 0.1) -> None:
    if learning_rate > 1:
        raise ValueError(f"learning_rate={learning_rate} diverges")


@pytest.fixture
def connection(learning: Any, namespace: str, operator: Any, dev_env: Any) -> Connection:
    if not dev_env.real_nodes or "training" not in dev_env.images:
        pytest.skip(f"needs the real nodes and the training image: {dev_env.no_real_nodes_reason}")
    create_team_secrets(dev_env, namespace)  # the S3 keys the operator gives training containers
    return Connection(learning, namespace)


def _on_the_real_node(dev_env: Any) -> dict[str, Any]:
    return {"image": dev_env.images["training"], "env": {"AWS_REGION": dev_env.s3.region}, "cpu": 1,
            "memory": "2Gi", "node_selector": node.SELECTOR, "tolerations": [node.TOLERATION]}


def _model_prefix_is_the_model(s3: Any, run: TrainingRun, tmp_path: Path) -> None:
    """Everything under the run's output prefix, as a bake downloads it, digests to the digest
    model.json records, and the baked layer holds the model only."""
    model = run.model
    assert model is not None
    local = download_directory(s3, model.uri, tmp_path / run.name)
    assert content_digest(local) == model.digest
    layer = model_layer(local, "m", output_dir=tmp_path)
    assert layer.model_digest == model.digest
    assert not any("notebook" in name for name in layer.files)


@pytest.mark.timeout(900)
def test_a_python_function_trains_on_the_real_node(connection: Connection, dev_env: Any, s3: Any,
                                                   tmp_path: Path, learning: Any) -> None:
    run = TrainingRun("fn", connection=connection, train_func=train_tiny, hyperparameters={"epochs": 3, "units": 8},
                      **_on_the_real_node(dev_env)).submit()
    failing = TrainingRun("fn-fails", connection=connection, train_func=diverge,
                          hyperparameters={"learning_rate": 5.0}, **_on_the_real_node(dev_env)).submit()
    started = time.monotonic()
    run.wait(timeout=600, progress=False)
    print(f"function run: Succeeded in {time.monotonic() - started:.1f}s")
    # The hyperparameters arrived as typed keyword arguments: the function recorded them.
    assert run.metrics["epochs"] == 3.0 and run.metrics["units"] == 8.0 and 0 <= run.metrics["accuracy"] <= 1
    assert run.model is not None and run.model.lineage.hyperparameters == {"epochs": 3, "units": 8}
    assert run.model.lineage.frameworks["tensorflow"].startswith("2.")
    assert "kakehashi: calling train_tiny(epochs=3, units=8)" in run.logs()
    # The run is the record of the code that trained: its source, readable in the resource.
    stored = client.CustomObjectsApi(learning).get_namespaced_custom_object(
        "kakehashi.dev", "v1alpha1", connection.namespace, "trainingruns", "fn")
    [variable] = stored["spec"]["env"][1:]
    assert variable["name"] == contract.ENV_FUNCTION and variable["value"].startswith("def train_tiny(epochs: int = 1")
    _model_prefix_is_the_model(s3, run, tmp_path)

    with pytest.raises(RunFailed) as raised:
        failing.wait(timeout=300, progress=False)
    error = raised.value
    assert error.reason == "NonZeroExitCode"
    assert error.log_tail.rstrip().endswith("ValueError: learning_rate=5.0 diverges")
    assert 'raise ValueError(f"learning_rate={learning_rate} diverges")' in error.log_tail  # the line itself


def _cell(source: str, *tags: str) -> dict[str, Any]:
    return {"cell_type": "code", "metadata": {"tags": list(tags)} if tags else {}, "source": source,
            "outputs": [], "execution_count": None}


def _notebook(path: Path, *cells: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"cells": [{"cell_type": "markdown", "metadata": {}, "source": "# Tiny model"}, *cells],
                                "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                            "language": "python"}},
                                "nbformat": 4, "nbformat_minor": 5}))
    return path


TRAIN_CELLS = (
    _cell("epochs = 1\nunits = 4\n", "parameters"),
    _cell("import keras\nimport numpy as np\nfrom kakehashi import trainer\n"
          "rng = np.random.default_rng(0)\nfeatures = rng.normal(size=(256, 4)).astype('float32')\n"
          "labels = (features.sum(axis=1) > 0).astype('int32')\n"),
    _cell("model = keras.Sequential([keras.Input((4,), name='features'), keras.layers.Dense(units, activation='relu'),\n"
          "                          keras.layers.Dense(2, activation='softmax')])\n"
          "model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])\n"
          "history = model.fit(features, labels, epochs=epochs, verbose=0)\n"
          "print(f'trained {epochs} epochs, {units} units: accuracy {history.history[\"accuracy\"][-1]:.3f}')\n"),
    _cell("artifact = trainer.save(model, labels=['negative', 'positive'],\n"
          "                      metrics={'accuracy': history.history['accuracy'][-1], 'epochs': epochs, 'units': units})\n"
          "artifact.digest\n"),
)


def _outputs(notebook: dict[str, Any]) -> str:
    texts = []
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            text = output.get("text") or output.get("data", {}).get("text/plain") or ""
            texts.append("".join(text) if isinstance(text, list) else text)
    return "\n".join(texts)


@pytest.mark.timeout(900)
def test_a_notebook_trains_on_the_real_node_and_its_executed_copy_is_stored_with_the_model(
        connection: Connection, dev_env: Any, s3: Any, tmp_path: Path) -> None:
    path = _notebook(tmp_path / "tiny.ipynb", *TRAIN_CELLS)
    run = TrainingRun("nb", connection=connection, notebook=path, hyperparameters={"epochs": 3, "units": 8},
                      **_on_the_real_node(dev_env)).submit()
    broken = _notebook(tmp_path / "broken.ipynb", TRAIN_CELLS[0],
                       _cell("if epochs > 2:\n    raise ValueError(f'{epochs} epochs is too many for this data')\n"))
    failing = TrainingRun("nb-fails", connection=connection, notebook=broken, hyperparameters={"epochs": 5},
                          **_on_the_real_node(dev_env)).submit()
    started = time.monotonic()
    run.wait(timeout=600, progress=False)
    print(f"notebook run: Succeeded in {time.monotonic() - started:.1f}s")
    assert run.metrics["epochs"] == 3.0 and run.metrics["units"] == 8.0
    assert run.model is not None and run.model.lineage.hyperparameters == {"epochs": 3, "units": 8}
    assert "trained 3 epochs, 8 units: accuracy" in run.logs()  # the cells' output, in the log

    # The executed notebook: beside model.json in the run's output prefix, and from the SDK.
    assert run.executed_notebook_uri == run.model.uri + EXECUTED_NOTEBOOK
    bucket, key = parse_s3_uri(run.model.uri)
    assert s3.head_object(Bucket=bucket, Key=key + EXECUTED_NOTEBOOK)["ContentLength"] > 0
    assert s3.head_object(Bucket=bucket, Key=key + "model.json")["ContentLength"] > 0
    executed = json.loads(run.executed_notebook(tmp_path / "executed.ipynb", s3_client=s3).read_text())
    injected = [c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert ["".join(c["source"]) for c in injected] == ["# Parameters\nepochs = 3\nunits = 8\n"]
    assert "trained 3 epochs, 8 units: accuracy" in _outputs(executed)
    assert run.model.digest in _outputs(executed)  # the saved model's digest, the last cell's value
    # The notebook landed after the model; the model (what a bake downloads) is unchanged by it.
    _model_prefix_is_the_model(s3, run, tmp_path)

    with pytest.raises(RunFailed) as raised:
        failing.wait(timeout=300, progress=False)
    error = raised.value
    assert error.reason == "NonZeroExitCode"
    assert error.log_tail.rstrip().endswith(
        "kakehashi: notebook broken.ipynb failed at In [3] (if epochs > 2:): ValueError: 5 epochs is too many for this data")
    # Stored even though it failed: the failing cell with its error.
    failed = json.loads(failing.executed_notebook(tmp_path / "failed.ipynb", s3_client=s3).read_text())
    errors = [o for c in failed["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert [(e["ename"], e["evalue"]) for e in errors] == [("ValueError", "5 epochs is too many for this data")]


IN_POD = """
import sys
from kakehashi.sdk import TrainingRun
run = TrainingRun("from-a-pod", command=["python", "train.py"], pod_annotations={annotations!r}).submit()
print("submitted", run.namespace, run.connection.identity(), flush=True)
run.wait(timeout=120, progress=False)
print("phase", run.phase, flush=True)
"""


@pytest.mark.timeout(600)
def test_in_a_notebook_pod_the_sdk_uses_the_pods_service_account(connection: Connection, dev_env: Any,
                                                                learning: Any) -> None:
    """The training image is the notebook image: `import kakehashi.sdk` works there, and with no
    kubeconfig and no namespace given the SDK acts as the pod's service account in its namespace,
    with the rights manifests/notebooks/rbac.yaml gives notebook pods."""
    namespace = connection.namespace
    core, rbac = client.CoreV1Api(learning), client.RbacAuthorizationV1Api(learning)
    for document in yaml.safe_load_all((REPO / "manifests" / "notebooks" / "rbac.yaml").read_text()):
        if document["kind"] == "RoleBinding":
            for subject in document["subjects"]:
                subject["namespace"] = namespace  # what kustomize's namespace: sets
        create = {"ServiceAccount": core.create_namespaced_service_account, "Role": rbac.create_namespaced_role,
                  "RoleBinding": rbac.create_namespaced_role_binding}[document["kind"]]
        create(namespace, document)
    core.create_namespaced_pod(namespace, {
        "metadata": {"name": "notebook"},
        "spec": {"serviceAccountName": "notebook", "restartPolicy": "Never",
                 "nodeSelector": node.SELECTOR, "tolerations": [node.TOLERATION],
                 "containers": [{"name": "notebook", "image": dev_env.images["training"],
                                 "command": ["python", "-c", IN_POD.format(annotations=FAST)]}]}})
    deadline = time.monotonic() + 300
    phase = None
    while time.monotonic() < deadline:
        phase = core.read_namespaced_pod("notebook", namespace).status.phase
        if phase in ("Succeeded", "Failed"):
            break
        time.sleep(2)
    log = core.read_namespaced_pod_log("notebook", namespace)
    assert phase == "Succeeded", log
    assert f"submitted {namespace} system:serviceaccount:{namespace}:notebook via kakehashi sdk" in log
    assert "phase Succeeded" in log
    run = TrainingRun.attach("from-a-pod", connection=connection)
    assert run.spec.command == ["python", "train.py"] and run.phase == "Succeeded"
