"""GitOps delivery: propose the production deploy as a pull request in the GitOps repository.

Two halves. The pure one renders a service's kustomize directory (kustomization.yaml and one
file per object, deterministic YAML, every image pinned by digest) and the pull request's text
(metrics, gate, lineage, image digest, and the diff against the base branch: what runs now,
since the bot merges a PR only after rolling it out). The thin one does the git and HTTP work
(blocking: the reconciler calls it from a thread): fetch the base branch, commit the directory
on one branch per service, push, and open the pull request or update the open one found by its
head branch — so a newer model moves the same PR forward and a second is never opened.

The token reaches git through its environment and GitHub through githubkit's header; it is
never in a URL, a command line, an exception message, a log line or a status.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import subprocess
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import yaml
from githubkit.exception import RequestFailed
from pydantic import BaseModel, ConfigDict, TypeAdapter

from kakehashi.control.errors import PermanentError, TemporaryError
from kakehashi.delivery.github import client, git_environment

KUSTOMIZATION: Final = "kustomization.yaml"
PINNED: Final = re.compile(r"^[^@\s]+@sha256:[0-9a-f]{64}$")
# GitHub refuses a body over 65536 characters; the diff is cut well before, and says so.
MAX_DIFF_CHARS: Final = 50_000
MARKER: Final = "<!-- kakehashi:modelservice {namespace}/{name} -->"
# First line of kustomization.yaml: which ModelService the directory belongs to, so a service of
# the same name in another namespace cannot overwrite it through its own pull request.
OWNER_LINE: Final = "# kakehashi: ModelService {owner}; its next proposal replaces edits made here\n"
_OWNER: Final = re.compile(r"^# kakehashi: ModelService (\S+?);")


# ---- the pure half ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proposal:
    """What the pull request proposes: one service's model and image, and why it may go."""

    namespace: str  # the ModelService's (learning cluster)
    service: str
    image: str  # repository@sha256:..., what production will run
    model_digest: str
    training_run: str | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    gate: str = ""  # the gate's result in words (passed, or overridden and why)
    lineage: Mapping[str, str] = field(default_factory=dict)  # model uri, code source, commit, ...
    rollback: bool = False
    canary_image: str | None = None

    @property
    def branch(self) -> str:
        return branch_of(self.namespace, self.service)


def branch_of(namespace: str, service: str) -> str:
    """One branch per service: its PR (deploys, then its removal) is found again by this head branch."""
    return f"kakehashi/{namespace}/{service}"


def _images(obj: Mapping[str, Any]) -> list[str]:
    pod = (obj.get("spec") or {}).get("template", {}).get("spec") or {}
    return [c.get("image", "") for key in ("initContainers", "containers") for c in pod.get(key) or []]


def _dump(obj: Any) -> str:
    # Sorted keys, block style, no aliases, wide lines: the same objects give the same bytes,
    # so an unchanged service makes no commit and a changed one a readable diff.
    class _NoAliases(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    return yaml.dump(obj, Dumper=_NoAliases, sort_keys=True, default_flow_style=False, width=4096, allow_unicode=True)


def owner_of(files: Mapping[str, str]) -> str | None:
    """namespace/name of the ModelService a directory was proposed by; None if hand-written."""
    found = _OWNER.match(files.get(KUSTOMIZATION, ""))
    return found.group(1) if found else None


def render_directory(objects: list[dict[str, Any]], namespace: str, owner: str | None = None) -> dict[str, str]:
    """The service's kustomize directory: file name -> text. Refuses an image not pinned by
    digest: a tag can move under a merged PR, a digest cannot."""
    files: dict[str, str] = {}
    for obj in objects:
        for image in _images(obj):
            if not PINNED.match(image):
                raise ValueError(f"{obj['kind']}/{obj['metadata']['name']}: image {image!r} is not pinned by digest")
        name = f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
        if name in files or name == KUSTOMIZATION:
            raise ValueError(f"two objects would be written to {name}")
        files[name] = _dump(obj)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": namespace,
        "resources": sorted(files),
    }
    files[KUSTOMIZATION] = (OWNER_LINE.format(owner=owner) if owner else "") + _dump(kustomization)
    return dict(sorted(files.items()))


