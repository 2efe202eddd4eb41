"""The cluster side on Kubernetes: what `/deploy`, `/diff`, `/rollback` and `/train` do.

- build: `kubectl kustomize` of the PR head's service directory (kustomize as kubectl ships it,
  so what the bot applies is what `kubectl apply -k` would);
- apply and prune: `delivery.direct.Production` (server-side apply with the platform's field
  manager; what carries the service's label but is no longer in the build is deleted);
- readiness: every Deployment rolled out (observed generation, all replicas updated and
  available, no old replica left) and, when its pods declare the model digest they must serve,
  every ready pod answering /ready with that digest: the ModelService's own definition of Ready;
  a pod that cannot start (image pull, crash loop) fails the rollout at once;
- audit: one ConfigMap per deploy or rollback in the service's namespace (who, which digest,
  which PR and commit, when, the outcome, and the objects applied), labelled so `/rollback`
  can read the history back and re-apply a version whole;
- diff: `kubectl diff --server-side` (the API server's dry run of the same apply);
- train: TrainingRuns on the learning cluster, named per commit, waited for, their metrics and
  gate read from status.

Every Kubernetes call blocks (the sync client), so each runs in a thread.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import yaml

from kakehashi.api import trainingrun
from kakehashi.control.client import Kube
from kakehashi.control.resources import BY_KIND, DEPLOYMENTS, PODS, Resource
from kakehashi.delivery.direct import FIELD_MANAGER, Production, ProductionState
from kakehashi.gitops.cluster import ApplyResult, Origin, ServiceChange, TrainResult
from kakehashi.serving import render

CONFIGMAPS: Final = Resource("", "v1", "configmaps", "ConfigMap")
LABEL_AUDIT: Final = "kakehashi.dev/audit"
# Waiting reasons that no amount of waiting fixes: the rollout has failed.
BROKEN: Final = frozenset({
    "CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "InvalidImageName",
    "CreateContainerConfigError", "CreateContainerError", "RunContainerError",
})
_DIGEST: Final = re.compile(r"sha256:[0-9a-f]{64}")


class BuildError(Exception):
    pass


@dataclass(frozen=True)
class Rollout:
    ok: bool
    message: str


class KubeCluster:
    def __init__(
        self,
        production: Production,
        *,
        kubeconfig: Path | None,
        namespace: str,
        kubectl: str = "kubectl",
        learning: Kube | None = None,
        learning_namespace: str = "default",
        rollout_timeout_s: float = 300.0,
        train_timeout_s: float = 3600.0,
        poll_s: float = 1.0,
    ) -> None:
        self.production = production
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.kubectl = kubectl
        self.learning = learning
        self.learning_namespace = learning_namespace
        self.rollout_timeout_s = rollout_timeout_s
        self.train_timeout_s = train_timeout_s
        self.poll_s = poll_s

    # ---- build ------------------------------------------------------------------------------

    async def _kubectl(self, *args: str, stdin: bytes | None = None, ok: tuple[int, ...] = (0,)) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            self.kubectl, *args,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            # No kubeconfig: kubectl's own default (in-cluster, or KUBECONFIG), as the client's.
            env=dict(os.environ, **({"KUBECONFIG": str(self.kubeconfig)} if self.kubeconfig else {})),
        )
        out, err = await process.communicate(stdin)
        code = process.returncode or 0
        if code not in ok:
            raise BuildError(f"kubectl {args[0]}: {err.decode(errors='replace').strip()[-800:]}")
        return code, out.decode()

    async def build(self, change: ServiceChange) -> list[dict[str, Any]]:
        """The service's objects as applied: namespaced and labelled with the service."""
        if change.directory is None:
            return []
        _, text = await self._kubectl("kustomize", str(change.directory))
        objects = [obj for obj in yaml.safe_load_all(text) if obj]
        for obj in objects:
            if obj.get("kind") not in BY_KIND:
                raise BuildError(f"{obj.get('kind')} {obj['metadata'].get('name')}: not a kind the bot deploys")
            metadata = obj.setdefault("metadata", {})
            metadata.setdefault("namespace", self.namespace)
            # The label is what prune and readiness find a service's objects by.
            metadata.setdefault("labels", {})[self.production.owner_label] = change.service
            if obj["kind"] == "Deployment":
                # Pods carry it too: readiness reads them (and what they serve) by this label.
                template = obj.setdefault("spec", {}).setdefault("template", {}).setdefault("metadata", {})
                template.setdefault("labels", {})[self.production.owner_label] = change.service
        namespaces = {obj["metadata"]["namespace"] for obj in objects}
        if len(namespaces) > 1:
            raise BuildError(f"{change.service} spans namespaces {sorted(namespaces)}; one service, one namespace")
        return objects

    def _namespace_of(self, objects: list[dict[str, Any]]) -> str:
        return str(objects[0]["metadata"]["namespace"]) if objects else self.namespace

    async def _namespace(self, change: ServiceChange, objects: list[dict[str, Any]]) -> str:
        """Where the service's objects are: the build's namespace, or for a deleted service the
        namespace its directory on the base branch named (not the bot's default)."""
        if not objects and change.directory is None and change.before is not None:
            return self._namespace_of(await self.build(ServiceChange(change.environment, change.service, change.before)))
        return self._namespace_of(objects)

    # ---- /deploy ----------------------------------------------------------------------------

    async def apply(self, change: ServiceChange, origin: Origin) -> ApplyResult:
        try:
            objects = await self.build(change)
        except BuildError as error:
            return ApplyResult(False, f"build failed: {error}"[:140], f"```\n{error}\n```")
        try:
            namespace = await self._namespace(change, objects)
        except BuildError as error:
            return ApplyResult(False, f"build of the base branch's {change.service} failed: {error}"[:140],
                               f"```\n{error}\n```")
        started = time.monotonic()
        try:
            await asyncio.to_thread(self.production.apply, objects)
            pruned = await asyncio.to_thread(self.production.prune, namespace, change.service, objects)
        except Exception as error:
            refusal = _api_refusal(error)
            if refusal is None:
                raise
            # The API server said why (an invalid field, a forbidden change): the reviewer's answer.
            return ApplyResult(False, f"apply refused: {refusal}"[:140], f"```\n{refusal}\n```")
        rollout = await self._wait(namespace, change.service, objects)
        seconds = time.monotonic() - started
        images = _images(objects)
        await asyncio.to_thread(self._audit, namespace, change.service, origin, objects, rollout, rollback=False)
        applied = ", ".join(f"{o['kind']}/{o['metadata']['name']}" for o in objects) or "nothing"
        details = [f"- applied: {applied}", f"- pruned: {', '.join(pruned) or 'nothing'}",
                   f"- images: {', '.join(images.values()) or 'none'}",
                   f"- rollout ({seconds:.1f} s): {rollout.message}"]
        return ApplyResult(rollout.ok, rollout.message[:140], "\n".join(details), _digests(images))

    async def _wait(self, namespace: str, service: str, objects: list[dict[str, Any]]) -> Rollout:
        deployments = [o for o in objects if o["kind"] == "Deployment"]
        if not deployments:
            return Rollout(True, "applied (no Deployment to wait for)")
        deadline = time.monotonic() + self.rollout_timeout_s
        last = "waiting for the rollout"
        digests = any(_model_digests([d]) for d in deployments)
        while True:
            state = await asyncio.to_thread(self._observe, namespace, service, digests)
            problem = _pod_problem(state.pods)
            if problem:
                return Rollout(False, f"rollout failed: {problem}; {_still_serving(state.pods)}")
            done, last = _rolled_out(deployments, state.deployments, state.served)
            if done:
                return Rollout(True, last)
            if time.monotonic() > deadline:
                return Rollout(False, f"rollout not ready after {self.rollout_timeout_s:.0f} s: {last}; "
                                      f"{_still_serving(state.pods)}")
            await asyncio.sleep(self.poll_s)

    def _observe(self, namespace: str, service: str, digests: bool) -> ProductionState:
        """The service's Deployments and pods; what each ready pod serves only when a Deployment
        declares a model digest (asking a pod that serves no model would wait out a timeout)."""
        if digests:
            state = self.production.read(namespace, service)
        else:
            selector = f"{self.production.owner_label}={service}"
            state = ProductionState(pods=self.production.kube.list_objects(PODS, namespace, selector))
            for deployment in self.production.kube.list_objects(DEPLOYMENTS, namespace, selector):
                state.deployments[deployment["metadata"]["name"]] = deployment
        for deployment in state.deployments.values():
            deployment.setdefault("kind", "Deployment")  # items of a list carry no kind
        return state

    def _audit(self, namespace: str, service: str, origin: Origin, objects: list[dict[str, Any]],
               rollout: Rollout, *, rollback: bool) -> None:
        at = datetime.now(UTC)
        kind = "rollback" if rollback else "deploy"
        name = f"kakehashi-{kind}-{service}-{at:%Y%m%d%H%M%S%f}"[:253]
        images = _images(objects)
        body = {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {LABEL_AUDIT: kind, self.production.owner_label: service,
                                    "kakehashi.dev/outcome": "success" if rollout.ok else "failure"}},
            "data": {
                "actor": origin.actor, "repository": origin.repository,
                "pullRequest": str(origin.pull_request), "commit": origin.sha,
                "at": at.isoformat(), "outcome": "success" if rollout.ok else "failure",
                "message": rollout.message, "images": yaml.safe_dump(images),
                "modelDigests": yaml.safe_dump(_model_digests(objects)),
                # What was applied, whole: /rollback re-applies it (a ConfigMap holds 1 MiB).
                "objects": yaml.safe_dump_all([_applied(o) for o in objects]),
            },
        }
        self.production.kube.create(CONFIGMAPS, body)

    def history(self, namespace: str, service: str) -> list[dict[str, str]]:
        """Successful deploys and rollbacks of the service, newest first (the audit records)."""
        selector = f"{LABEL_AUDIT},{self.production.owner_label}={service},kakehashi.dev/outcome=success"
        records = self.production.kube.list_objects(CONFIGMAPS, namespace, selector)
        return sorted((dict(r.get("data") or {}) for r in records), key=lambda d: d.get("at", ""), reverse=True)

    # ---- /diff ------------------------------------------------------------------------------

    async def diff(self, change: ServiceChange) -> str:
        objects = await self.build(change)
        namespace = await self._namespace(change, objects)
        text = ""
        if objects:
            _, text = await self._kubectl(
                "diff", "--server-side", f"--field-manager={FIELD_MANAGER}", "--force-conflicts", "-f", "-",
                stdin=yaml.safe_dump_all(objects).encode(), ok=(0, 1),
            )
            # kubectl diffs two temporary directories; name the sides for a reader instead.
            text = re.sub(r"\S*/LIVE-\d+/", "live/", text)
            text = re.sub(r"\S*/MERGED-\d+/", "pr/", text)
            text = "\n".join(line for line in text.splitlines() if not line.startswith("diff -u -N "))
        keep = {(o["kind"], o["metadata"]["name"]) for o in objects}
        pruned = []
        for resource in (*reversed(_OWNED_KINDS),):
            for live in await asyncio.to_thread(self._owned, resource, namespace, change.service):
                if (resource.kind, live["metadata"]["name"]) not in keep:
                    pruned.append(f"- {resource.kind}/{live['metadata']['name']} (pruned: the PR removes it)")
        return "\n".join(filter(None, [text.strip(), *pruned]))

    def _owned(self, resource: Resource, namespace: str, service: str) -> list[dict[str, Any]]:
        try:
            return self.production.kube.list_objects(resource, namespace, f"{self.production.owner_label}={service}")
        except Exception as error:
            if getattr(error, "status", None) == 404:  # the kind is not served (no Gateway API)
                return []
            raise

    # ---- /rollback --------------------------------------------------------------------------

    async def rollback(self, environment: str, service: str, target: str | None, origin: Origin) -> ApplyResult:
        namespace = self.namespace
        history = await asyncio.to_thread(self.history, namespace, service)
        live = list((await asyncio.to_thread(self._observe, namespace, service, False)).deployments.values())
        chosen = choose(history, target, _images(live))
        if chosen is None:
            what = target or "a version other than the one live now"
            return ApplyResult(False, f"no successful deploy of {service} recorded in {namespace} matches {what}")
        objects = [o for o in yaml.safe_load_all(chosen.get("objects", "")) if o]
        started = time.monotonic()
        # The whole recorded version, not just its image: a failed deploy may have changed more.
        await asyncio.to_thread(self.production.apply, objects)
        pruned = await asyncio.to_thread(self.production.prune, namespace, service, objects)
        rollout = await self._wait(namespace, service, objects)
        await asyncio.to_thread(self._audit, namespace, service, origin, objects, rollout, rollback=True)
        images = _images(objects)
        details = (f"- back to the deploy of {chosen.get('at', '?')} by @{chosen.get('actor')} from "
                   f"{chosen.get('repository')}#{chosen.get('pullRequest')} ({chosen.get('commit', '')[:12]})\n"
                   f"- images: {', '.join(images.values()) or 'none'}\n"
                   f"- pruned: {', '.join(pruned) or 'nothing'}\n"
                   f"- rollout ({time.monotonic() - started:.1f} s): {rollout.message}\n"
                   f"- the repository still names the newer version: revert its PR so the next deploy keeps this one")
        return ApplyResult(rollout.ok, rollout.message[:140], details, _digests(images))

    # ---- /train -----------------------------------------------------------------------------

    async def train(self, directory: Path, origin: Origin) -> TrainResult:
        if self.learning is None:
            return TrainResult(False, "no learning cluster is configured for /train")
        runs = []
        for path in sorted(await asyncio.to_thread(lambda: list(directory.rglob("*.yaml")))):
            for obj in yaml.safe_load_all(await asyncio.to_thread(path.read_text)):
                if obj and obj.get("kind") == trainingrun.KIND:
                    runs.append(self._per_commit(obj, origin))
        if not runs:
            return TrainResult(False, f"no {trainingrun.KIND} manifest under {directory.name}/")
        for run in runs:
            await asyncio.to_thread(self.learning.create, trainingrun.RESOURCE, run)
        results = [await self._wait_run(run) for run in runs]
        metrics = {f"{name}.{k}" if len(runs) > 1 else k: v for name, s in results for k, v in (s.model.metrics if s.model else {}).items()}
        promotable_values = [_promotable(s) for _, s in results]
        promotable = None if all(p is None for p in promotable_values) else all(p is True for p in promotable_values)
        ok = all(s.phase == trainingrun.Phase.SUCCEEDED for _, s in results)
        summary = "; ".join(f"{trainingrun.KIND} {name} {s.phase.value if s.phase else 'Unknown'}"
                            + (f" ({s.reason}: {s.message})" if not ok and s.reason else "") for name, s in results)
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return TrainResult(ok, summary, numeric, promotable)

    def _per_commit(self, obj: dict[str, Any], origin: Origin) -> dict[str, Any]:
        # A TrainingRun's spec is immutable and it is the record of what trained: one per commit.
        run = yaml.safe_load(yaml.safe_dump(obj))
        metadata = run.setdefault("metadata", {})
        metadata["name"] = f"{metadata.get('name', 'train')}-pr{origin.pull_request}-{origin.sha[:7]}"[:63]
        metadata.setdefault("namespace", self.learning_namespace)
        metadata.setdefault("labels", {}).update(
            {"kakehashi.dev/pull-request": str(origin.pull_request), "kakehashi.dev/commit": origin.sha[:40]})
        git = (run.get("spec", {}).get("source") or {}).get("git")
        if git is not None:
            git["revision"] = origin.sha  # the code of the commit the reviewer saw
        return dict(run)

    async def _wait_run(self, run: dict[str, Any]) -> tuple[str, trainingrun.TrainingRunStatus]:
        assert self.learning is not None
        name, namespace = run["metadata"]["name"], run["metadata"]["namespace"]
        deadline = time.monotonic() + self.train_timeout_s
        while True:
            live = await asyncio.to_thread(self.learning.get, trainingrun.RESOURCE, namespace, name)
            status = trainingrun.TrainingRunStatus.model_validate((live or {}).get("status") or {})
            if status.phase in (trainingrun.Phase.SUCCEEDED, trainingrun.Phase.FAILED) or time.monotonic() > deadline:
                return name, status
            await asyncio.sleep(self.poll_s)


