"""The stand-in: GitHub's REST endpoints the bot uses, over real HTTP on 127.0.0.1.

Every request is matched to an operation of the vendored OpenAPI subset and validated
(path and query parameters, body); every answer is validated before it is sent. A request
that fails validation is answered 422 and recorded in `violations`, which the tests' fixture
asserts is empty: the bot cannot pass a test by calling GitHub in a way GitHub would not accept.
Answers are built from GitHub's own examples in the description, with the state the test set.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from github_standin.openapi import Operation, Spec


class MergeConflict(Exception):
    pass


NOT_FOUND = {"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}


@dataclass
class PullRequestState:
    number: int
    author: str
    head_sha: str
    head_ref: str
    base_ref: str = "main"
    head_repository: str | None = None  # None: the base repository itself (no fork)
    mergeable: bool | None = True
    mergeable_state: str = "clean"
    state: str = "open"
    merged: bool = False
    merge_commit_sha: str | None = None
    title: str = "Update"
    body: str | None = None
    # Opened through the API (GitOps delivery): the head follows the branch, as on GitHub,
    # and refs/pull/N/head with it.
    follows_branch: bool = False


@dataclass
class ReviewState:
    reviewer: str
    state: str
    commit_id: str


@dataclass
class GitHubState:
    owner: str
    repo: str
    token: str
    bot_login: str = "kakehashi-bot[bot]"
    roles: dict[str, str] = field(default_factory=dict)  # login -> admin/maintain/write/triage/read
    teams: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    pulls: dict[int, PullRequestState] = field(default_factory=dict)
    reviews: dict[int, list[ReviewState]] = field(default_factory=dict)
    comments: list[tuple[int, str]] = field(default_factory=list)
    statuses: list[tuple[str, str, str, str]] = field(default_factory=list)  # sha, state, context, description
    merges: list[tuple[int, str]] = field(default_factory=list)
    requests: list[tuple[str, str, int]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    # Called with the PR before each GET of it: a test moves the head "while the bot waits".
    on_pull_read: Callable[[PullRequestState], None] | None = None
    git_dir: Path | None = None  # the GitOps repository (bare): a merge really merges there
    # Branch protection: status contexts that must be "success" on the head for a merge.
    required_contexts: set[str] = field(default_factory=set)

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.repo}"


class StandIn:
    def __init__(self, state: GitHubState, spec: Spec | None = None) -> None:
        self.state = state
        self.spec = spec or Spec()
        self.lock = threading.Lock()
        self._ids = iter(range(1_000_000, 10_000_000))
        self.app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])])
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # ---- serving ----------------------------------------------------------------------------

    def start(self) -> StandIn:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", ws="none")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the GitHub stand-in did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)

    async def _handle(self, request: Request) -> Response:
        raw = await request.body()
        path = request.url.path
        found = self.spec.match(request.method, path)
        if found is None:
            return self._refuse(request.method, path, f"{request.method} {path} is no operation of the subset")
        operation, params = found
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return self._refuse(request.method, path, "request body is not JSON")
        errors = self.spec.check_request(operation, params, dict(request.query_params), body)
        if request.headers.get("authorization", "").split(" ", 1)[-1] != self.state.token:
            status, answer = 401, {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"}
            errors = []  # a 401 is what GitHub answers first; it is not documented per operation
            with self.lock:
                self.state.requests.append((request.method, path, status))
            return JSONResponse(answer, status_code=status)
        if errors:
            return self._refuse(request.method, path, "; ".join(errors))
        with self.lock:
            status, answer = self._answer(operation, params, dict(request.query_params), body)
            self.state.requests.append((request.method, path, status))
        response_errors = self.spec.check_response(operation, status, answer)
        if response_errors:
            # The stand-in itself broke the contract: a test bug, but never a silent one.
            return self._refuse(request.method, path, "stand-in answer: " + "; ".join(response_errors[:5]))
        return JSONResponse(answer, status_code=status) if answer is not None else Response(status_code=status)

    def _refuse(self, method: str, path: str, message: str) -> JSONResponse:
        with self.lock:
            self.state.violations.append(f"{method} {path}: {message}")
            self.state.requests.append((method, path, 422))
        return JSONResponse({"message": f"stand-in: {message}"}, status_code=422)

    # ---- the endpoints ----------------------------------------------------------------------

    def _answer(
        self, operation: Operation, params: dict[str, str], query: dict[str, str], body: Any
    ) -> tuple[int, Any]:
        state = self.state
        if params.get("owner", state.owner) != state.owner or params.get("repo", state.repo) != state.repo:
            return 404, NOT_FOUND
        key = (operation.method, operation.template)
        for pr in state.pulls.values():
            self._follow(pr)
        if key == ("get", "/repos/{owner}/{repo}/pulls"):
            wanted_state = query.get("state", "open")
            head = query.get("head")
            found = [pr for number, pr in sorted(state.pulls.items(), reverse=query.get("direction") == "desc")
                     if wanted_state in ("all", pr.state)
                     and (head is None or head == f"{(pr.head_repository or state.full_name).split('/')[0]}:{pr.head_ref}")
                     and query.get("base", pr.base_ref) == pr.base_ref]
            return 200, [self._pull_simple(operation, pr) for pr in found]
        if key == ("post", "/repos/{owner}/{repo}/pulls"):
            head_ref = body["head"].split(":")[-1]
            sha = self._rev(f"refs/heads/{head_ref}")
            if sha is None or self._rev(f"refs/heads/{body['base']}") is None:
                return 422, {"message": "Validation Failed", "documentation_url": "https://docs.github.com/rest",
                             "errors": [{"resource": "PullRequest", "field": "head", "code": "invalid"}]}
            if any(pr.head_ref == head_ref and pr.state == "open" for pr in state.pulls.values()):
                return 422, {"message": f"A pull request already exists for {state.owner}:{head_ref}.",
                             "documentation_url": "https://docs.github.com/rest"}
            number = max(state.pulls, default=0) + 1
            pr = PullRequestState(number=number, author=state.bot_login, head_sha=sha, head_ref=head_ref,
                                  base_ref=body["base"], title=body.get("title") or head_ref, body=body.get("body"),
                                  follows_branch=True)
            state.pulls[number] = pr
            self._follow(pr)
            return 201, self._pull(self.spec.match("GET", f"/repos/{state.owner}/{state.repo}/pulls/1")[0], pr)  # type: ignore[index]
        if key == ("patch", "/repos/{owner}/{repo}/pulls/{pull_number}"):
            pr = state.pulls.get(int(params["pull_number"]))
            if pr is None:
                return 404, NOT_FOUND
            pr.title = (body or {}).get("title", pr.title)
            pr.body = (body or {}).get("body", pr.body)
            pr.state = (body or {}).get("state", pr.state)
            return 200, self._pull(operation, pr)
        if key == ("get", "/repos/{owner}/{repo}/pulls/{pull_number}"):
            pr = state.pulls.get(int(params["pull_number"]))
            if pr is None:
                return 404, NOT_FOUND
            if state.on_pull_read is not None:
                state.on_pull_read(pr)
            return 200, self._pull(operation, pr)
        if key == ("get", "/repos/{owner}/{repo}/collaborators/{username}/permission"):
            role = state.roles.get(params["username"])
            if role is None:
                return 404, NOT_FOUND
            answer = self.spec.example(operation, 200)
            legacy = {"maintain": "write", "triage": "read"}.get(role, role)
            answer |= {"permission": legacy, "role_name": role}
            answer["user"] |= {"login": params["username"], "role_name": role}
            return 200, answer
        if key == ("get", "/repos/{owner}/{repo}/pulls/{pull_number}/reviews"):
            number = int(params["pull_number"])
            if number not in state.pulls:
                return 404, NOT_FOUND
            per_page, page = int(query.get("per_page", 30)), int(query.get("page", 1))
            reviews = state.reviews.get(number, [])[(page - 1) * per_page : page * per_page]
            template = self.spec.example(operation, 200)[0]
            items = []
            for review in reviews:
                item = json.loads(json.dumps(template))
                item |= {"id": next(self._ids), "state": review.state, "commit_id": review.commit_id}
                item["user"]["login"] = review.reviewer
                items.append(item)
            return 200, items
        if key == ("post", "/repos/{owner}/{repo}/issues/{issue_number}/comments"):
            number = int(params["issue_number"])
            if number not in state.pulls:
                return 404, NOT_FOUND
            state.comments.append((number, body["body"]))
            answer = self.spec.example(operation, 201)
            answer |= {"id": next(self._ids), "body": body["body"]}
            answer["user"]["login"] = state.bot_login
            answer["user"]["type"] = "Bot"
            return 201, answer
        if key == ("post", "/repos/{owner}/{repo}/statuses/{sha}"):
            state.statuses.append((params["sha"], body["state"], body.get("context", "default"), body.get("description", "")))
            answer = self.spec.example(operation, 201)
            answer |= {"state": body["state"], "context": body.get("context", "default"),
                       "description": body.get("description"), "id": next(self._ids)}
            return 201, answer
        if key == ("put", "/repos/{owner}/{repo}/pulls/{pull_number}/merge"):
            pr = state.pulls.get(int(params["pull_number"]))
            if pr is None:
                return 404, NOT_FOUND
            if pr.merged or pr.mergeable is not True:
                return 405, {"message": "Pull Request is not mergeable", "documentation_url": "https://docs.github.com/rest"}
            latest = {c: st for sha, st, c, _ in state.statuses if sha == pr.head_sha}
            missing = sorted(c for c in state.required_contexts if latest.get(c) != "success")
            if missing:
                return 405, {"message": f"Required status check \"{missing[0]}\" is expected.",
                             "documentation_url": "https://docs.github.com/rest"}
            if body and body.get("sha") not in (None, pr.head_sha):
                return 409, {"message": "Head branch was modified. Review and try the merge again.",
                             "documentation_url": "https://docs.github.com/rest"}
            try:
                merged = self._git_merge(pr, (body or {}).get("commit_title") or f"Merge pull request #{pr.number}")
            except MergeConflict:
                pr.mergeable, pr.mergeable_state = False, "dirty"
                return 405, {"message": "Merge conflict", "documentation_url": "https://docs.github.com/rest"}
            pr.merged, pr.state, pr.merge_commit_sha = True, "closed", merged
            state.merges.append((pr.number, pr.head_sha))
            answer = self.spec.example(operation, 200)
            answer |= {"sha": merged, "merged": True, "message": "Pull Request successfully merged"}
            return 200, answer
        if key == ("get", "/orgs/{org}/teams/{team_slug}/memberships/{username}"):
            members = state.teams.get((params["org"], params["team_slug"]))
            if members is None or params["username"] not in members:
                return 404, None  # documented without a body: "if user has no team membership"
            answer = self.spec.example(operation, 200)
            answer |= {"state": "active", "role": "member"}
            return 200, answer
        return 404, NOT_FOUND

    def _follow(self, pr: PullRequestState) -> None:
        if not pr.follows_branch or pr.state != "open" or self.state.git_dir is None:
            return
        sha = self._rev(f"refs/heads/{pr.head_ref}")
        if sha is not None and sha != pr.head_sha:
            pr.head_sha = sha
        if sha is not None and self._rev(f"refs/pull/{pr.number}/head") != sha:
            subprocess.run(["git", "--git-dir", str(self.state.git_dir), "update-ref", f"refs/pull/{pr.number}/head", sha],
                           check=True)

    def _pull_simple(self, operation: Operation, pr: PullRequestState) -> dict[str, Any]:
        """An item of the pull request list: the list example, with this PR's state."""
        state = self.state
        answer: dict[str, Any] = self.spec.example(operation, 200)[0]
        answer["requested_teams"] = []
        answer |= {"number": pr.number, "state": pr.state, "title": pr.title, "body": pr.body, "draft": False,
                   "merge_commit_sha": pr.merge_commit_sha, "merged_at": "2026-11-27T00:00:00Z" if pr.merged else None,
                   "html_url": f"https://github.com/{state.full_name}/pull/{pr.number}"}
        answer["user"]["login"] = pr.author
        head_repo = pr.head_repository or state.full_name
        answer["head"] |= {"sha": pr.head_sha, "ref": pr.head_ref, "label": f"{head_repo.split('/')[0]}:{pr.head_ref}"}
        answer["base"] |= {"ref": pr.base_ref, "sha": self._rev(f"refs/heads/{pr.base_ref}") or answer["base"]["sha"]}
        return answer

    def _pull(self, operation: Operation, pr: PullRequestState) -> dict[str, Any]:
        state = self.state
        answer: dict[str, Any] = self.spec.example(operation, 200)
        answer |= {"title": pr.title, "body": pr.body,
                   "html_url": f"https://github.com/{state.full_name}/pull/{pr.number}"}
        # The example's teams lack `type`, which the schema requires: the stand-in answers
        # what the description says GitHub answers.
        answer["requested_teams"] = []
        answer |= {
            "number": pr.number, "state": pr.state, "merged": pr.merged, "draft": False,
            "mergeable": pr.mergeable, "mergeable_state": pr.mergeable_state,
            "merge_commit_sha": pr.merge_commit_sha, "merged_at": "2026-11-27T00:00:00Z" if pr.merged else None,
            "closed_at": "2026-11-27T00:00:00Z" if pr.state == "closed" else None,
        }
        answer["user"]["login"] = pr.author
        head_repo = pr.head_repository or state.full_name
        answer["head"] |= {"sha": pr.head_sha, "ref": pr.head_ref, "label": f"{head_repo.split('/')[0]}:{pr.head_ref}"}
        answer["head"]["repo"] |= {"full_name": head_repo, "name": head_repo.split("/")[1],
                                   "fork": head_repo != state.full_name}
        answer["head"]["repo"]["owner"]["login"] = head_repo.split("/")[0]
        base_sha = self._rev(f"refs/heads/{pr.base_ref}") or answer["base"]["sha"]
        answer["base"] |= {"ref": pr.base_ref, "sha": base_sha}
        answer["base"]["repo"] |= {"full_name": state.full_name, "name": state.repo, "fork": False}
        answer["base"]["repo"]["owner"]["login"] = state.owner
        return answer

    # ---- the git side of a merge ------------------------------------------------------------

    def _rev(self, ref: str) -> str | None:
        if self.state.git_dir is None:
            return None
        done = subprocess.run(["git", "--git-dir", str(self.state.git_dir), "rev-parse", "--verify", "-q", ref],
                              capture_output=True, text=True)
        return done.stdout.strip() or None

    def _git_merge(self, pr: PullRequestState, title: str) -> str:
        """A real merge commit on the base branch, as GitHub's "merge" method makes."""
        if self.state.git_dir is None:
            return "0" * 40
        git = ["git", "--git-dir", str(self.state.git_dir)]
        base = self._rev(f"refs/heads/{pr.base_ref}")
        assert base is not None
        done = subprocess.run([*git, "merge-tree", "--write-tree", base, pr.head_sha], capture_output=True, text=True)
        if done.returncode == 1:
            raise MergeConflict(done.stdout)
        done.check_returncode()
        tree = done.stdout.split()[0]
        env = {"GIT_AUTHOR_NAME": "GitHub", "GIT_AUTHOR_EMAIL": "noreply@github.com",
               "GIT_COMMITTER_NAME": "GitHub", "GIT_COMMITTER_EMAIL": "noreply@github.com", "PATH": "/usr/bin:/bin"}
        commit = subprocess.run([*git, "commit-tree", tree, "-p", base, "-p", pr.head_sha, "-m", title],
                                capture_output=True, text=True, check=True, env=env).stdout.strip()
        subprocess.run([*git, "update-ref", f"refs/heads/{pr.base_ref}", commit, base], check=True)
        return commit
