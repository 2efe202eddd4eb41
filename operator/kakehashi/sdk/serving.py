"""ModelServices from Python: deploy a model, wait until it serves, roll back, get a Predictor.

The spec is `kakehashi.api.modelservice.ModelServiceSpec`, built from arguments; the wait
watches the resource (see watching.py) and shows Baking → Deploying → Ready with the time.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TextIO

from kakehashi import GROUP
from kakehashi.api import modelservice as api
from kakehashi.api.modelservice import (
    ModelServiceSpec,
    ModelServiceStatus,
    Phase,
)
from kakehashi.api.trainingrun import Toleration
from kakehashi.sdk.connection import Connection, connect
from kakehashi.sdk.errors import KakehashiError, NotFound, ServiceFailed, WaitTimeout
from kakehashi.sdk.predictor import Predictor
from kakehashi.sdk.progress import Mode, Progress
from kakehashi.sdk.watching import wait_for_object

PHASES: Final = [Phase.BAKING.value, Phase.DEPLOYING.value, Phase.READY.value]
DEFAULT_TIMEOUT_S: Final = 900.0
# The Secret a team keeps its production kubeconfig in (README, "Serving a model").
DEFAULT_KUBECONFIG_SECRET: Final = "production"
# Read by the operator (serving.reconciler.ANNOTATION_CHANGED_BY; a unit test keeps them equal)
# into status.history's changedBy.
CHANGED_BY: Final = f"{GROUP}/changed-by"


def render_spec(
    *,
    training_run: str | None = None,
    model_uri: str | None = None,
    model_digest: str | None = None,
    registry: str,
    production_namespace: str,
    kubeconfig_secret: str = DEFAULT_KUBECONFIG_SECRET,
    serving_image: str | None = None,
    replicas: int = 1,
    cpu: int | str | None = None,
    memory: int | str | None = None,
    max_batch_size: int | None = None,
    node_selector: Mapping[str, str] | None = None,
    tolerations: Sequence[Mapping[str, Any] | Toleration] = (),
    gate_override: str | None = None,
) -> ModelServiceSpec:
    """The ModelService spec for a model (a TrainingRun's, or `model_uri` + `model_digest`),
    delivered directly to `production_namespace` with the kubeconfig in `kubeconfig_secret`."""
    # Validated once, by the spec model, so an error names its field's path (model.digest).
    model = {"trainingRun": training_run, "uri": model_uri, "digest": model_digest}
    fields: dict[str, Any] = {
        "model": {key: value for key, value in model.items() if value is not None},
        "registry": registry,
        "replicas": replicas,
        "resources": {"cpu": cpu, "memory": memory} if cpu is not None or memory is not None else None,
        "delivery": {"mode": "direct", "direct": {"kubeconfigSecret": {"name": kubeconfig_secret},
                                                  "namespace": production_namespace}},
        "nodeSelector": dict(node_selector or {}),
        "tolerations": list(tolerations),
        "gateOverride": {"reason": gate_override} if gate_override else None,
    }
    if max_batch_size is not None:
        fields["batching"] = {"maxBatchSize": max_batch_size}
    if serving_image is not None:  # else the CRD's default serving image
        fields["servingImage"] = serving_image
    return ModelServiceSpec.model_validate(fields)


class ModelService:
    """One ModelService by name: its status, waiting for it, rolling it back, predicting."""

    def __init__(self, name: str, *, namespace: str | None = None, connection: Connection | None = None) -> None:
        self.name = name
        self.connection = connection or connect(namespace=namespace)
        self.namespace = namespace or self.connection.namespace
        self._object: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"ModelService({self.name!r}, namespace={self.namespace!r})"

    @classmethod
    def list(cls, *, namespace: str | None = None, connection: Connection | None = None) -> builtins.list[ModelService]:
        connection = connection or connect(namespace=namespace)
        namespace = namespace or connection.namespace
        services = []
        for obj in connection.kube.list_objects(api.RESOURCE, namespace):
            service = cls(obj["metadata"]["name"], namespace=namespace, connection=connection)
            service._object = obj
            services.append(service)
        return sorted(services, key=lambda s: s.name)

    def refresh(self) -> ModelService:
        obj = self.connection.kube.get(api.RESOURCE, self.namespace, self.name)
        if obj is None:
            raise NotFound(f"ModelService {self.namespace}/{self.name} does not exist")
        self._object = obj
        return self

    @property
    def object(self) -> dict[str, Any]:
        if self._object is None:
            self.refresh()
        assert self._object is not None
        return self._object

    @property
    def spec(self) -> ModelServiceSpec:
        return ModelServiceSpec.model_validate(self.object.get("spec") or {})

    @property
    def status(self) -> ModelServiceStatus:
        return ModelServiceStatus.model_validate(self.object.get("status") or {})

    def _changed_by(self) -> dict[str, str]:
        """The annotation the operator records in status.history as who changed the spec."""
        return {CHANGED_BY: self.connection.identity()}

    def apply(self, spec: ModelServiceSpec) -> ModelService:
        """Create the service, or update it to `spec`.

        An update is a merge patch of the fields given, with `rollbackTo` removed: a deploy
        names the model to serve, and a rollback left in the spec would override it. Fields
        not given (a canary someone added) stay."""
        dumped = spec.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        annotations = self._changed_by()
        body = {"apiVersion": api.RESOURCE.api_version, "kind": api.KIND,
                "metadata": {"name": self.name, "namespace": self.namespace, "annotations": annotations},
                "spec": dumped}
        obj, created = self.connection.kube.create(api.RESOURCE, body)
        if not created:
            patched = self.connection.kube.patch(api.RESOURCE, self.namespace, self.name, {
                "metadata": {"annotations": annotations}, "spec": {**dumped, "rollbackTo": None}})
            if patched is None:
                raise NotFound(f"ModelService {self.namespace}/{self.name} was deleted while being updated")
            obj = patched
        self._object = obj
        return self

    def rollback(self, to: str | int | None = None) -> ModelService:
        """Return to an earlier deploy without baking: a status.history id, image or digest;
        default: the entry before the one serving now."""
        history = self.refresh().status.history
        if to is None:
            if len(history) < 2:
                raise KakehashiError(f"ModelService {self.name!r} has no earlier deploy to roll back to "
                                     f"({len(history)} in its history)")
            current = self.status.image
            earlier = [h for h in history if h.image != current]
            if not earlier:
                raise KakehashiError(f"every deploy in {self.name!r}'s history is the image serving now")
            to = earlier[-1].id
        patched = self.connection.kube.patch(api.RESOURCE, self.namespace, self.name, {
            "metadata": {"annotations": self._changed_by()}, "spec": {"rollbackTo": str(to)}})
        if patched is None:
            raise NotFound(f"ModelService {self.namespace}/{self.name} does not exist")
        self._object = patched
        return self

    def wait(self, timeout: float | None = DEFAULT_TIMEOUT_S, *, progress: Mode | bool = "auto",
             stream: TextIO | None = None) -> ModelService:
        """Watch until the current spec is Ready. Raises ServiceFailed if it is Failed, or still
        Degraded when `timeout` runs out (with the reason); WaitTimeout otherwise."""
        generation = int(self.object["metadata"].get("generation", 1))
        display = Progress(f"ModelService {self.name}", PHASES, progress, stream)

        def current(obj: dict[str, Any]) -> ModelServiceStatus | None:
            status = ModelServiceStatus.model_validate(obj.get("status") or {})
            # A status written for an older spec says nothing about this one.
            return status if (status.observed_generation or 0) >= generation else None

        def show(obj: dict[str, Any]) -> None:
            status = current(obj)
            if status is None:
                display.update("Submitted")
            elif status.phase is not None:
                display.update(status.phase.value, status.reason or "")

        def done(obj: dict[str, Any]) -> bool:
            status = current(obj)
            # A GitOps service's rollout waits for a reviewer's `/deploy` on its pull request:
            # the wait ends when the PR is open (or already merged), not at a timeout.
            return status is not None and status.phase in (Phase.READY, Phase.FAILED, Phase.PROPOSED, Phase.DELIVERED)

        try:
            obj, finished = wait_for_object(self.connection.api, api.RESOURCE, self.namespace, self.name,
                                            done, timeout, show)
        finally:
            display.close()
        self._object = obj
        status = self.status
        phase = status.phase.value if status.phase else None
        if status.phase == Phase.FAILED or (not finished and status.phase == Phase.DEGRADED):
            raise ServiceFailed(self.name, phase or "", status.reason or "", status.message or "")
        if not finished:
            raise WaitTimeout(api.KIND, self.name, phase, timeout or 0, status.message or "")
        return self

    def predictor(self, kubeconfig: Path | str | None = None) -> Predictor:
        """A Predictor for this service, through the production API server's service proxy:
        with `kubeconfig`, or the kubeconfig Secret its direct delivery uses."""
        spec = self.spec
        direct = spec.delivery.direct
        if direct is None:
            raise KakehashiError(f"ModelService {self.name!r} is delivered by {spec.delivery.mode}: "
                                 "pass the production cluster's kubeconfig")
        if kubeconfig is not None:
            return Predictor.from_kubeconfig(self.name, direct.namespace, kubeconfig)
        secret = self.connection.kube.read_secret(self.namespace, direct.kubeconfig_secret.name)
        if secret is None or direct.kubeconfig_secret.key not in secret.data:
            raise KakehashiError(
                f"no key {direct.kubeconfig_secret.key!r} in Secret {self.namespace}/"
                f"{direct.kubeconfig_secret.name} (the production kubeconfig): pass kubeconfig=")
        return Predictor.from_kubeconfig_text(self.name, direct.namespace, secret.data[direct.kubeconfig_secret.key])


def deploy(
    name: str,
    *,
    training_run: str | None = None,
    model_uri: str | None = None,
    model_digest: str | None = None,
    namespace: str | None = None,
    connection: Connection | None = None,
    wait: bool = True,
    timeout: float | None = DEFAULT_TIMEOUT_S,
    progress: Mode | bool = "auto",
    stream: TextIO | None = None,
    kubeconfig: Path | str | None = None,
    **options: Any,
) -> Predictor:
    """Create or update the ModelService `name` serving a TrainingRun's model (or the model at
    `model_uri` with `model_digest`), wait until it is Ready (wait=True) and return its
    Predictor. `options` are `render_spec`'s: registry, production_namespace, kubeconfig_secret,
    serving_image, replicas, cpu, memory, node_selector, tolerations, gate_override..."""
    spec = render_spec(training_run=training_run, model_uri=model_uri, model_digest=model_digest, **options)
    service = ModelService(name, namespace=namespace, connection=connection).apply(spec)
    if wait:
        service.wait(timeout, progress=progress, stream=stream)
    return service.predictor(kubeconfig)
