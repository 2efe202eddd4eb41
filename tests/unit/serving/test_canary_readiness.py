"""A service with a canary is Ready only when the canary's pod serves the canary's model too:
the route sends it traffic from the moment it is applied."""

from __future__ import annotations

from typing import Any

from kakehashi.api.modelservice import Phase
from kakehashi.serving import render
from kakehashi.serving.render import Release
from kakehashi.serving.status import Observed, verdict

STABLE = Release("registry/models/digits@sha256:" + "a" * 64, "sha256:" + "1" * 64)
CANARY = Release("registry/models/digits@sha256:" + "b" * 64, "sha256:" + "2" * 64)


def _pod(name: str, track: str, digest: str, *, crashing: bool = False) -> dict[str, Any]:
    state = {"waiting": {"reason": "CrashLoopBackOff"}} if crashing else {"running": {}}
    last = {"terminated": {"exitCode": 1, "reason": "Error", "message": "ValueError: not a flatbuffer"}} \
        if crashing else {}
    return {"metadata": {"name": name, "labels": {render.LABEL_TRACK: track},
                         "annotations": {render.ANNOTATION_MODEL_DIGEST: digest}},
            "status": {"containerStatuses": [{"name": "server", "ready": not crashing, "state": state,
                                              "restartCount": 3 if crashing else 0, "lastState": last}]}}


def _observed(canary_pods: list[dict[str, Any]], canary_served: dict[str, str]) -> Observed:
    return Observed(release=STABLE, applied=True, desired_replicas=2,
                    pods=[_pod("s-0", "stable", STABLE.model_digest), _pod("s-1", "stable", STABLE.model_digest)],
                    served={"s-0": STABLE.model_digest, "s-1": STABLE.model_digest},
                    canary=CANARY, canary_pods=canary_pods, canary_served=canary_served)


def test_not_ready_until_the_canarys_pod_serves_its_model() -> None:
    starting = verdict(_observed([_pod("c-0", "canary", CANARY.model_digest)], {}))
    assert (starting.phase, starting.reason) == (Phase.DEPLOYING, "CanaryRollingOut")
    assert CANARY.model_digest in starting.message
    ready = verdict(_observed([_pod("c-0", "canary", CANARY.model_digest)], {"c-0": CANARY.model_digest}))
    assert (ready.phase, ready.reason) == (Phase.READY, "Serving")
    assert STABLE.model_digest in ready.message and CANARY.model_digest in ready.message


def test_a_crashing_canary_degrades_the_service_with_its_reason() -> None:
    crashing = verdict(_observed([_pod("c-0", "canary", CANARY.model_digest, crashing=True)], {}))
    assert (crashing.phase, crashing.reason) == (Phase.DEGRADED, "CanaryCrashLoopBackOff")
    assert crashing.message.startswith("the canary: pod c-0 keeps crashing") and "not a flatbuffer" in crashing.message


def test_without_a_canary_the_stable_pods_decide() -> None:
    plain = Observed(release=STABLE, applied=True, desired_replicas=1,
                     pods=[_pod("s-0", "stable", STABLE.model_digest)], served={"s-0": STABLE.model_digest})
    assert verdict(plain).phase == Phase.READY
