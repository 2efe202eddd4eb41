"""The GitHub REST calls the bot makes, through githubkit (typed requests, async on httpx).

One small class so the bot's rules read in its own terms (a pull request's head, its reviews,
a commenter's role) and so the set of endpoints used is short and known: the test stand-in
serves exactly these, checked against GitHub's OpenAPI description.

Answers are read into the bot's own small pydantic models (`_Pull`, `_Review`, ...) rather than
githubkit's `parsed_data`: githubkit validates every field of its schema version (githubkit-schemas
is not pinned by githubkit), so a field the bot never reads, added or renamed on either side
(`labels[].archived_by` is one), would fail a deploy. The bot breaks only on what it reads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

from githubkit import GitHub
from githubkit.exception import RequestFailed
from pydantic import BaseModel, ConfigDict, TypeAdapter

from kakehashi.delivery.github import client

# Roles that may change what runs: GitHub's write and above (maintain maps to write).
WRITE_ROLES: Final = frozenset({"admin", "maintain", "write"})
StatusState = Literal["pending", "success", "failure", "error"]


@dataclass(frozen=True)
class PullRequest:
    number: int
    state: str
    author: str
    head_sha: str
    head_repository: str | None  # owner/name; None when the fork was deleted
    base_repository: str
    base_ref: str
    mergeable: bool | None  # None: GitHub is still computing it
    mergeable_state: str
    merged: bool
    draft: bool

    @property
    def from_fork(self) -> bool:
        return self.head_repository != self.base_repository


@dataclass(frozen=True)
class Review:
    reviewer: str
    state: str  # APPROVED, CHANGES_REQUESTED, COMMENTED, DISMISSED, PENDING
    commit_id: str | None
    submitted_at: datetime | None


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Login(_Answer):
    login: str


class _Repo(_Answer):
    full_name: str


class _Ref(_Answer):
    ref: str
    sha: str
    repo: _Repo | None


class _Pull(_Answer):
    number: int
    state: str
    user: _Login
    head: _Ref
    base: _Ref
    mergeable: bool | None = None
    mergeable_state: str = "unknown"
    merged: bool = False
    draft: bool | None = None


class _Permission(_Answer):
    permission: str
    role_name: str | None = None


class _Review(_Answer):
    user: _Login | None
    state: str
    commit_id: str | None
    submitted_at: datetime | None = None


_REVIEWS: Final = TypeAdapter(list[_Review])


class _Membership(_Answer):
    state: str


class _Merge(_Answer):
    sha: str


class MergeRefused(Exception):
    """GitHub did not merge: not mergeable (405) or the head moved (409, the `sha` guard)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class GitHubApi:
    def __init__(self, token: str, *, base_url: str, timeout_s: float = 10.0) -> None:
        # No HTTP cache (see `client`): an old head SHA is the one thing the bot must never see.
        self._gh: GitHub = client(token, base_url=base_url, timeout_s=timeout_s, user_agent="kakehashi-bot")  # type: ignore[type-arg]

    @asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        """One HTTP client (and its pooled connections) for the calls made inside: without it,
        githubkit opens a client per call, a TLS context and a connection each time."""
        async with self._gh:
            yield

    async def pull_request(self, owner: str, repo: str, number: int) -> PullRequest:
        answer = await self._gh.rest.pulls.async_get(owner, repo, number)
        pr = _Pull.model_validate_json(answer.content)
        head_repo = pr.head.repo.full_name if pr.head.repo else None
        return PullRequest(
            number=pr.number,
            state=pr.state,
            author=pr.user.login,
            head_sha=pr.head.sha,
            head_repository=head_repo,
            base_repository=pr.base.repo.full_name if pr.base.repo else f"{owner}/{repo}",
            base_ref=pr.base.ref,
            mergeable=pr.mergeable,
            mergeable_state=pr.mergeable_state,
            merged=pr.merged,
            draft=bool(pr.draft),
        )

    async def role(self, owner: str, repo: str, user: str) -> str:
        """The commenter's role on the repository ("none" when not a collaborator)."""
        try:
            answer = await self._gh.rest.repos.async_get_collaborator_permission_level(owner, repo, user)
        except RequestFailed as error:
            if error.response.status_code == 404:
                return "none"
            raise
        data = _Permission.model_validate_json(answer.content)
        return data.role_name or data.permission

    async def reviews(self, owner: str, repo: str, number: int) -> list[Review]:
        reviews: list[Review] = []
        page = 1
        while True:
            answer = await self._gh.rest.pulls.async_list_reviews(owner, repo, number, per_page=100, page=page)
            batch = _REVIEWS.validate_json(answer.content)
            for review in batch:
                reviews.append(
                    Review(
                        reviewer=review.user.login if review.user else "",
                        state=review.state,
                        commit_id=review.commit_id,
                        submitted_at=review.submitted_at,
                    )
                )
            if len(batch) < 100:
                return reviews
            page += 1

    async def team_member(self, org: str, team: str, user: str) -> bool:
        try:
            answer = await self._gh.rest.teams.async_get_membership_for_user_in_org(org, team, user)
        except RequestFailed as error:
            if error.response.status_code == 404:
                return False
            raise
        return _Membership.model_validate_json(answer.content).state == "active"

    async def comment(self, owner: str, repo: str, number: int, body: str) -> None:
        # GitHub refuses bodies over 65536 characters: cut, and say so, rather than lose the reply.
        if len(body) > 65_000:
            body = body[:65_000] + "\n\n… (cut: the full text is in the bot's log)"
        await self._gh.rest.issues.async_create_comment(owner, repo, number, body=body)

    async def status(
        self, owner: str, repo: str, sha: str, state: StatusState, context: str, description: str
    ) -> None:
        await self._gh.rest.repos.async_create_commit_status(
            owner, repo, sha, state=state, context=context, description=description[:140]
        )

    async def merge(self, owner: str, repo: str, number: int, sha: str, title: str) -> str:
        """Merge exactly `sha` (GitHub answers 409 if the head moved); the merge commit's SHA."""
        try:
            answer = await self._gh.rest.pulls.async_merge(
                owner, repo, number, sha=sha, merge_method="merge", commit_title=title
            )
        except RequestFailed as error:
            if error.response.status_code in (405, 409, 422):
                raise MergeRefused(error.response.status_code, _message(error)) from None
            raise
        return _Merge.model_validate_json(answer.content).sha


def _message(error: RequestFailed) -> str:
    try:
        return str(error.response.json().get("message", "")) or str(error.response.status_code)
    except ValueError:
        return str(error.response.status_code)
