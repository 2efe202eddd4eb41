"""Config, manifest and index rewriting, and the append against an in-memory registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from bake_fakes import HOST, FakeRegistry  # type: ignore[import-not-found]

from kakehashi.bake import mediatypes as mt
from kakehashi.bake.append import (
    append_layer,
    append_to_config,
    append_to_manifest,
    rewrite_index,
)
from kakehashi.bake.bake import bake, image_tag, lineage_labels
from kakehashi.bake.layer import model_layer
from kakehashi.bake.registry import Reference
from kakehashi.modelformat import ModelArtifact

CONFIG = {
    "architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z",
    "config": {"Env": ["PATH=/usr/bin", "KAKEHASHI_MODEL_NAME=model"], "Labels": {"a": "1"}},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "1" * 64]},
    "history": [{"created_by": "base"}],
}


def test_config_gets_the_diff_id_history_labels_and_env() -> None:
    new = append_to_config(CONFIG, "sha256:" + "2" * 64, labels={"b": "2", "a": "3"},
                           env={"KAKEHASHI_MODEL_NAME": "digits"}, created_by="bake",
                           comment="kakehashi.dev")
    assert new["rootfs"]["diff_ids"] == ["sha256:" + "1" * 64, "sha256:" + "2" * 64]
    assert new["history"] == [{"created_by": "base"},
                              {"created_by": "bake", "comment": "kakehashi.dev"}]
    assert new["config"]["Labels"] == {"a": "3", "b": "2"}
    assert new["config"]["Env"] == ["PATH=/usr/bin", "KAKEHASHI_MODEL_NAME=digits"]
    assert new["created"] == CONFIG["created"]
    assert CONFIG["rootfs"]["diff_ids"] == ["sha256:" + "1" * 64]  # the input is untouched


def test_config_without_history_gets_none() -> None:
    bare = {k: v for k, v in CONFIG.items() if k != "history"}
    assert "history" not in append_to_config(bare, "sha256:" + "2" * 64, labels={}, env={},
                                             created_by="bake")


@pytest.mark.parametrize(("manifest_type", "config_type", "layer_type"), [
    (mt.DOCKER_MANIFEST, mt.DOCKER_CONFIG, mt.DOCKER_LAYER),
    (mt.OCI_MANIFEST, mt.OCI_CONFIG, mt.OCI_LAYER),
])
def test_manifest_keeps_its_own_media_types(make_model: Any, tmp_path: Path, manifest_type: str,
                                            config_type: str, layer_type: str) -> None:
    layer = model_layer(make_model({"w.bin": b"w"}), "m", output_dir=tmp_path)
    base = {"schemaVersion": 2, "mediaType": manifest_type,
            "config": {"mediaType": config_type, "digest": "sha256:" + "0" * 64, "size": 1},
            "layers": [{"mediaType": "base-layer-type", "digest": "sha256:" + "1" * 64,
                        "size": 5}]}
    new = append_to_manifest(base, manifest_type, config=b"{}", layer=layer,
                             annotations={"org.opencontainers.image.base.digest": "x"})
    assert new["mediaType"] == manifest_type
    assert new["config"] == {"mediaType": config_type, "size": 2, "digest":
                             "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}
    assert new["layers"][0] == base["layers"][0]
    assert new["layers"][1] == {"mediaType": layer_type, "digest": layer.digest,
                                "size": layer.size}
    assert ("annotations" in new) == (manifest_type == mt.OCI_MANIFEST)


def test_gzip_layers_get_gzip_media_types(make_model: Any, tmp_path: Path) -> None:
    layer = model_layer(make_model({"w.bin": b"w"}), "m", output_dir=tmp_path,
                        compression="gzip")
    assert layer.media_type(mt.DOCKER_MANIFEST) == mt.DOCKER_LAYER_GZIP
    assert layer.media_type(mt.OCI_MANIFEST) == mt.OCI_LAYER_GZIP


def test_index_points_at_the_new_manifests_and_drops_attestations() -> None:
    index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [
        {"mediaType": mt.OCI_MANIFEST, "digest": "sha256:a", "size": 1,
         "platform": {"os": "linux", "architecture": "amd64"}},
        {"mediaType": mt.OCI_MANIFEST, "digest": "sha256:b", "size": 1,
         "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        {"mediaType": mt.OCI_MANIFEST, "digest": "sha256:c", "size": 1,
         "annotations": {"vnd.docker.reference.type": "attestation-manifest"}},
    ]}
    new = rewrite_index(index, {"sha256:a": ("sha256:A", 10), "sha256:b": ("sha256:B", 20)})
    assert [(m["digest"], m["size"], m["platform"]["architecture"]) for m in new["manifests"]] \
        == [("sha256:A", 10, "amd64"), ("sha256:B", 20, "arm64")]
    assert new["manifests"][1]["platform"]["variant"] == "v8"


@pytest.mark.parametrize("kind", ["docker", "oci", "index"])
def test_append_pushes_an_image_that_reads_back(fake: FakeRegistry, make_base: Any,
                                                make_model: Any, tmp_path: Path,
                                                kind: str) -> None:
    base_digest = make_base(kind=kind)
    layer = model_layer(make_model({"w.bin": b"weights"}), "digits", output_dir=tmp_path)
    registry = fake.client()
    result = append_layer(registry, registry, Reference.parse(f"{HOST}/base/serve:v1"),
                          Reference.parse(f"{HOST}/apps/digits:svc-1"), layer,
                          labels={"kakehashi.dev/model-digest": "sha256:m"},
                          env={"KAKEHASHI_MODEL_NAME": "digits"}, created_by="bake")
    assert result.base_digest == base_digest
    top = fake.manifests["apps/digits"]["svc-1"]
    assert result.digest == "sha256:" + __import__("hashlib").sha256(top[0]).hexdigest()
    children = ([json.loads(top[0])] if kind != "index" else
                [json.loads(fake.manifests["apps/digits"][m["digest"]][0])
                 for m in json.loads(top[0])["manifests"]])
    if kind == "index":
        assert top[1] == mt.OCI_INDEX
        assert [p.platform for p in result.platforms] == ["linux/amd64", "linux/arm64"]
        assert len(json.loads(top[0])["manifests"]) == 2  # the attestation is gone
    else:
        assert top[1] == (mt.DOCKER_MANIFEST if kind == "docker" else mt.OCI_MANIFEST)
    blobs = fake.blobs["apps/digits"]
    for manifest in children:
        assert manifest["layers"][-1]["digest"] == layer.digest
        config = json.loads(blobs[manifest["config"]["digest"]])
        assert config["rootfs"]["diff_ids"][-1] == layer.diff_id
        assert len(config["rootfs"]["diff_ids"]) == len(manifest["layers"])
        assert config["config"]["Labels"] == {"base": "yes",
                                              "kakehashi.dev/model-digest": "sha256:m"}
        assert "KAKEHASHI_MODEL_NAME=digits" in config["config"]["Env"]
        for descriptor in manifest["layers"]:
            assert descriptor["digest"] in blobs  # base layers were mounted
    # The base's layers came by mount, the model layer once for every platform.
    assert registry.stats.blobs_mounted == (1 if kind != "index" else 2)
    assert registry.stats.blobs_uploaded == 1 + len(children)  # the layer, one config each


def test_append_twice_sends_nothing_new(fake: FakeRegistry, make_base: Any, make_model: Any,
                                        tmp_path: Path) -> None:
    make_base(kind="index")
    model = make_model({"w.bin": b"weights" * 1000})
    args = dict(labels={"x": "1"}, env={}, created_by="bake")
    first_client, second_client = fake.client(), fake.client()
    first = append_layer(first_client, first_client, Reference.parse(f"{HOST}/base/serve:v1"),
                         Reference.parse(f"{HOST}/apps/digits:t"),
                         model_layer(model, "m", output_dir=tmp_path), **args)  # type: ignore[arg-type]
    posts_before = len(fake.requests("POST")) + len(fake.requests("PUT"))
    second = append_layer(second_client, second_client,
                          Reference.parse(f"{HOST}/base/serve:v1"),
                          Reference.parse(f"{HOST}/apps/digits:t"),
                          model_layer(model, "m", output_dir=tmp_path), **args)  # type: ignore[arg-type]
    assert first.digest == second.digest
    assert second_client.stats.bytes_uploaded == 0
    assert len(fake.requests("POST")) + len(fake.requests("PUT")) == posts_before
    assert first_client.stats.bytes_uploaded > 7000


def test_bake_labels_and_tag(fake: FakeRegistry, make_base: Any, make_model: Any,
                             tmp_path: Path) -> None:
    make_base(kind="docker")
    artifact = ModelArtifact.model_validate({
        "uri": "s3://models/runs/r1/", "digest": "sha256:placeholder",
        "metrics": {"accuracy": 0.97, "loss": 0.1},
        "lineage": {"runName": "r1", "namespace": "team",
                    "git": {"url": "https://git.example/ml.git", "commit": "abc123"}}})
    model = make_model({"labels.json": b"[]", "w.bin": b"w"})
    from kakehashi.modelformat.compiled import source_digest

    artifact.digest = source_digest(model)
    (model / "model.json").write_text(artifact.model_dump_json(by_alias=True))
    registry = fake.client()
    result = bake(model, f"{HOST}/base/serve:v1", f"{HOST}/apps/digits", service="digits",
                  model_name="digits", compile_hook=None, registries={HOST: registry},
                  workdir=tmp_path / "work")
    assert result.tag == f"{HOST}/apps/digits:{image_tag('digits', artifact.digest)}"
    assert result.image == f"{HOST}/apps/digits@{result.digest}"
    assert result.labels == {
        "kakehashi.dev/model-digest": artifact.digest, "kakehashi.dev/model-name": "digits",
        "kakehashi.dev/compiled": "false",
        "org.opencontainers.image.source": "https://git.example/ml.git",
        "org.opencontainers.image.revision": "abc123", "kakehashi.dev/training-run": "team/r1",
        "kakehashi.dev/metrics": '{"accuracy":0.97,"loss":0.1}',
        "kakehashi.dev/model-uri": "s3://models/runs/r1/"}
    assert result.bytes_uploaded > 0 and not list((tmp_path / "work").glob("layer-*"))
    again = bake(model, f"{HOST}/base/serve:v1", f"{HOST}/apps/digits", service="digits",
                 model_name="digits", compile_hook=None, registries={HOST: fake.client()})
    assert (again.digest, again.bytes_uploaded) == (result.digest, 0)


def test_bake_refuses_files_that_do_not_match_the_recorded_digest(
        fake: FakeRegistry, make_base: Any, make_model: Any) -> None:
    from kakehashi.bake.bake import BakeError

    make_base()
    model = make_model({"w.bin": b"w"})
    with pytest.raises(BakeError) as caught:
        bake(model, f"{HOST}/base/serve:v1", f"{HOST}/apps/x", service="x",
             expected_digest="sha256:" + "0" * 64, compile_hook=None,
             registries={HOST: fake.client()})
    assert caught.value.reason == "ModelDigestMismatch"


def test_bake_compiles_a_model_without_a_verified_compiled_form(
        fake: FakeRegistry, make_base: Any, make_model: Any) -> None:
    """The hook runs once; a second bake finds the compiled form verified and reuses it."""
    from kakehashi.modelformat.compiled import (
        CompiledRecord,
        CompiledSignature,
        Tolerance,
        file_sha256,
        source_digest,
    )

    make_base()
    model = make_model({"savedmodel/saved_model.pb": b"pb", "labels.json": b"[]"})
    calls: list[Path] = []

    def hook(model_dir: Path, progress: Any) -> None:
        calls.append(model_dir)
        compiled = model_dir / "compiled"
        compiled.mkdir()
        (compiled / "serving_default.tflite").write_bytes(b"tflite")
        record = CompiledRecord(
            source_digest=source_digest(model_dir), passed=True, tensorflow_version="x",
            converter="x", converter_version="x", interpreter="x",
            tolerance=Tolerance(atol=1e-5, rtol=1e-3), created_at="2026-01-01T00:00:00Z",
            seconds=1.0, signatures=[CompiledSignature(
                name="serving_default", file="serving_default.tflite",
                sha256=file_sha256(compiled / "serving_default.tflite"), inputs=[],
                outputs=[], passed=True)])
        (compiled / "record.json").write_text(record.model_dump_json())

    args: dict[str, Any] = dict(service="x", compile_hook=hook)
    first = bake(model, f"{HOST}/base/serve:v1", f"{HOST}/apps/x",
                 registries={HOST: fake.client()}, **args)
    second = bake(model, f"{HOST}/base/serve:v1", f"{HOST}/apps/x",
                  registries={HOST: fake.client()}, **args)
    assert len(calls) == 1 and first.compiled and second.compiled
    assert first.digest == second.digest and second.bytes_uploaded == 0
    assert first.labels["kakehashi.dev/compiled"] == "true"


def test_lineage_labels_prefer_what_the_caller_says() -> None:
    labels = lineage_labels(model_name="m", model_digest="sha256:d", artifact=None,
                            training_run="ns/run", metrics={"acc": 1.0}, source="git://x",
                            revision="r", compiled=True, extra={"team": "vision"})
    assert labels["kakehashi.dev/training-run"] == "ns/run"
    assert labels["org.opencontainers.image.revision"] == "r"
    assert labels["team"] == "vision"


def test_image_tag_is_valid_and_bounded() -> None:
    assert image_tag("digits", "sha256:" + "ab" * 32) == "digits-" + "ab" * 8
    assert len(image_tag("s" * 200, "sha256:" + "ab" * 32)) <= 128


def test_a_base_on_another_registry_is_copied_layer_by_layer(
        fake: FakeRegistry, make_base: Any, make_model: Any, tmp_path: Path) -> None:
    """No mount across registries: each base layer is streamed over once, then found."""
    make_base(kind="oci")
    other = FakeRegistry()
    source, target = fake.client(), other.client(host="other.test")
    layer = model_layer(make_model({"w.bin": b"weights"}), "m", output_dir=tmp_path)
    result = append_layer(source, target, Reference.parse(f"{HOST}/base/serve:v1"),
                          Reference.parse("other.test/apps/digits:t"), layer, labels={},
                          env={}, created_by="bake")
    assert result.layers_copied == 1
    manifest = json.loads(other.manifests["apps/digits"]["t"][0])
    for descriptor in manifest["layers"]:
        assert descriptor["digest"] in other.blobs["apps/digits"]
    assert not any(m == "POST" and "mount" in str(h) for m, _, h in other.log)
    again = append_layer(fake.client(), other.client(host="other.test"),
                         Reference.parse(f"{HOST}/base/serve:v1"),
                         Reference.parse("other.test/apps/digits:t"), layer, labels={},
                         env={}, created_by="bake")
    assert again.digest == result.digest and again.layers_copied == 0


def test_the_models_own_time_dates_the_image() -> None:
    new = append_to_config(CONFIG, "sha256:" + "2" * 64, labels={}, env={}, created_by="bake",
                           created="2026-11-26T10:00:00Z")
    assert new["created"] == "2026-11-26T10:00:00Z"
    assert new["history"][-1] == {"created": "2026-11-26T10:00:00Z", "created_by": "bake"}
