"""The model layer is reproducible: only names and bytes decide its digests."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from kakehashi.bake.layer import LayerError, layer_entries, model_layer

FILES = {
    "savedmodel/saved_model.pb": b"graph" * 1000,
    "savedmodel/variables/variables.index": b"index",
    "savedmodel/variables/variables.data-00000-of-00001": os.urandom(300_000),
    "labels.json": b'["zero", "one"]',
    "model.json": b'{"uri": "s3://models/x/", "digest": "sha256:00"}',
}


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _bytes(layer: Any) -> bytes:
    return b"".join(layer.open())


def _tar(layer: Any) -> tarfile.TarFile:
    return tarfile.open(fileobj=io.BytesIO(_bytes(layer)))


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_same_model_same_digests_whatever_the_mtimes_order_and_modes(
        make_model: Any, tmp_path: Path, compression: Any) -> None:
    first = make_model(FILES, name="a")
    # The same bytes written in the opposite order, with other mtimes and modes.
    second = make_model(dict(reversed(list(FILES.items()))), name="b")
    for index, path in enumerate(sorted(second.rglob("*"))):
        os.utime(path, (1_000_000 + index, 2_000_000 + index))
        if path.is_file():
            path.chmod(0o600 if index % 2 else 0o755)
    (second / "savedmodel" / "assets").mkdir()  # an empty directory: S3 never has one
    a = model_layer(first, "digits", compression=compression, output_dir=tmp_path)
    b = model_layer(second, "digits", compression=compression, output_dir=tmp_path)
    assert (a.digest, a.diff_id, a.size) == (b.digest, b.diff_id, b.size)
    assert _bytes(a) == _bytes(b)
    # The digests are those of the bytes pushed, computed in the one pass.
    assert _sha(_bytes(a)) == a.digest and a.size == len(_bytes(a))
    if compression == "gzip":
        assert a.path is not None and a.path.exists()
        assert _sha(gzip.decompress(_bytes(a))) == a.diff_id
        assert _bytes(a)[4:8] == b"\0\0\0\0"  # mtime 0 in the gzip header
        a.remove()
        assert not a.path.exists()
    else:
        assert a.path is None and a.digest == a.diff_id


def test_other_bytes_or_names_other_digest(make_model: Any, tmp_path: Path) -> None:
    base = model_layer(make_model(FILES, name="a"), "digits", output_dir=tmp_path)
    changed = dict(FILES, **{"labels.json": b'["zero", "uno"]'})
    renamed = {("labels2.json" if k == "labels.json" else k): v for k, v in FILES.items()}
    assert model_layer(make_model(changed, name="b"), "digits", output_dir=tmp_path).digest \
        != base.digest
    assert model_layer(make_model(renamed, name="c"), "digits", output_dir=tmp_path).digest \
        != base.digest
    assert model_layer(make_model(FILES, name="d"), "other", output_dir=tmp_path).digest \
        != base.digest


def test_entries_are_sorted_owned_by_the_serving_user_with_fixed_modes(
        make_model: Any, tmp_path: Path) -> None:
    layer = model_layer(make_model(FILES), "digits", output_dir=tmp_path)
    with _tar(layer) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == [
            "models", "models/digits", "models/digits/labels.json",
            "models/digits/model.json", "models/digits/savedmodel",
            "models/digits/savedmodel/saved_model.pb", "models/digits/savedmodel/variables",
            "models/digits/savedmodel/variables/variables.data-00000-of-00001",
            "models/digits/savedmodel/variables/variables.index",
        ]
        for member in members:
            assert member.mtime == 0 and member.uname == "" and member.gname == ""
            if member.name == "models":
                assert (member.uid, member.gid, member.mode) == (0, 0, 0o755)
            elif member.isdir():
                assert (member.uid, member.gid, member.mode) == (10001, 10001, 0o755)
            else:
                assert (member.uid, member.gid, member.mode) == (10001, 10001, 0o644)
                extracted = tar.extractfile(member)
                assert extracted is not None
                assert extracted.read() == FILES[member.name.removeprefix("models/digits/")]
    assert layer.files == tuple(n for n in names if n.rsplit("/", 1)[-1] in
                                {Path(k).name for k in FILES})
    assert layer.root == "/models/digits"


def test_long_and_unicode_names_stay_reproducible(make_model: Any, tmp_path: Path) -> None:
    files = {"d/" + "x" * 150 + ".bin": b"1", "ラベル.json": b"2"}
    a = model_layer(make_model(files, name="a"), "m", output_dir=tmp_path)
    b = model_layer(make_model(files, name="b"), "m", output_dir=tmp_path)
    assert a.digest == b.digest
    with _tar(a) as tar:
        assert sorted(tar.getnames())[-1].endswith("ラベル.json")


def test_refuses_what_is_not_a_model(tmp_path: Path, make_model: Any) -> None:
    with pytest.raises(LayerError, match="no model directory"):
        model_layer(tmp_path / "missing", "m")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayerError, match="no files"):
        model_layer(tmp_path / "empty", "m")
    with pytest.raises(LayerError, match="model name"):
        model_layer(make_model(FILES), "../etc")
    with pytest.raises(LayerError, match="compression"):
        model_layer(make_model(FILES), "m", compression="lz4")  # type: ignore[arg-type]


def test_a_symlink_counts_as_the_file_it_names(make_model: Any, tmp_path: Path) -> None:
    plain = make_model({"w.bin": b"weights"}, name="plain")
    linked = tmp_path / "linked"
    linked.mkdir()
    (tmp_path / "elsewhere.bin").write_bytes(b"weights")
    (linked / "w.bin").symlink_to(tmp_path / "elsewhere.bin")
    assert model_layer(plain, "m", output_dir=tmp_path).digest == \
        model_layer(linked, "m", output_dir=tmp_path).digest


def test_the_generated_stream_is_what_tarfile_writes(make_model: Any, tmp_path: Path) -> None:
    files = dict(FILES, **{"d/" + "y" * 120 + ".bin": b"long", "ラベル.txt": b"u"})
    model = make_model(files)
    layer = model_layer(model, "digits")
    written = io.BytesIO()
    with tarfile.open(fileobj=written, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in layer_entries(model, name="digits"):
            if entry.source is None:
                tar.addfile(entry.info)
            else:
                with entry.source.open("rb") as stream:
                    tar.addfile(entry.info, stream)
    assert _bytes(layer) == written.getvalue()


def test_the_stream_restarts_at_any_offset(make_model: Any) -> None:
    layer = model_layer(make_model(FILES), "digits")
    whole = _bytes(layer)
    for offset in (0, 1, 511, 512, 1500, 4096, 300_000, len(whole) - 1, len(whole)):
        assert b"".join(layer.open(offset)) == whole[offset:], offset


def test_spooled_layer_is_the_same_bytes(make_model: Any, tmp_path: Path) -> None:
    model = make_model(FILES)
    streamed = model_layer(model, "digits")
    spooled = model_layer(model, "digits", spool=True, output_dir=tmp_path)
    assert spooled.path is not None and spooled.path.read_bytes() == _bytes(streamed)
    assert (spooled.digest, spooled.size) == (streamed.digest, streamed.size)
    assert b"".join(spooled.open(1000)) == _bytes(streamed)[1000:]


def test_the_model_digest_comes_from_the_same_pass(make_model: Any) -> None:
    from kakehashi.modelformat import content_digest
    from kakehashi.modelformat.compiled import source_digest

    files = {k: v for k, v in FILES.items() if k != "model.json"}
    model = make_model(files)
    assert model_layer(model, "m").model_digest == source_digest(model) == content_digest(model)
    (model / "model.json").write_text("{}")
    (model / "compiled").mkdir()
    (model / "compiled" / "record.json").write_text("{}")
    (model / "compiled" / "x.tflite").write_bytes(b"flat")
    assert model_layer(model, "m").model_digest == source_digest(model)


def test_the_runs_records_are_no_part_of_the_model_or_its_image(make_model: Any, tmp_path: Path) -> None:
    """A notebook run's executed notebook lands in run/ beside model.json after the model was
    saved: the model's digest (recorded in model.json) and the baked layer stay those of the
    model, so baking it does not fail on a digest mismatch."""
    from kakehashi.modelformat import EXECUTED_NOTEBOOK, content_digest

    files = {k: v for k, v in FILES.items() if k != "model.json"}
    model = make_model(files, name="plain")
    recorded = make_model({**files, EXECUTED_NOTEBOOK: b'{"cells": []}'}, name="with-notebook")
    assert content_digest(recorded) == content_digest(model)
    plain, layer = model_layer(model, "m", output_dir=tmp_path), model_layer(recorded, "m", output_dir=tmp_path)
    assert layer.model_digest == content_digest(model)
    assert (layer.digest, layer.files) == (plain.digest, plain.files)
    assert not any("notebook" in name for name in layer.files)
    # Anything else new is part of the model: its digest changes.
    other = make_model({**files, "runs/notebook.ipynb": b"{}"}, name="other")
    assert content_digest(other) != content_digest(model)