def diff(directory: str, before: Mapping[str, str], after: Mapping[str, str]) -> str:
    """A unified diff of the directory from what the base branch holds to what is proposed."""
    chunks: list[str] = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        chunks.extend(difflib.unified_diff(
            (old or "").splitlines(keepends=True), (new or "").splitlines(keepends=True),
            fromfile=f"a/{directory}/{name}" if old is not None else "/dev/null",
            tofile=f"b/{directory}/{name}" if new is not None else "/dev/null",
        ))
    text = "".join(line if line.endswith("\n") else line + "\n" for line in chunks)
    if len(text) > MAX_DIFF_CHARS:
        text = text[:MAX_DIFF_CHARS] + f"\n… (cut at {MAX_DIFF_CHARS} characters: the PR's files are complete)\n"
    return text


def title(proposal: Proposal) -> str:
    verb = "Roll back" if proposal.rollback else "Deploy"
    return f"{verb} {proposal.service}: model {proposal.model_digest[:19]}"


def body(proposal: Proposal, directory: str, base_branch: str, changes: str) -> str:
    """The pull request's description: everything a reviewer weighs before `/deploy`."""
    p = proposal
    lines = [
        MARKER.format(namespace=p.namespace, name=p.service),
        f"## {title(p)}",
        "",
        f"ModelService `{p.namespace}/{p.service}` proposes this deploy"
        + (" (a rollback to an earlier image, not baked again)." if p.rollback else "."),
        "",
        "| | |",
        "| --- | --- |",
        f"| image | `{p.image}` |",
        f"| model digest | `{p.model_digest}` |",
    ]
    if p.canary_image:
        lines.append(f"| canary image | `{p.canary_image}` |")
    if p.training_run:
        lines.append(f"| TrainingRun | `{p.training_run}` |")
    lines.append(f"| gate | {_cell(p.gate) or 'not recorded'} |")
    lines += ["", "### Metrics", ""]
    if p.metrics:
        lines += ["| metric | value |", "| --- | --- |"]
        lines += [f"| {_cell(name)} | {value:g} |" for name, value in sorted(p.metrics.items())]
    else:
        lines.append("No metrics were recorded for this model.")
    lines += ["", "### Lineage", ""]
    if p.lineage:
        lines += [f"- {_cell(key)}: `{_cell(value)}`" for key, value in sorted(p.lineage.items())]
    else:
        lines.append("No lineage was recorded for this model.")
    lines += ["", f"### Diff against `{base_branch}` (what runs now)", ""]
    if changes:
        lines += ["```diff", changes.rstrip("\n"), "```"]
    else:
        lines.append(f"`{directory}/` on `{base_branch}` already holds exactly these files.")
    lines += ["", "Comment `/deploy <env>` to roll it out; the bot merges once it is ready."]
    return "\n".join(lines) + "\n"


def removal_title(service: str) -> str:
    return f"Remove {service}"


def removal_body(namespace: str, service: str, directory: str, base_branch: str, changes: str) -> str:
    """The pull request removing a deleted ModelService's directory: `/deploy` prunes it."""
    lines = [
        MARKER.format(namespace=namespace, name=service),
        f"## {removal_title(service)}",
        "",
        f"ModelService `{namespace}/{service}` was deleted. This removes `{directory}/` from "
        f"`{base_branch}`: `/deploy <env>` deletes its objects from production (the bot prunes what "
        "the pull request removes), then merges. Close it to keep the service running without its "
        "ModelService.",
        "",
        f"### Diff against `{base_branch}` (what runs now)",
        "",
        "```diff", changes.rstrip("\n"), "```",
    ]
    return "\n".join(lines) + "\n"


def proposal_digest(target: Target, proposal: Proposal, files: Mapping[str, str]) -> str:
    """What a resync compares with the last proposal before touching the repository: where it
    goes, the files and the pull request's own text (the body without its diff, which depends
    on the base branch, not on the proposal)."""
    content = {"target": [target.repository, target.base_branch, target.directory(proposal.service)],
               "files": dict(files), "title": title(proposal), "body": body(proposal, "", "", "")}
    return "sha256:" + hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _cell(text: object) -> str:
    # A metric name or lineage value is data: keep it from breaking the table or the fence.
    return str(text).replace("|", "\\|").replace("`", "'").replace("\n", " ")


