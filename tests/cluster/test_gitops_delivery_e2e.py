"""GitOps delivery end to end, for real: the operator (the real one, on the learning cluster)
bakes a tiny model and proposes it as a pull request against the GitHub stand-in, with a real
bare git repository as the GitOps repository; a reviewer approves the head; `/deploy
production` goes through the bot, which applies the PR's directory to the production cluster,
waits until the pods on its real node serve the baked model's digest, and merges; the
ModelService then reads Delivered. Deleting it proposes the directory's removal, which the
bot's `/deploy` prunes from production and merges.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from github_standin.harness import REVIEWER, TOKEN, GitOpsRepo, git, payload, running_bot
from github_standin.server import GitHubState, ReviewState
from kubernetes import client
from modelservices import Services, predict, prepare_namespace, service_spec, upload_model
from tiny_models import FEATURES, compiled_tiny_model
from trainingruns import wait_for

from kakehashi.control.client import Kube, api_client
from kakehashi.control.resources import DEPLOYMENTS
from kakehashi.delivery.direct import Production
from kakehashi.gitops.kube import CONFIGMAPS, LABEL_AUDIT, KubeCluster
from kakehashi.serving import render

SERVICE = "scorer"
CONFIG = "environments:\n  production: {path: production, approvals: 1}\nrollback_environment: production\n"
DEPLOYED = ("success", "kakehashi/deploy/production")


def _deploy(standin: Any, repo: GitOpsRepo, checkout: Path, cluster: KubeCluster, number: int) -> None:
    """Comment `/deploy production` on PR `number` and wait for the bot to finish."""

    async def main() -> None:
        async with running_bot(standin, repo, checkout, cluster) as bot:
            answer = await bot.deliver(payload("/deploy production", number=number))
            assert answer.status_code == 202, answer.text
            await bot.settle(600)

    asyncio.run(main())


def _approve(github: GitHubState, number: int) -> str:
    head = github.pulls[number].head_sha
    github.reviews[number] = [ReviewState(REVIEWER, "APPROVED", head)]
    return head


def _statuses(github: GitHubState, sha: str) -> list[tuple[str, str]]:
    return [(state, context) for s, state, context, _ in github.statuses if s == sha]


def _comments(github: GitHubState, number: int) -> list[str]:
    return [body for n, body in github.comments if n == number]


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_gitops_service_is_proposed_deployed_by_the_bot_on_the_real_node_delivered_and_removed(
    dev_env: Any, learning: Any, production: Any, namespace: str, production_namespace: str, operator: Any,
    gitops_github: Any, s3: Any, tmp_path: Path,
) -> None:
    if not dev_env.real_nodes or "serving" not in dev_env.images:
        pytest.skip(f"needs the real nodes and the project's images: {dev_env.no_real_nodes_reason}")
    if os.environ.get("KAKEHASHI_TEST_OPERATOR") == "in-cluster":
        pytest.skip("the GitHub stand-in listens on the host's loopback: an operator pod cannot reach it")
    pytest.importorskip("tensorflow")
    prepare_namespace(learning, namespace, dev_env)
    client.CoreV1Api(learning).create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="kakehashi-gitops"), string_data={"token": TOKEN}))
    repo = GitOpsRepo.create(tmp_path / "git", {".kakehashi/bot.yaml": CONFIG, "README.md": "deploys\n"})
    github = gitops_github.use(repo)
    directory = tmp_path / "model"
    directory.mkdir()
    compiled_tiny_model(directory, (1.0, 2.0, 3.0))
    model = upload_model(s3, dev_env.s3.model_bucket, f"{namespace}/{SERVICE}", directory, {"accuracy": 0.9})

    services = Services(learning, namespace)
    spec = service_spec(dev_env, production_namespace, f"models/{uuid.uuid4().hex[:8]}", model=model,
                        delivery={"mode": "gitops", "gitops": {"repository": f"{github.owner}/{github.repo}",
                                                               "path": "production",
                                                               "namespace": production_namespace}})
    started = time.monotonic()
    services.apply(SERVICE, spec)
    proposed = services.wait(SERVICE, lambda s: s.get("phase") in ("Proposed", "Failed", "Degraded"), 600,
                             "the pull request proposed")
    assert proposed["phase"] == "Proposed", proposed
    print(f"applied to Proposed (bake on the real node, PR opened) in {time.monotonic() - started:.1f} s")
    pr = proposed["pullRequest"]
    number, image = pr["number"], proposed["image"]
    assert "@sha256:" in image and pr["image"] == image and github.pulls[number].head_sha == pr["headSha"]
    assert git(repo.origin, "rev-parse", f"refs/heads/kakehashi/{namespace}/{SERVICE}") == pr["headSha"]
    assert model["digest"] in (github.pulls[number].body or "")
    # Nothing reaches production before a reviewer's /deploy.
    apps = client.AppsV1Api(production)
    selector = f"{render.LABEL_SERVICE}={SERVICE}"
    assert apps.list_namespaced_deployment(production_namespace, label_selector=selector).items == []

    # The bot, as `kakehashi-bot` runs it, on the production cluster. Its default namespace is
    # not the service's: the objects go where the PR's kustomization puts them.
    kube = Kube(api_client(dev_env.production.kubeconfig))
    cluster = KubeCluster(Production(kube, owner_label=render.LABEL_SERVICE, port=render.PORT),
                          kubeconfig=dev_env.production.kubeconfig, namespace="default",
                          kubectl=str(dev_env.bin_dir / "kubectl"), rollout_timeout_s=300, poll_s=1)
    head = _approve(github, number)
    started = time.monotonic()
    _deploy(gitops_github.standin, repo, tmp_path / "bot", cluster, number)
    print(f"/deploy to merged in {time.monotonic() - started:.1f} s")
    reply = _comments(github, number)[-1]
    assert _statuses(github, head)[-1] == DEPLOYED, reply
    assert github.merges == [(number, head)], reply
    assert "ready: 1 replica(s) of 1 Deployment(s) rolled out" in reply, reply
    assert image in reply, reply

    # Readiness was the model's digest, served by the real node's pod: it answers with it.
    pods = client.CoreV1Api(production).list_namespaced_pod(production_namespace, label_selector=selector).items
    assert {p.spec.node_name for p in pods} == {"production-real"}
    assert {p.spec.containers[0].image for p in pods} == {image}
    state = Production(kube, owner_label=render.LABEL_SERVICE, port=render.PORT).read(production_namespace, SERVICE)
    assert set(state.served.values()) == {model["digest"]}, state.served
    answer = predict(production, production_namespace, SERVICE,
                     [{"name": FEATURES, "shape": [1, 3], "datatype": "FP32", "data": [1.0, 1.0, 1.0]}])
    assert answer["model_version"] == model["digest"] and answer["outputs"][0]["data"] == [6.0]
    (audit,) = kube.list_objects(CONFIGMAPS, production_namespace, LABEL_AUDIT)
    assert audit["data"]["commit"] == head and model["digest"] in audit["data"]["modelDigests"]

    # The operator reads the merge from the PR's state: Delivered, recorded in the history.
    delivered = services.wait(SERVICE, lambda s: s.get("phase") == "Delivered", 120, "Delivered")
    assert delivered["pullRequest"]["state"] == "merged" and delivered["reason"] == "Merged"
    assert [(h["image"], h["modelDigest"]) for h in delivered["history"]] == [(image, model["digest"])]
    assert f"production/{SERVICE}/kustomization.yaml" in git(repo.origin, "ls-tree", "-r", "--name-only", "main")

    # Deleted: the service's branch now removes its directory, in a PR; the ModelService goes
    # once the PR is open. The reviewer's /deploy prunes production, then merges.
    services.delete(SERVICE)

    def gone() -> bool:
        try:
            services.status(SERVICE)
        except client.exceptions.ApiException as error:
            return error.status == 404
        return False

    wait_for(gone, 120, "the ModelService deleted once its removal was proposed")
    removal = max(github.pulls)
    assert removal != number and github.pulls[removal].title == f"Remove {SERVICE}"
    assert apps.list_namespaced_deployment(production_namespace, label_selector=selector).items != []
    head = _approve(github, removal)
    _deploy(gitops_github.standin, repo, tmp_path / "bot", cluster, removal)
    reply = _comments(github, removal)[-1]
    assert _statuses(github, head)[-1] == DEPLOYED, reply
    assert f"Deployment/{SERVICE}" in reply and github.merges[-1] == (removal, head), reply
    assert kube.list_objects(DEPLOYMENTS, production_namespace, selector) == []
    assert f"production/{SERVICE}/" not in git(repo.origin, "ls-tree", "-r", "--name-only", "main")
    assert github.violations == []