def choose(history: list[dict[str, str]], target: str | None, live: dict[str, str]) -> dict[str, str] | None:
    """The record `/rollback` returns to, from the successful deploys (newest first): no target →
    the newest whose images differ from the `live` ones; N → the N-th newest (1 is the newest);
    a digest → the newest naming it."""
    if target is None:
        return next((h for h in history if (yaml.safe_load(h.get("images", "")) or {}) != live), None)
    if target.isdigit():
        return history[int(target) - 1] if 0 < int(target) <= len(history) else None
    return next((h for h in history if target in h.get("images", "")), None)


def _applied(obj: dict[str, Any]) -> dict[str, Any]:
    """An object as it was sent: no status or server-set metadata."""
    metadata = {k: v for k, v in obj.get("metadata", {}).items() if k in ("name", "namespace", "labels", "annotations")}
    return {k: v for k, v in obj.items() if k != "status"} | {"metadata": metadata}


_OWNED_KINDS: Final = tuple(BY_KIND[k] for k in ("Deployment", "Service", "PodDisruptionBudget",
                                                   "HorizontalPodAutoscaler", "HTTPRoute"))


def _api_refusal(error: Exception) -> str | None:
    """The API server's own message for a 4xx answer; None for anything else (retried, or a bug)."""
    status = getattr(error, "status", None)
    if not isinstance(status, int) or not 400 <= status < 500:
        return None
    try:
        message = json.loads(getattr(error, "body", "") or "{}").get("message")
    except ValueError:
        message = None
    return f"{status}: {message or getattr(error, 'reason', '')}"


