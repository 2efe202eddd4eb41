"""GitOps delivery's kustomize directory against the real production API server: what the
operator commits is what `kubectl apply --server-side -k` (the bot's apply, and the benchmark's
baseline) accepts, unchanged by kustomize, in the namespace the service names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kakehashi.api.modelservice import ModelService
from kakehashi.delivery.gitops import render_directory
from kakehashi.serving import render
from kakehashi.serving.render import Release

IMAGE = "registry.local/models@sha256:" + "a" * 64
DIGEST = "sha256:" + "1" * 64


def test_the_committed_directory_builds_and_the_production_api_server_accepts_it(
    kubectl: Any, production_namespace: str, tmp_path: Path,
) -> None:
    ms = ModelService.model_validate({
        "metadata": {"name": "digits", "namespace": "team", "uid": "u"},
        "spec": {"model": {"trainingRun": "digits"}, "registry": "registry.local/models",
                 "autoscaling": {"min": 2, "max": 4, "targetCPU": 70},
                 "delivery": {"mode": "gitops", "gitops": {"repository": "acme/deploys", "namespace": production_namespace}}},
    })
    objects = render.render(ms, Release(IMAGE, DIGEST), production_namespace)
    directory = tmp_path / "production" / "digits"
    directory.mkdir(parents=True)
    for name, text in render_directory(objects, production_namespace, owner="team/digits").items():
        (directory / name).write_text(text)

    built = list(yaml.safe_load_all(kubectl("production", "kustomize", str(directory))))
    # kustomize changes nothing of what was rendered: the PR's files are what gets applied.
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
    assert sorted(built, key=key) == sorted(objects, key=key)

    out = kubectl("production", "apply", "--server-side", "--field-manager=kakehashi", "--dry-run=server",
                  "-k", str(directory))
    kinds = {line.split("/")[0].split(".")[0] for line in out.splitlines() if line.strip()}
    assert {"deployment", "service", "horizontalpodautoscaler", "poddisruptionbudget"} <= kinds, out
