"""delivery.mode gitops for the ModelService loop: render the service's kustomize directory,
propose it as the service's pull request, and say what that means for the status.

Kept beside the reconciler so the loop itself only dispatches: the git and HTTP work runs on
the reconciler's worker threads (`io`), and failures are sorted as everywhere in the loop —
GitHub's refusals become a Degraded status with GitHub's words, everything that may pass
(5xx, 429, network, a push that lost a race) is retried with backoff and never recorded.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Final, TypeVar

from kakehashi.api.modelservice import ModelService, PullRequestRef
from kakehashi.control.client import Kube
from kakehashi.control.errors import PermanentError
from kakehashi.delivery.gitops import (
    GitOpsPublisher,
    Proposal,
    Published,
    Target,
    classify_failure,
    default_checkout,
    render_directory,
)
from kakehashi.serving import render
from kakehashi.serving.render import Release
from kakehashi.serving.status import Observed, Problem, ResolvedModel
from kakehashi.settings import OperatorSettings

T = TypeVar("T")
Io = Callable[..., Awaitable[Any]]
TOKEN_KEY: Final = "token"


def publisher_from(settings: OperatorSettings) -> GitOpsPublisher:
    name, _, email = settings.gitops_author.partition("<")
    return GitOpsPublisher(
        api_url=settings.gitops_api_url,
        checkout=settings.gitops_checkout or default_checkout(),
        author=(name.strip() or "kakehashi", email.rstrip(">").strip() or "kakehashi@localhost"),
    )


def proposal(ms: ModelService, release: Release, canary: Release | None, model: ResolvedModel | None,
             rollback: bool) -> Proposal:
    lineage: dict[str, str] = {}
    gate = ""
    if model is not None:
        lineage["model uri"] = model.uri
        if model.source:
            lineage["training code"] = model.source
        if model.revision:
            lineage["commit"] = model.revision
        gate = (f"overridden: {model.gate_override}" if model.gate_override else
                f"passed: {model.gate}" if model.gate else "passed")
    elif rollback:
        gate = "not evaluated: a rollback to an image that served before"
    return Proposal(
        namespace=ms.namespace, service=ms.name, image=release.image, model_digest=release.model_digest,
        training_run=model.training_run if model else None, metrics=dict(model.metrics) if model else {},
        gate=gate, lineage=lineage, rollback=rollback, canary_image=canary.image if canary else None,
    )


class GitOpsDelivery:
    def __init__(self, settings: OperatorSettings, publisher: GitOpsPublisher | None = None) -> None:
        self.settings = settings
        self.publisher = publisher or publisher_from(settings)

    def _target(self, ms: ModelService) -> Target:
        spec = ms.spec.delivery.gitops
        assert spec is not None
        return Target(repository=spec.repository, base_branch=spec.base_branch, path=spec.path,
                      clone_url=self.settings.gitops_clone_url.format(repository=spec.repository))

    async def _token(self, io: Io, kube: Kube, ms: ModelService) -> str | None:
        secret = await io(kube.read_secret, ms.namespace, self.settings.gitops_token_secret)
        token = (secret.data if secret else {}).get(TOKEN_KEY)
        return str(token) if token else None

    async def withdraw(self, io: Io, kube: Kube, ms: ModelService) -> str | None:
        """The service is being deleted: close its open pull request, so a later `/deploy`
        cannot bring back what was deleted. What was merged stays: removing a running service
        from the GitOps repository is a reviewed change of its own. Returns why it could not
        (the finalizer lets go anyway: a PR left open is no reason to keep a deleted object)."""
        pr = ms.status.pull_request
        if pr is None or pr.state != "open" or ms.spec.delivery.gitops is None:
            return None
        token = await self._token(io, kube, ms)
        if not token:
            return f"Secret {self.settings.gitops_token_secret} is gone: close pull request #{pr.number} by hand"
        try:
            await io(self.publisher.close, self._target(ms), pr.number, token)
        except Exception as error:
            kind = classify_failure(error, token)
            if isinstance(kind, PermanentError):
                return f"pull request #{pr.number} was not closed: {kind}"
            raise kind from None
        return None

    async def deliver(self, io: Io, kube: Kube, ms: ModelService, release: Release, canary: Release | None,
                      model: ResolvedModel | None, rollback: bool, base: Observed) -> Observed:
        spec = ms.spec.delivery.gitops
        assert spec is not None
        token = await self._token(io, kube, ms)
        if not token:
            # The Secret may be created next: say so (its name only) and come back.
            return replace(base, delivery_problem=Problem(
                "GitOpsTokenMissing", f"Secret {self.settings.gitops_token_secret} with key {TOKEN_KEY} "
                "(a token that may push to and open pull requests in the GitOps repository) does not exist"))
        try:
            files = render_directory(render.render(ms, release, spec.namespace, canary), spec.namespace,
                                     owner=f"{ms.namespace}/{ms.name}")
        except ValueError as error:
            return replace(base, delivery_problem=Problem("NotPinned", str(error)))
        try:
            published: Published = await io(self.publisher.publish, self._target(ms), proposal(ms, release, canary, model, rollback),
                                             files, token)
        except Exception as error:
            kind = classify_failure(error, token)
            if isinstance(kind, PermanentError):
                return replace(base, delivery_problem=Problem(kind.reason, str(kind)))
            raise kind from None  # `from None`: the original may hold what the token guarded
        if published.pull_request is None:
            previous = ms.status.pull_request
            number, url = (previous.number, previous.url) if previous else (0, "")
            pr = PullRequestRef(number=number, url=url, headSha=published.base_sha, state="merged", image=release.image)
        else:
            ref = published.pull_request
            pr = PullRequestRef(number=ref.number, url=ref.url, headSha=ref.head_sha, state=ref.state, image=release.image)
        return replace(base, pull_request=pr)
