"""The model artifact a run leaves behind: its files, model.json and its content digest."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kakehashi import contract, modelformat
from kakehashi.artifacts import parse_s3_uri
from kakehashi.modelformat import ModelArtifact, content_digest
from kakehashi.trainer import context, write_artifact
from kakehashi.trainer.save import publish

FILES = {
    "savedmodel/saved_model.pb": b"graph",
    "savedmodel/variables/variables.index": b"index",
    "savedmodel/variables/variables.data-00000-of-00001": b"weights",
    "labels.json": b'["0", "1"]\n',
}


def _write(root: Path, files: dict[str, bytes], mtime: int) -> Path:
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        os.utime(path, (mtime, mtime))
    return root


def test_digest_ignores_creation_order_and_mtimes(tmp_path: Path) -> None:
    first = _write(tmp_path / "a", FILES, mtime=1_000_000)
    second = _write(tmp_path / "b", dict(reversed(list(FILES.items()))), mtime=2_000_000)
    assert content_digest(first) == content_digest(second)
    assert content_digest(first).startswith("sha256:") and len(content_digest(first)) == 71


def test_digest_changes_with_content_or_names_but_not_model_json(tmp_path: Path) -> None:
    root = _write(tmp_path / "m", FILES, mtime=1_000_000)
    before = content_digest(root)
    (root / modelformat.MODEL_MANIFEST).write_text("{}")
    assert content_digest(root) == before  # model.json holds the digest: it cannot be in it
    (root / "savedmodel/variables/variables.index").write_bytes(b"other")
    changed = content_digest(root)
    assert changed != before
    (root / "savedmodel/variables/variables.index").rename(root / "savedmodel/renamed.index")
    assert content_digest(root) not in (before, changed)


def test_model_json_validates_and_carries_lineage(tmp_path: Path) -> None:
    root = _write(tmp_path / "m", {"savedmodel/saved_model.pb": b"graph"}, mtime=0)
    commit = tmp_path / "commit"
    commit.write_text("abc123\n")
    ctx = context(
        argv=["--epochs=3"],
        environ={
            contract.ENV_RUN_ID: "uid-1",
            contract.ENV_RUN_NAME: "digits",
            contract.ENV_NAMESPACE: "team-a",
            contract.ENV_DATA_URI: "s3://data/digits.npz",
            contract.ENV_SOURCE_GIT_URL: "https://git.example/ml.git",
            contract.ENV_SOURCE_GIT_REVISION: "main",
            contract.ENV_SOURCE_COMMIT_FILE: str(commit),
        },
    )
    uri = "s3://kakehashi-models/team-a/digits/uid-1/"
    returned = write_artifact(
        root, uri, ctx=ctx, labels=[0, 1, 2],
        metrics={"accuracy": 0.97, "loss": float("nan")},
    )

    manifest = json.loads((root / modelformat.MODEL_MANIFEST).read_text())
    artifact = ModelArtifact.model_validate(manifest)
    assert artifact == returned
    assert manifest["uri"] == uri
    assert manifest["digest"] == content_digest(root)
    # A NaN loss cannot be gated on, nor written as JSON: it is left out.
    assert manifest["metrics"] == {"accuracy": 0.97}
    assert json.loads((root / modelformat.METRICS_FILE).read_text()) == {"accuracy": 0.97}
    assert json.loads((root / modelformat.LABELS_FILE).read_text()) == ["0", "1", "2"]
    lineage = manifest["lineage"]
    assert lineage["runId"] == "uid-1" and lineage["runName"] == "digits"
    assert lineage["git"] == {"url": "https://git.example/ml.git", "revision": "main",
                              "commit": "abc123"}
    assert lineage["dataUri"] == "s3://data/digits.npz"
    assert lineage["hyperparameters"] == {"epochs": 3}
    assert {"python", "kakehashi"} <= set(lineage["frameworks"])
    assert manifest["createdAt"].endswith("Z")


def test_a_metric_that_is_not_a_number_is_refused(tmp_path: Path) -> None:
    root = _write(tmp_path / "m", {"savedmodel/saved_model.pb": b"graph"}, mtime=0)
    with pytest.raises(ValueError, match="accuracy"):
        write_artifact(root, "s3://b/p/", ctx=context(argv=[], environ={}),
                       metrics={"accuracy": "high"})


def test_publishing_to_a_local_uri_keeps_the_digest(tmp_path: Path) -> None:
    root = _write(tmp_path / "m", {"savedmodel/saved_model.pb": b"graph"}, mtime=0)
    artifact = write_artifact(root, "unused", ctx=context(argv=[], environ={}))
    publish(root, (tmp_path / "out").as_uri())
    assert content_digest(tmp_path / "out") == artifact.digest
    assert (tmp_path / "out" / modelformat.MODEL_MANIFEST).exists()


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://bucket/a/b/", ("bucket", "a/b/")),
        ("s3://bucket/a/b", ("bucket", "a/b/")),
        ("s3://bucket", ("bucket", "")),
        ("s3://bucket/", ("bucket", "")),
    ],
)
def test_output_uris_with_or_without_slash_name_the_same_prefix(
    uri: str, expected: tuple[str, str]
) -> None:
    assert parse_s3_uri(uri) == expected


@pytest.mark.parametrize("uri", ["https://bucket/a", "s3:///a", "bucket/a"])
def test_non_s3_uris_are_refused(uri: str) -> None:
    with pytest.raises(ValueError):
        parse_s3_uri(uri)