def _promotable(status: trainingrun.TrainingRunStatus) -> bool | None:
    for condition in status.conditions:
        if condition.type == "Promotable":
            return condition.status == "True"
    return None


def _images(objects: list[dict[str, Any]]) -> dict[str, str]:
    """deployment/container -> image, for every Deployment."""
    images = {}
    for obj in objects:
        if obj.get("kind") == "Deployment":
            for container in obj["spec"]["template"]["spec"].get("containers", []):
                images[f"{obj['metadata']['name']}/{container['name']}"] = container["image"]
    return images


def _model_digests(objects: list[dict[str, Any]]) -> dict[str, str]:
    digests = {}
    for obj in objects:
        if obj.get("kind") == "Deployment":
            annotations = (obj["spec"]["template"].get("metadata") or {}).get("annotations") or {}
            if render.ANNOTATION_MODEL_DIGEST in annotations:
                digests[obj["metadata"]["name"]] = annotations[render.ANNOTATION_MODEL_DIGEST]
    return digests


def _digests(images: dict[str, str]) -> dict[str, str]:
    found = {}
    for key, image in images.items():
        match = _DIGEST.search(image)
        if match:
            found[key] = match.group(0)
    return found


def _rolled_out(
    wanted: list[dict[str, Any]], live: dict[str, dict[str, Any]], served: dict[str, str]
) -> tuple[bool, str]:
    waiting = []
    ready_total = 0
    for deployment in wanted:
        name = deployment["metadata"]["name"]
        current = live.get(name)
        if current is None:
            waiting.append(f"{name}: not found")
            continue
        spec, status = current.get("spec") or {}, current.get("status") or {}
        replicas = int(spec.get("replicas", 1))
        generation = current["metadata"].get("generation", 0)
        updated, available = status.get("updatedReplicas", 0), status.get("availableReplicas", 0)
        total = status.get("replicas", 0)
        if status.get("observedGeneration", 0) < generation or updated < replicas or available < replicas or total > replicas:
            waiting.append(f"{name}: {updated}/{replicas} updated, {available} available, {total - updated} old")
            continue
        digest = ((current["spec"]["template"].get("metadata") or {}).get("annotations") or {}).get(render.ANNOTATION_MODEL_DIGEST)
        if digest:
            # The pods say what they serve: Ready is "serving the new model", as for a ModelService.
            serving = sum(1 for d in served.values() if d == digest)
            others = {d for d in served.values() if d != digest}
            if serving < replicas or others:
                waiting.append(f"{name}: {serving}/{replicas} ready pods serve {digest[:19]}")
                continue
        ready_total += replicas
    if waiting:
        return False, "; ".join(waiting)
    return True, f"ready: {ready_total} replica(s) of {len(wanted)} Deployment(s) rolled out"


def _pod_problem(pods: list[dict[str, Any]]) -> str | None:
    for pod in pods:
        if pod["metadata"].get("deletionTimestamp"):
            continue
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (status.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in BROKEN:
                message = (waiting.get("message") or "").splitlines()[0][:200] if waiting.get("message") else ""
                return f"pod {pod['metadata']['name']}: {waiting['reason']}" + (f" ({message})" if message else "")
    return None


def _still_serving(pods: list[dict[str, Any]]) -> str:
    ready = [p for p in pods if not p["metadata"].get("deletionTimestamp") and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in (p.get("status") or {}).get("conditions") or [])]
    return f"{len(ready)} ready pod(s) of the earlier version keep serving" if ready else "no pod is ready"