# ---- the thin half: git and GitHub ------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where a service's directory goes."""

    repository: str  # owner/name on GitHub
    clone_url: str  # https URL (or a local path, in tests)
    base_branch: str
    path: str  # the directory holding one kustomize directory per service

    def directory(self, service: str) -> str:
        return f"{self.path.strip('/')}/{service}" if self.path.strip("/") else service


@dataclass(frozen=True)
class PullRequestRef:
    number: int
    url: str
    head_sha: str
    # closed: a reviewer closed it unmerged with exactly this proposal at its head (declined);
    # it is not reopened nor proposed again until the proposal changes.
    state: Literal["open", "closed"] = "open"


@dataclass(frozen=True)
class Published:
    """The outcome: an open PR proposing the files, or the base branch already holds them
    (the PR was merged after `/deploy` rolled it out), with the base branch's commit."""

    pull_request: PullRequestRef | None
    in_base: bool
    base_sha: str
    changed: bool = False  # a new commit was pushed or a PR opened


@dataclass(frozen=True)
class PullRequestNow:
    """A pull request's state as GitHub has it now (one API call, no git)."""

    state: Literal["open", "closed", "merged"]
    head_sha: str
    merge_sha: str | None = None


class GitFailed(Exception):
    """git failed; the message is git's stderr, which never holds the token (see git_environment)."""


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Head(_Answer):
    ref: str
    sha: str


class _Pull(_Answer):
    number: int
    html_url: str
    title: str
    state: str = "open"
    body: str | None = None
    merged_at: str | None = None
    head: _Head


class _PullDetail(_Pull):
    merged: bool = False
    merge_commit_sha: str | None = None


_PULLS: Final = TypeAdapter(list[_Pull])


