"""delivery.mode gitops for the ModelService loop: render the service's kustomize directory,
propose it as the service's pull request, and say what that means for the status.

Kept beside the reconciler so the loop itself only dispatches: the git and HTTP work runs on
the reconciler's worker threads (`io`), and failures are sorted as everywhere in the loop —
GitHub's refusals become a Degraded status with GitHub's words, everything that may pass
(5xx, 429, network, a push that lost a race) is retried with backoff and never recorded.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
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
    proposal_digest,
    render_directory,
)
from kakehashi.serving import render
from kakehashi.serving.render import Release
from kakehashi.serving.status import Observed, Problem, ResolvedModel
from kakehashi.settings import OperatorSettings

T = TypeVar("T")
Io = Callable[..., Awaitable[Any]]
TOKEN_KEY: Final = "token"


@dataclass(frozen=True)
class Withdrawal:
    """What deleting a GitOps service did, for an Event on it."""

    warning: bool
    reason: str
    message: str


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

    async def withdraw(self, io: Io, kube: Kube, ms: ModelService) -> Withdrawal | None:
        """The service is being deleted. What its GitOps user expects is what the repository says
        runs: if the base branch holds the service's directory (a deploy was merged), the
        service's pull request now proposes removing it (an open deploy PR becomes the removal
        PR, else one is opened), and a reviewer's `/deploy` prunes it from production and merges,
        reviewed like every other production change. If nothing of it was merged, its open PR is
        closed, so a later `/deploy` cannot bring back what was deleted.

        The finalizer waits for the pull request to be opened (GitHub's outages are retried), not
        for the review: a deleted object held for a person's review would block its namespace's
        deletion and a new service of the same name, and the PR is the durable record of the
        removal. Returns what to tell the user (an Event: the object is about to go)."""
        spec = ms.spec.delivery.gitops
        if spec is None:
            return None
        pr = ms.status.pull_request
        target = self._target(ms)
        directory = target.directory(ms.name)
        token = await self._token(io, kube, ms)
        if not token:
            return Withdrawal(True, "RemovalNotProposed", f"Secret {self.settings.gitops_token_secret} is gone: "
                              f"remove {directory}/ from {spec.repository} by a pull request by hand"
                              + (f", and close pull request #{pr.number}" if pr and pr.state == "open" else ""))
        try:
            removal = await io(self.publisher.remove, target, ms.namespace, ms.name, token)
            if removal is None and pr is not None and pr.state == "open":
                await io(self.publisher.close, target, pr.number, token)
        except Exception as error:
            kind = classify_failure(error, token)
            if isinstance(kind, PermanentError):
                return Withdrawal(True, "RemovalNotProposed", f"{directory}/ in {spec.repository}: {kind}")
            raise kind from None
        if removal is None:
            if pr is not None and pr.state == "open":
                return Withdrawal(False, "PullRequestClosed", f"pull request #{pr.number} closed: nothing of "
                                  f"{ms.name} was merged into {spec.repository}, so nothing runs to remove")
            return None
        if removal.state == "closed":
            return Withdrawal(True, "RemovalDeclined", f"pull request #{removal.number} removing {directory}/ was "
                              f"closed by a reviewer ({removal.url}): the service keeps running in production")
        return Withdrawal(False, "RemovalProposed", f"pull request #{removal.number} removes {directory}/ from "
                          f"{spec.base_branch} ({removal.url}): comment /deploy <env> there to delete the service "
                          "from production")

    async def _unchanged(self, io: Io, ms: ModelService, target: Target, digest: str,
                         token: str) -> PullRequestRef | None:
        """The pull request's state when this proposal was published already, read through the
        API alone (no fetch, no push); None when the repository must be looked at: the proposal
        changed, or someone moved the PR's branch."""
        previous = ms.status.pull_request
        if previous is None or previous.proposal != digest:
            return None
        if previous.state == "merged":
            return previous  # the base branch holds exactly this proposal: nothing to read
        try:
            now = await io(self.publisher.pull_request_now, target, previous.number, token)
        except Exception as error:
            kind = classify_failure(error, token)
            if isinstance(kind, PermanentError):
                return None  # e.g. the PR was deleted (404): propose again
            raise kind from None
        if now.head_sha != previous.head_sha:
            return None
        if now.state == "merged":
            return previous.model_copy(update={"state": "merged", "head_sha": now.merge_sha or previous.head_sha})
        return previous.model_copy(update={"state": now.state})

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
        target, wanted = self._target(ms), proposal(ms, release, canary, model, rollback)
        digest = proposal_digest(target, wanted, files)
        # A resync of a service whose proposal is unchanged reads the PR's state, not the repository.
        known = await self._unchanged(io, ms, target, digest, token)
        if known is not None:
            return replace(base, pull_request=known)
        try:
            published: Published = await io(self.publisher.publish, target, wanted, files, token)
        except Exception as error:
            kind = classify_failure(error, token)
            if isinstance(kind, PermanentError):
                return replace(base, delivery_problem=Problem(kind.reason, str(kind)))
            raise kind from None  # `from None`: the original may hold what the token guarded
        if published.pull_request is None:
            previous = ms.status.pull_request
            number, url = (previous.number, previous.url) if previous else (0, "")
            pr = PullRequestRef(number=number, url=url, headSha=published.base_sha, state="merged",
                                image=release.image, proposal=digest)
        else:
            ref = published.pull_request
            pr = PullRequestRef(number=ref.number, url=ref.url, headSha=ref.head_sha, state=ref.state,
                                image=release.image, proposal=digest)
        return replace(base, pull_request=pr)
