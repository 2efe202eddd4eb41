"""The pure half of GitOps delivery: the kustomize directory a reviewer reads and `kustomize
build` applies, and the pull request's text."""

from __future__ import annotations

import pytest
import yaml

from kakehashi.api.modelservice import ModelService
from kakehashi.delivery.gitops import KUSTOMIZATION, Proposal, body, diff, render_directory
from kakehashi.serving import render
from kakehashi.serving.render import Release

IMAGE = "registry.local/models@sha256:" + "a" * 64
IMAGE2 = "registry.local/models@sha256:" + "b" * 64
DIGEST = "sha256:" + "1" * 64


def service(**spec: object) -> ModelService:
    return ModelService.model_validate({
        "metadata": {"name": "digits", "namespace": "team", "uid": "u"},
        "spec": {"model": {"trainingRun": "digits"}, "registry": "registry.local/models", "replicas": 2,
                 "delivery": {"mode": "gitops", "gitops": {"repository": "acme/deploys", "namespace": "prod"}},
                 **spec},
    })


def files(image: str = IMAGE, **spec: object) -> dict[str, str]:
    return render_directory(render.render(service(**spec), Release(image, DIGEST), "prod"), "prod")


def test_the_directory_is_a_kustomization_of_every_rendered_object_pinned_by_digest() -> None:
    rendered = files()
    kustomization = yaml.safe_load(rendered[KUSTOMIZATION])
    assert kustomization["kind"] == "Kustomization" and kustomization["namespace"] == "prod"
    assert sorted(kustomization["resources"]) == sorted(set(rendered) - {KUSTOMIZATION})
    objects = [yaml.safe_load(rendered[name]) for name in kustomization["resources"]]
    assert {o["kind"] for o in objects} >= {"Deployment", "Service"}
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    images = [c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]]
    assert images and all(image == IMAGE for image in images)


def test_rendering_is_byte_for_byte_deterministic_and_a_new_image_changes_only_its_lines() -> None:
    assert files() == files()
    before, after = files(IMAGE), files(IMAGE2)
    changes = diff("production/digits", before, after)
    removed = [line for line in changes.splitlines() if line.startswith("-") and not line.startswith("---")]
    added = [line for line in changes.splitlines() if line.startswith("+") and not line.startswith("+++")]
    assert any(IMAGE in line for line in removed) and any(IMAGE2 in line for line in added)
    assert all(IMAGE in line for line in removed) and all(IMAGE2 in line for line in added)
    assert "a/production/digits/deployment-digits.yaml" in changes


def test_an_image_not_pinned_by_digest_is_refused() -> None:
    with pytest.raises(ValueError, match="not pinned by digest"):
        files("registry.local/models:latest")


def test_a_new_service_diffs_against_nothing() -> None:
    changes = diff("production/digits", {}, files())
    assert "--- /dev/null" in changes and "+++ b/production/digits/kustomization.yaml" in changes


def test_the_body_carries_metrics_gate_lineage_digest_and_the_diff() -> None:
    proposal = Proposal(
        namespace="team", service="digits", image=IMAGE2, model_digest=DIGEST, training_run="digits-7",
        metrics={"accuracy": 0.9731, "loss": 0.08}, gate="passed: accuracy=0.9731 >= 0.9",
        lineage={"model uri": "s3://models/digits-7/", "commit": "abc123"},
    )
    changes = diff("production/digits", files(IMAGE), files(IMAGE2))
    text = body(proposal, "production/digits", "main", changes)
    assert f"`{IMAGE2}`" in text and f"`{DIGEST}`" in text and "`digits-7`" in text
    assert "| accuracy | 0.9731 |" in text and "| loss | 0.08 |" in text
    assert "passed: accuracy=0.9731 >= 0.9" in text
    assert "s3://models/digits-7/" in text and "abc123" in text
    assert f"```diff\n{changes.strip()}\n```" in text
    assert any(line.startswith("-") and IMAGE in line for line in text.splitlines())
    assert "Diff against `main`" in text


def test_a_huge_diff_is_cut_and_says_so() -> None:
    changes = diff("d", {}, {f"f{i}.yaml": "z\n" * 500 for i in range(60)})
    assert len(changes) < 52_000 and "cut at" in changes
