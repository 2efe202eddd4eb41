"""The part of GitHub's `issue_comment` webhook payload the bot reads, as pydantic models.

Fields not listed are ignored (GitHub adds fields over time); the ones listed are the ones
GitHub documents for the event, so a payload missing one is refused rather than guessed at.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class User(_Model):
    login: str
    type: str = "User"  # "Bot" for apps and bots

    @property
    def is_bot(self) -> bool:
        return self.type == "Bot" or self.login.endswith("[bot]")


class PullRequestLink(_Model):
    url: str


class Issue(_Model):
    number: int
    user: User
    pull_request: PullRequestLink | None = None  # present only when the issue is a pull request


class Comment(_Model):
    id: int
    body: str
    user: User
    html_url: str = ""


class Owner(_Model):
    login: str


class Repository(_Model):
    name: str
    full_name: str
    owner: Owner


class IssueCommentEvent(_Model):
    action: Literal["created", "edited", "deleted"] | str
    issue: Issue
    comment: Comment
    repository: Repository
    sender: User
