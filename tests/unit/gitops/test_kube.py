"""The Kubernetes side's pure parts: when a rollout counts as done or failed, what a rollback
returns to, how a TrainingRun is named per commit; and the command refusing a bad start."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from kakehashi.gitops import kube
from kakehashi.gitops.cli import main
from kakehashi.gitops.cluster import Origin
from kakehashi.serving import render

DIGEST = "sha256:" + "a" * 64
OLD = "sha256:" + "b" * 64


def deployment(replicas: int = 2, *, generation: int = 2, observed: int = 2, updated: int = 2,
               available: int = 2, total: int = 2, digest: str | None = None) -> dict[str, Any]:
    template: dict[str, Any] = {"spec": {"containers": [{"name": "server", "image": f"r/digits@{DIGEST}"}]}}
    if digest:
        template["metadata"] = {"annotations": {render.ANNOTATION_MODEL_DIGEST: digest}}
    return {"kind": "Deployment", "metadata": {"name": "digits", "generation": generation},
            "spec": {"replicas": replicas, "template": template},
            "status": {"observedGeneration": observed, "updatedReplicas": updated,
                       "availableReplicas": available, "replicas": total}}


@pytest.mark.parametrize(
    ("live", "served", "done", "says"),
    [
        (deployment(), {}, True, "ready: 2 replica(s)"),
        (deployment(observed=1), {}, False, "2/2 updated"),
        (deployment(updated=1, total=3), {}, False, "1/2 updated, 2 available, 2 old"),
        (deployment(total=3), {}, False, "1 old"),  # an old replica still there: not done
        (deployment(digest=DIGEST), {"p1": DIGEST, "p2": DIGEST}, True, "ready"),
        (deployment(digest=DIGEST), {"p1": DIGEST}, False, "1/2 ready pods serve"),
        (deployment(digest=DIGEST), {"p1": DIGEST, "p2": DIGEST, "p3": OLD}, False, "2/2 ready pods serve"),
    ],
)
def test_rolled_out(live: dict[str, Any], served: dict[str, str], done: bool, says: str) -> None:
    assert kube._rolled_out([live], {"digits": live}, served)[0] is done
    assert says in kube._rolled_out([live], {"digits": live}, served)[1]


def test_a_pod_that_cannot_start_fails_the_rollout_and_names_the_reason() -> None:
    pods = [
        {"metadata": {"name": "old"}, "status": {"conditions": [{"type": "Ready", "status": "True"}],
                                                 "containerStatuses": [{"state": {"running": {}}}]}},
        {"metadata": {"name": "new"}, "status": {"containerStatuses": [{"state": {"waiting": {
            "reason": "ImagePullBackOff", "message": "Back-off pulling image \"r/digits@sha256:dead\"\nmore"}}}]}},
    ]
    assert kube._pod_problem(pods) == 'pod new: ImagePullBackOff (Back-off pulling image "r/digits@sha256:dead")'
    assert kube._still_serving(pods) == "1 ready pod(s) of the earlier version keep serving"
    assert kube._pod_problem(pods[:1]) is None


def test_rollback_target_choice() -> None:
    new, old = {"web/server": "x@" + DIGEST}, {"web/server": "x@" + OLD}
    history = [{"images": yaml.safe_dump(new), "at": "3"}, {"images": yaml.safe_dump(new), "at": "2"},
               {"images": yaml.safe_dump(old), "at": "1"}]
    assert kube.choose(history, None, new) == history[2]  # the newest version not live now
    assert kube.choose(history, None, {"web/server": "x@broken"}) == history[0]  # after a failed deploy
    assert kube.choose(history, "1", new) == history[0]
    assert kube.choose(history, "3", new) == history[2]
    assert kube.choose(history, OLD, new) == history[2]
    assert kube.choose(history, "0", new) is None and kube.choose(history, "4", new) is None
    assert kube.choose(history[:1], None, new) is None and kube.choose([], None, {}) is None


def test_training_runs_are_named_and_pinned_per_commit() -> None:
    cluster = kube.KubeCluster(None, kubeconfig=None, namespace="prod", learning_namespace="ml")  # type: ignore[arg-type]
    origin = Origin("alice", "o/r", 7, "0123456789abcdef" * 2 + "01234567", datetime.now(UTC))
    run = {"kind": "TrainingRun", "metadata": {"name": "digits"},
           "spec": {"source": {"git": {"url": "https://example.com/m.git", "revision": "main"}}}}
    made = cluster._per_commit(run, origin)
    assert made["metadata"]["name"] == "digits-pr7-0123456"
    assert made["metadata"]["namespace"] == "ml"
    assert made["spec"]["source"]["git"]["revision"] == origin.sha
    assert run["spec"]["source"]["git"]["revision"] == "main"  # the manifest itself is untouched


def test_digests_and_images() -> None:
    objects = [deployment(digest=DIGEST), {"kind": "Service", "metadata": {"name": "digits"}}]
    assert kube._images(objects) == {"digits/server": f"r/digits@{DIGEST}"}
    assert kube._digests(kube._images(objects)) == {"digits/server": DIGEST}
    assert kube._model_digests(objects) == {"digits": DIGEST}


def test_the_command_refuses_to_start_without_a_secret(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KAKEHASHI_BOT_WEBHOOK_SECRET", raising=False)
    monkeypatch.setenv("KAKEHASHI_BOT_GITHUB_TOKEN", "ghs_x")
    monkeypatch.setenv("KAKEHASHI_BOT_REPOSITORY_URL", str(tmp_path))
    result = CliRunner().invoke(main, ["--check"])
    assert result.exit_code == 2 and "refusing to start" in result.output and "webhook_secret" in result.output
    monkeypatch.setenv("KAKEHASHI_BOT_WEBHOOK_SECRET", "s" * 32)
    result = CliRunner().invoke(main, ["--check"])
    assert result.exit_code == 0 and "s" * 32 not in result.output


def test_an_api_refusal_is_reported_in_the_servers_words() -> None:
    class ApiError(Exception):
        status, reason = 422, "Unprocessable Entity"
        body = '{"message": "Deployment.apps \\"web\\" is invalid: spec.replicas: Invalid value: -1"}'

    class Down(Exception):
        status = 503

    assert kube._api_refusal(ApiError()) == '422: Deployment.apps "web" is invalid: spec.replicas: Invalid value: -1'
    assert kube._api_refusal(Down()) is None and kube._api_refusal(ValueError()) is None


class ScriptedKube:
    """list_objects answers from a script of (deployments, pods) states, one per poll; a pod
    proxy call fails the test (a pod without a model is never asked what it serves)."""

    def __init__(self, states: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]]) -> None:
        self.states = states
        self.polls = 0

    def list_objects(self, resource: Any, namespace: str, selector: str = "") -> list[dict[str, Any]]:
        assert selector == f"{render.LABEL_SERVICE}=web"
        deployments, pods = self.states[min(self.polls // 2, len(self.states) - 1)]
        self.polls += 1
        return deployments if resource.kind == "Deployment" else pods

    def pod_proxy_get(self, *args: Any) -> str:
        raise AssertionError("asked a pod without a model what it serves")


def ready_pod(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}


def test_the_readiness_wait_polls_until_rolled_out_or_times_out_with_the_old_version_serving() -> None:
    import asyncio

    from kakehashi.delivery.direct import Production

    rolling = deployment(updated=1, total=3)
    rolling["metadata"]["name"] = "web"
    done = deployment()
    done["metadata"]["name"] = "web"
    scripted = ScriptedKube([([rolling], [ready_pod("a"), ready_pod("b")]), ([done], [ready_pod("c"), ready_pod("d")])])
    cluster = kube.KubeCluster(Production(scripted, owner_label=render.LABEL_SERVICE, port=8080),  # type: ignore[arg-type]
                               kubeconfig=None, namespace="prod", rollout_timeout_s=5, poll_s=0.01)
    rollout = asyncio.run(cluster._wait("prod", "web", [done]))
    assert rollout.ok and rollout.message.startswith("ready: 2 replica(s)")
    assert scripted.polls == 4

    stuck = ScriptedKube([([rolling], [ready_pod("a"), ready_pod("b"), {"metadata": {"name": "new"}, "status": {}}])])
    cluster.production = Production(stuck, owner_label=render.LABEL_SERVICE, port=8080)  # type: ignore[arg-type]
    cluster.rollout_timeout_s = 0.05
    rollout = asyncio.run(cluster._wait("prod", "web", [done]))
    assert not rollout.ok
    assert "not ready after 0 s: web: 1/2 updated" in rollout.message
    assert rollout.message.endswith("2 ready pod(s) of the earlier version keep serving")


def test_live_deployments_read_from_a_list_count_as_deployments() -> None:
    """List items carry no `kind`: without it a rollback saw no live images and chose wrongly."""
    from kakehashi.delivery.direct import Production

    listed = {k: v for k, v in deployment().items() if k != "kind"}
    listed["metadata"] = {"name": "web"}
    cluster = kube.KubeCluster(Production(ScriptedKube([([listed], [])]), owner_label=render.LABEL_SERVICE, port=8080),  # type: ignore[arg-type]
                               kubeconfig=None, namespace="prod")
    live = list(cluster._observe("prod", "web", False).deployments.values())
    assert kube._images(live) == {"web/server": f"r/digits@{DIGEST}"}