class GitOpsPublisher:
    """Commits and proposes through one clone per repository (blocking: run it in a thread)."""

    def __init__(self, *, api_url: str, checkout: Path, author: tuple[str, str],
                 timeout_s: float = 30.0) -> None:
        self.api_url = api_url
        self.checkout = checkout
        self.author = author
        self.timeout_s = timeout_s
        # One proposal at a time per repository: fetches into one clone fight over ref locks,
        # and two services' pushes are independent branches anyway.
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, target: Target) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(target.repository, threading.Lock())

    # -- git ------------------------------------------------------------------------------------

    def _git(self, repo: Path, env: Mapping[str, str], *args: str, stdin: str | None = None,
             index: Path | None = None, check: bool = True) -> str:
        environment = dict(env)
        if index is not None:
            environment["GIT_INDEX_FILE"] = str(index)
        name, email = self.author
        environment |= {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email,
                        "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email}
        try:
            done = subprocess.run(["git", "--git-dir", str(repo), *args], input=stdin, capture_output=True,
                                  text=True, env=environment, timeout=self.timeout_s)
        except subprocess.TimeoutExpired as error:
            raise GitFailed(f"git {args[0]} timed out after {self.timeout_s:g} s") from error
        if check and done.returncode != 0:
            raise GitFailed(f"git {args[0]} failed: {done.stderr.strip()[-500:]}")
        return done.stdout

    def _repository(self, target: Target, env: Mapping[str, str]) -> Path:
        repo = self.checkout / (target.repository.replace("/", "+") + ".git")
        if not (repo / "HEAD").exists():
            repo.mkdir(parents=True, exist_ok=True)
            self._git(repo, env, "init", "--bare", "--quiet")
        return repo

    def _files(self, repo: Path, env: Mapping[str, str], ref: str, directory: str) -> dict[str, str]:
        listed = self._git(repo, env, "ls-tree", "-r", "--name-only", ref, "--", directory + "/")
        prefix = directory + "/"
        return {line[len(prefix):]: self._git(repo, env, "show", f"{ref}:{line}")
                for line in listed.splitlines() if line.startswith(prefix)}

    def read(self, target: Target, service: str, token: str | None) -> tuple[str, dict[str, str]]:
        """Fetch the base branch; its commit and the service's files there (what runs now)."""
        env = git_environment(target.clone_url, token)
        repo = self._repository(target, env)
        base = f"refs/remotes/origin/{target.base_branch}"
        self._git(repo, env, "fetch", "--quiet", "--no-tags", "--force", target.clone_url,
                  f"+refs/heads/{target.base_branch}:{base}")
        sha = self._git(repo, env, "rev-parse", base).strip()
        return sha, self._files(repo, env, base, target.directory(service))

    def _commit(self, repo: Path, env: Mapping[str, str], base_sha: str, directory: str,
                files: Mapping[str, str], message: str) -> tuple[str, str]:
        """The base tree with `directory` replaced by `files`; (tree, commit) without a work tree."""
        with tempfile.TemporaryDirectory() as tmp:
            index = Path(tmp) / "index"
            self._git(repo, env, "read-tree", base_sha, index=index)
            self._git(repo, env, "rm", "--cached", "-r", "-q", "--ignore-unmatch", "--", directory, index=index)
            for name, text in files.items():
                blob = self._git(repo, env, "hash-object", "-w", "--stdin", stdin=text).strip()
                self._git(repo, env, "update-index", "--add", "--cacheinfo", f"100644,{blob},{directory}/{name}",
                          index=index)
            tree = self._git(repo, env, "write-tree", index=index).strip()
        commit = self._git(repo, env, "commit-tree", tree, "-p", base_sha, "-m", message).strip()
        return tree, commit

    # -- the whole proposal ----------------------------------------------------------------------

    def publish(self, target: Target, proposal: Proposal, files: Mapping[str, str], token: str) -> Published:
        with self._lock(target):
            return self._publish(target, proposal, files, token)

    def _publish(self, target: Target, proposal: Proposal, files: Mapping[str, str], token: str) -> Published:
        env = git_environment(target.clone_url, token)
        directory = target.directory(proposal.service)
        base_sha, current = self.read(target, proposal.service, token)
        owner, me = owner_of(current), f"{proposal.namespace}/{proposal.service}"
        if owner is not None and owner != me:
            raise PermanentError(f"{directory}/ on {target.base_branch} belongs to ModelService {owner}: "
                                 "rename this service or give it another delivery.gitops.path",
                                 reason="DirectoryTaken")
        if dict(current) == dict(files):
            return Published(pull_request=None, in_base=True, base_sha=base_sha)
        text = body(proposal, directory, target.base_branch, diff(directory, current, files))
        ref, changed = self._propose(target, env, proposal.branch, base_sha, directory, files,
                                     title(proposal), text, token)
        return Published(pull_request=ref, in_base=False, base_sha=base_sha, changed=changed)

    def _propose(self, target: Target, env: Mapping[str, str], branch: str, base_sha: str, directory: str,
                 files: Mapping[str, str], title_: str, text: str, token: str) -> tuple[PullRequestRef, bool]:
        """`branch` set to one commit on the base replacing `directory` by `files` (none: removing
        it), and its pull request opened or brought up to date; whether anything changed."""
        repo = self._repository(target, env)
        remote = self._git(repo, env, "ls-remote", "--heads", target.clone_url, f"refs/heads/{branch}")
        old_head = remote.split()[0] if remote.strip() else ""
        tree, commit = self._commit(repo, env, base_sha, directory, files, title_)
        changed = False
        head = old_head
        if old_head:
            self._git(repo, env, "fetch", "--quiet", "--no-tags", "--force", target.clone_url,
                      f"+refs/heads/{branch}:refs/remotes/origin/{branch}")
        same = bool(old_head) and self._git(repo, env, "rev-parse", f"{old_head}^{{tree}}").strip() == tree \
            and self._git(repo, env, "rev-parse", f"{old_head}^").strip() == base_sha
        if not same:
            # The branch is one commit on the base, rewritten for each newer model: the PR shows
            # exactly this service's change. The lease refuses to clobber a push made meanwhile.
            self._git(repo, env, "push", "--quiet", f"--force-with-lease=refs/heads/{branch}:{old_head}",
                      target.clone_url, f"{commit}:refs/heads/{branch}")
            head, changed = commit, True
        pull, opened = self._pull_request(target, branch, title_, text, token, head)
        ref = PullRequestRef(number=pull.number, url=pull.html_url, head_sha=head,
                             state="open" if pull.state == "open" else "closed")
        return ref, changed or opened

    def remove(self, target: Target, namespace: str, service: str, token: str) -> PullRequestRef | None:
        """Propose removing the service's directory from the base branch, through the service's
        one pull request (an open deploy PR becomes the removal PR). None: the base branch holds
        no directory this service proposed (never merged, hand-written, or another service's),
        so there is nothing of it to remove."""
        with self._lock(target):
            env = git_environment(target.clone_url, token)
            directory = target.directory(service)
            base_sha, current = self.read(target, service, token)
            if not current or owner_of(current) != f"{namespace}/{service}":
                return None
            text = removal_body(namespace, service, directory, target.base_branch, diff(directory, current, {}))
            ref, _ = self._propose(target, env, branch_of(namespace, service), base_sha, directory, {},
                                   removal_title(service), text, token)
            return ref

    def pull_request_now(self, target: Target, number: int, token: str) -> PullRequestNow:
        owner, name = target.repository.split("/", 1)
        with client(token, base_url=self.api_url, timeout_s=self.timeout_s) as gh:
            pull = _PullDetail.model_validate_json(gh.rest.pulls.get(owner, name, number).content)
        state: Literal["open", "closed", "merged"] = (
            "merged" if pull.merged else "open" if pull.state == "open" else "closed")
        return PullRequestNow(state=state, head_sha=pull.head.sha, merge_sha=pull.merge_commit_sha)

    def close(self, target: Target, number: int, token: str) -> None:
        """Close the service's pull request (the service is gone: nobody may `/deploy` it now)."""
        owner, name = target.repository.split("/", 1)
        with client(token, base_url=self.api_url, timeout_s=self.timeout_s) as gh:
            gh.rest.pulls.update(owner, name, number, state="closed")

    def _pull_request(self, target: Target, branch: str, title_: str, text: str, token: str,
                      head: str) -> tuple[_Pull, bool]:
        """The open PR of `branch`, its title and body brought up to date; the PR a reviewer
        closed unmerged at this very head (declined: not reopened); or a new one."""
        owner, name = target.repository.split("/", 1)
        with client(token, base_url=self.api_url, timeout_s=self.timeout_s) as gh:
            answer = gh.rest.pulls.list(owner, name, state="all", head=f"{owner}:{branch}",
                                        base=target.base_branch, sort="created", direction="desc", per_page=30)
            found = _PULLS.validate_json(answer.content)
            open_ = [p for p in found if p.state == "open"]
            if open_:
                pull = min(open_, key=lambda p: p.number)  # the first one, should two exist
                if pull.title != title_ or (pull.body or "") != text:
                    gh.rest.pulls.update(owner, name, pull.number, title=title_, body=text)
                return pull, False
            declined = [p for p in found if p.state == "closed" and p.merged_at is None and p.head.sha == head]
            if declined:
                return max(declined, key=lambda p: p.number), False
            created = gh.rest.pulls.create(owner, name, title=title_, head=branch, base=target.base_branch,
                                           body=text, maintainer_can_modify=False)
            return _Pull.model_validate_json(created.content), True


def classify_failure(error: BaseException, token: str | None) -> TemporaryError | PermanentError:
    """GitHub's refusals (401/403/404/422) are facts for the status; a 5xx, a 429, a timeout
    or a failed git call (network, a push that lost a race) are tried again. Messages carry
    no secret: the token is scrubbed should a server ever echo it."""
    if isinstance(error, (TemporaryError, PermanentError)):
        return error
    message = str(error)
    if isinstance(error, RequestFailed):
        status = error.response.status_code
        try:
            said = str(error.response.json().get("message", ""))
        except ValueError:
            said = ""
        message = f"GitHub answered {status}: {said or error.response.reason_phrase}"
        if token:
            message = message.replace(token, "***")
        if status == 429 or status >= 500:
            return TemporaryError(message)
        return PermanentError(message, reason="PullRequestRefused")
    if token:
        message = message.replace(token, "***")
    return TemporaryError(message or type(error).__name__)


def default_checkout() -> Path:
    return Path(os.environ.get("KAKEHASHI_CACHE_DIR", Path.home() / ".cache" / "kakehashi")) / "gitops"
