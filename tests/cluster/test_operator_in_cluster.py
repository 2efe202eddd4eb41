"""The operator in the cluster: from its image, on the learning cluster's real node, installed by
the learning overlay with only what an installation's overlay changes (image, settings, S3 keys,
the node to run on: `kakehashi.dev.operator.in_cluster_overlay`), as its own ServiceAccount
through the kubernetes Service. Two replicas: one leads, the other waits. A TrainingRun trains
for real under it; the leader killed (SIGKILL, no goodbye) hands over to the standby once its
Lease runs out, a leader stopped cleanly hands over at once, and no run gets a second Job or a
repeated Event.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client
from modelservices import Services, service_spec
from trainingruns import Runs, real_digits_spec, wait_for

from kakehashi.dev import node
from kakehashi.dev.operator import OPERATOR_AWS_SECRET, InClusterOperator, LocalOperator

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "kakehashi-system"
NAME = "kakehashi-operator"  # the Deployment, its ServiceAccount and the leader Lease
LEASE_S = 15.0  # the default the Deployment runs with (settings.lease_seconds)
FIGURES: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def real_nodes(dev_env: Any) -> None:
    if not dev_env.real_nodes:
        pytest.skip(f"no real nodes on this machine: {dev_env.no_real_nodes_reason}")


@pytest.fixture(scope="module")
def in_cluster(dev_env: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InClusterOperator]:
    """The operator image built (cached by content), the learning install's operator part applied
    through the dev overlay with the install's own settings, two Ready replicas; afterwards what
    the install created is removed and any local operator of the session is back."""
    if os.environ.get("KAKEHASHI_TEST_OPERATOR") == "in-cluster":
        pytest.skip("the session's operator is already this one (KAKEHASHI_TEST_OPERATOR=in-cluster)")
    # Two operators with no leader election in common would both reconcile: the session's local
    # operator (tests/cluster/conftest.py) steps aside while this one runs.
    paused = list(LocalOperator.running)
    for local in paused:
        local.stop()
    installed = InClusterOperator(dev_env, tmp_path_factory.mktemp("overlay"))
    try:
        started = time.monotonic()
        installed.start()
        FIGURES["image build (or cache hit) + install to two Ready replicas and a leader (s)"] = (
            time.monotonic() - started)
        yield installed
    finally:
        installed.uninstall()
        for local in paused:
            local.start()
        print("\nIn-cluster operator figures:", {k: round(v, 1) for k, v in FIGURES.items()},
              f"\nthe operator pods' logs: {installed.directory / 'pods.log'}")


def _metrics(pod: Any) -> str:
    return httpx.get(f"http://{pod.status.pod_ip}:9090/metrics", timeout=5).text


def test_the_install_runs_from_its_image_on_the_real_node_one_leader_one_standby(
    in_cluster: InClusterOperator,
) -> None:
    # The dev overlay changes only what an installation's overlay changes.
    learning = {(d["kind"], d["metadata"]["name"]): d for d in in_cluster.build(REPO / "manifests/overlays/learning")}
    ours = {(d["kind"], d["metadata"]["name"]): d for d in in_cluster.build(in_cluster.directory)}
    assert ours[("ServiceAccount", NAME)] == learning[("ServiceAccount", NAME)]
    for kind in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "PodDisruptionBudget"):
        for key in [k for k in learning if k[0] == kind]:
            assert ours[key] == learning[key], key
    deployment, expected = ours[("Deployment", NAME)], learning[("Deployment", NAME)]
    pod, want = deployment["spec"]["template"]["spec"], expected["spec"]["template"]["spec"]
    assert (pod.pop("nodeSelector"), pod.pop("tolerations")) == (node.SELECTOR, [node.TOLERATION])
    assert pod["containers"][0].pop("image") == in_cluster.image
    want["containers"][0].pop("image")
    for spec in (pod, want):  # generated ConfigMaps and Secrets are named with a hash of their content
        spec["containers"][0]["envFrom"][0]["configMapRef"].pop("name")
        assert spec["containers"][0]["envFrom"][1]["secretRef"].pop("name").startswith(OPERATOR_AWS_SECRET)
    assert deployment == expected

    leader, [standby] = in_cluster.settled()
    for p in (leader, standby):
        assert p.spec.node_name == "learning-real"
        assert p.spec.service_account_name == NAME
        assert p.spec.containers[0].image == in_cluster.image
        assert p.status.container_statuses[0].restart_count == 0, in_cluster.logs()[-5000:]
    assert in_cluster.lease().spec.lease_duration_seconds == LEASE_S
    assert "kakehashi_operator_leader 1.0" in _metrics(leader)
    standby_metrics = _metrics(standby)
    assert "kakehashi_operator_leader 0.0" in standby_metrics
    # The standby runs no kopf and no reconciler: nothing of it ever reconciles.
    assert "kakehashi_reconciles_total{" not in standby_metrics


@pytest.mark.timeout(1500)
def test_a_model_trains_bakes_and_serves_under_the_in_cluster_operator(
    in_cluster: InClusterOperator, learning: Any, production: Any, namespace: str, production_namespace: str, dev_env: Any
) -> None:
    """The operator's pod reaches the API server (the kubernetes Service), MinIO and the
    registry (the same address as from the host) and the production cluster (a kubeconfig a pod
    can use): the Job it creates trains on the real node, the model it reads back from S3 lands
    in the status, gated, and a ModelService bakes it and serves it on production."""
    from kakehashi.dev.operator import create_team_secrets

    create_team_secrets(dev_env, namespace, for_pods=True)
    runs = Runs(learning, namespace)
    runs.create("digits", real_digits_spec(dev_env))
    started = time.monotonic()
    status = runs.wait_phase("digits", "Succeeded", "Failed", timeout=600)
    FIGURES["real training run, created to Succeeded (s)"] = time.monotonic() - started
    assert status["phase"] == "Succeeded", status
    assert status["model"]["digest"].startswith("sha256:") and status["model"]["metrics"]["accuracy"] > 0.8
    promotable = runs.condition("digits", "Promotable")
    assert (promotable["status"], promotable["reason"]) == ("True", "GatePassed")
    [job] = runs.jobs("digits")
    assert job.spec.template.spec.containers[0].image == dev_env.images["training"]
    assert Counter(e.reason for e in runs.events("digits"))["JobCreated"] == 1

    services = Services(learning, namespace)
    started = time.monotonic()
    services.apply("digits", service_spec(dev_env, production_namespace, "models/digits-in-cluster",
                                          model={"trainingRun": "digits"}))
    ready = services.wait("digits", lambda s: s.get("phase") in ("Ready", "Failed"), 600, "Ready")
    FIGURES["ModelService applied to Ready: bake + deliver (s)"] = time.monotonic() - started
    assert ready["phase"] == "Ready", ready
    assert ready["servedDigests"] == [status["model"]["digest"]]
    pods = client.CoreV1Api(production).list_namespaced_pod(
        production_namespace, label_selector="kakehashi.dev/modelservice=digits").items
    assert {p.spec.node_name for p in pods} == {"production-real"}
    assert {p.spec.containers[0].image for p in pods} == {ready["image"]}


def _event_reasons(runs: Runs, name: str) -> Counter[str]:
    return Counter(e.reason for e in runs.events(name) for _ in range(e.count or 1))


def _assert_reconciled_once(runs: Runs, name: str) -> None:
    """One Job; JobCreated and RunSucceeded, and every other Event, posted once; each phase
    once in the history."""
    assert len(runs.jobs(name)) == 1, f"{name}: {len(runs.jobs(name))} Jobs"
    events = _event_reasons(runs, name)
    assert {"JobCreated", "RunSucceeded"} <= set(events), f"{name}: {events}"
    assert all(n == 1 for n in events.values()), f"{name}: {events}"
    phases = [h["phase"] for h in runs.status(name)["phaseHistory"]]
    assert len(phases) == len(set(phases)), f"{name}: {phases}"


def _acquired_at(lease: Any) -> float:
    moment: datetime = lease.spec.acquire_time
    return moment.replace(tzinfo=moment.tzinfo or UTC).timestamp()


def test_the_standby_takes_over_from_a_killed_leader_and_no_run_is_reconciled_twice(
    in_cluster: InClusterOperator, learning: Any, namespace: str
) -> None:
    runs = Runs(learning, namespace)
    runs.create("before", {}, pod_annotations={"kwok.kakehashi.dev/run-duration": "1s"})
    runs.wait_phase("before", "Succeeded", "Failed")
    runs.create("across", {}, pod_annotations={"kwok.kakehashi.dev/run-duration": "40s"})
    runs.wait_phase("across", "Running")
    _, [standby] = in_cluster.settled()
    killed_holder = in_cluster.holder()
    time.sleep(3)  # the last Events of "before" and "across" posted (kopf batches them)
    before_events = sorted((e.metadata.name, e.count) for e in runs.events("before"))

    # SIGKILL (no Lease released), the pod removed at once: the Deployment's new pod must find
    # the standby leading and wait.
    killed_at = in_cluster.kill()
    runs.create("during", {}, pod_annotations={"kwok.kakehashi.dev/run-duration": "1s"})
    wait_for(lambda: in_cluster.holder() not in ("", killed_holder), LEASE_S + 30, "a new holder of the Lease")
    assert in_cluster.holder().rpartition("_")[0] == standby.metadata.name, "the standby pod took over"
    acquired = _acquired_at(in_cluster.lease()) - killed_at
    wait_for(lambda: runs.jobs("during"), 60, "the Job of the run created while no one led")
    FIGURES["killed leader: kill -> standby holds the Lease (s)"] = acquired
    FIGURES["killed leader: kill -> Job of the run created meanwhile (s)"] = time.time() - killed_at
    # The new leader holds the Lease no earlier than the old one's lease ran out, by its own clock.
    assert LEASE_S - 2.5 <= acquired <= LEASE_S + 10, acquired

    runs.wait_phase("during", "Succeeded", "Failed")
    status = runs.wait_phase("across", "Succeeded", "Failed", timeout=90)
    assert status["phase"] == "Succeeded", status
    FIGURES["killed leader: kill -> the run spanning it Succeeded (s)"] = time.time() - killed_at
    time.sleep(3)
    _assert_reconciled_once(runs, "before")
    _assert_reconciled_once(runs, "across")
    _assert_reconciled_once(runs, "during")
    # The finished run was listed and looked at by the new leader, and left as it was.
    assert sorted((e.metadata.name, e.count) for e in runs.events("before")) == before_events

    # The Deployment's replacement pod waits as the new standby: no handover back.
    new_leader, [new_standby] = in_cluster.settled()
    assert new_leader.metadata.name == standby.metadata.name
    wait_for(lambda: "kakehashi_operator_leader 0.0" in _metrics(new_standby), 30, "the new standby waiting")


def test_a_leader_stopped_cleanly_hands_over_at_once(
    in_cluster: InClusterOperator, learning: Any, namespace: str
) -> None:
    leader, _ = in_cluster.settled()
    old_holder = in_cluster.holder()
    runs = Runs(learning, namespace)
    stopped_at = time.time()
    # As a rolling update or a drain does: SIGTERM, kopf stops, the Lease is released.
    client.CoreV1Api(learning).delete_namespaced_pod(leader.metadata.name, NAMESPACE)
    wait_for(lambda: in_cluster.holder() not in ("", old_holder), 30, "a waiting replica holding the Lease")
    # The standby, or the Deployment's replacement pod if it started before the old leader's
    # kopf had stopped and released: both wait on the Lease, the first to see it free takes it.
    taken_by = in_cluster.holder().rpartition("_")[0]
    assert taken_by != leader.metadata.name
    assert taken_by in {p.metadata.name for p in in_cluster.pods()}, taken_by
    acquired = _acquired_at(in_cluster.lease()) - stopped_at
    FIGURES["clean stop: delete -> a waiting replica holds the Lease (s)"] = acquired
    assert acquired < LEASE_S / 2, f"the next leader waited {acquired:.1f}s: the Lease was not released"
    runs.create("after", {}, pod_annotations={"kwok.kakehashi.dev/run-duration": "1s"})
    status = runs.wait_phase("after", "Succeeded", "Failed")
    FIGURES["clean stop: delete -> next run Succeeded (s)"] = time.time() - stopped_at
    assert status["phase"] == "Succeeded"
    time.sleep(2)
    _assert_reconciled_once(runs, "after")
    in_cluster.settled()
