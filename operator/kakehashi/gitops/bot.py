"""What the bot does with a command, once the webhook has been verified and answered.

Every command re-reads the pull request and the commenter's role from GitHub: the webhook
payload says who commented, never what they may do. A deploy checks its requirements under
the environment's lock, against the pull request as it is *then*, so an approval, a push or a
merge conflict that happened while it waited is seen (the holes of Atlantis #1508, #2112).
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from kakehashi.gitops import commands as cmd
from kakehashi.gitops.cluster import ApplyResult, Cluster, Origin, ServiceChange
from kakehashi.gitops.config import Environment, RepoConfig
from kakehashi.gitops.events import IssueCommentEvent
from kakehashi.gitops.github import (
    WRITE_ROLES,
    GitHubApi,
    MergeRefused,
    PullRequest,
    Review,
    StatusState,
)
from kakehashi.gitops.leases import Leases
from kakehashi.gitops.locks import Holder, Locks, LockTimeout, now
from kakehashi.gitops.metrics import COMMAND_SECONDS, COMMANDS
from kakehashi.gitops.repository import GitRepository

log = logging.getLogger("kakehashi.gitops")

# States that cancel an earlier approval by the same reviewer.
_SUPERSEDING: Final = frozenset({"APPROVED", "CHANGES_REQUESTED", "DISMISSED"})


class Refused(Exception):
    """A requirement is not met; the message is the reply (markdown, no secrets).

    `status=False`: leave the commit status alone (another command's verdict on the same
    commit stands, e.g. the deploy that merged the PR while this one waited)."""

    def __init__(self, message: str, *, status: bool = True) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Context:
    owner: str
    repo: str
    number: int
    actor: str
    received: float  # time.monotonic() when the webhook arrived

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.repo}"


@dataclass
class BotOptions:
    config_path: str = ".kakehashi/bot.yaml"
    allow_forks: bool = False
    status_context: str = "kakehashi"
    lock_wait_s: float = 900.0
    mergeable_retries: int = 5  # GitHub answers mergeable=null while it computes it
    mergeable_delay_s: float = 1.0


class Bot:
    def __init__(
        self, github: GitHubApi, repository: GitRepository, cluster: Cluster, options: BotOptions | None = None,
        *, leases: Leases | None = None,
    ) -> None:
        self.github = github
        self.repository = repository
        self.cluster = cluster
        self.options = options or BotOptions()
        self.locks = Locks(leases)  # with Leases, the locks hold between replicas too

    async def handle(self, event: IssueCommentEvent, commands: list[cmd.Command], received: float) -> None:
        ctx = Context(
            owner=event.repository.owner.login,
            repo=event.repository.name,
            number=event.issue.number,
            actor=event.comment.user.login,
            received=received,
        )
        async with self.github.session():
            for command in commands:
                await self.run(ctx, command)

    async def run(self, ctx: Context, command: cmd.Command) -> None:
        name = command.name
        result = "error"
        try:
            await self._dispatch(ctx, command)
            result = "ok"
        except Refused as refused:
            result = "refused"
            await self._reply(ctx, f"`{cmd.describe(command)}` refused: {refused}")
        except asyncio.CancelledError:
            result = "cancelled"
            # /unlock cancelled it, or the bot is stopping: say so, and let cancellation go on.
            await asyncio.shield(self._reply(ctx, f"`{cmd.describe(command)}` was cancelled (unlocked)."))
            raise
        except Exception as error:
            log.exception("command failed", extra={"pr": ctx.number, "command": name})
            await self._reply(
                ctx, f"`{cmd.describe(command)}` failed: {type(error).__name__}. The bot's log has the details."
            )
        finally:
            COMMANDS.labels(name, result).inc()
            COMMAND_SECONDS.labels(name).observe(time.monotonic() - ctx.received)

    async def _dispatch(self, ctx: Context, command: cmd.Command) -> None:
        match command:
            case cmd.Unknown(word=word, suggestion=suggestion):
                hint = f" Did you mean `/{suggestion}`?" if suggestion else ""
                await self._reply(ctx, f"Unknown command `/{word}`.{hint}\n\n{cmd.help_text()}")
                return
            case cmd.Invalid(usage=usage):
                await self._reply(ctx, f"Usage: `{usage}`")
                return
        # Both answers are needed; asked together, they cost one round trip.
        pr_answer, role = await asyncio.gather(
            self.github.pull_request(ctx.owner, ctx.repo, ctx.number),
            self.github.role(ctx.owner, ctx.repo, ctx.actor),
        )
        pr = self._acceptable(pr_answer)
        if role not in WRITE_ROLES:
            raise Refused(f"@{ctx.actor} needs write permission on {ctx.full_name} (has `{role}`).")
        match command:
            case cmd.Help():
                await self._reply(ctx, cmd.help_text())
            case cmd.Deploy(environment=environment):
                await self._deploy(ctx, pr, environment)
            case cmd.Diff(environment=environment):
                await self._diff(ctx, pr, environment)
            case cmd.Rollback(service=service, target=target):
                await self._rollback(ctx, pr, service, target)
            case cmd.Train():
                await self._train(ctx, pr)
            case cmd.Unlock(environment=environment):
                await self._unlock(ctx, pr, environment)

    # ---- checks every command passes ---------------------------------------------------------

    def _acceptable(self, pr: PullRequest) -> PullRequest:
        if pr.from_fork and not self.options.allow_forks:
            # A fork's head is code from outside the repository's writers: the bot neither
            # checks it out nor applies it, whoever comments.
            raise Refused(
                f"this pull request comes from a fork ({pr.head_repository or 'deleted'}); "
                "the bot acts only on branches of this repository."
            )
        if pr.state != "open" or pr.merged:
            raise Refused("this pull request is not open.")
        return pr

    async def _config(self, pr: PullRequest) -> RepoConfig:
        await self.repository.fetch(pr.base_ref, pr.number)
        text = await self.repository.read(f"refs/remotes/origin/{pr.base_ref}", self.options.config_path)
        return RepoConfig.from_yaml(text)

    async def _environment(self, ctx: Context, config: RepoConfig, name: str) -> Environment:
        environment = config.environments.get(name)
        if environment is None:
            known = ", ".join(f"`{env}`" for env in sorted(config.environments)) or "none"
            raise Refused(f"no environment `{name}` in `{self.options.config_path}` (configured: {known}).")
        if environment.allow is not None and not await self._allowed(ctx, environment):
            raise Refused(f"@{ctx.actor} is not on `{name}`'s allowlist.")
        return environment

    async def _allowed(self, ctx: Context, environment: Environment) -> bool:
        assert environment.allow is not None
        if ctx.actor in environment.allow.users:
            return True
        for team in environment.allow.teams:
            org, slug = team.split("/", 1)
            if await self.github.team_member(org, slug, ctx.actor):
                return True
        return False

    async def _mergeable(self, ctx: Context) -> PullRequest:
        pr = await self.github.pull_request(ctx.owner, ctx.repo, ctx.number)
        for _ in range(self.options.mergeable_retries):
            if pr.mergeable is not None:
                break
            await asyncio.sleep(self.options.mergeable_delay_s)
            pr = await self.github.pull_request(ctx.owner, ctx.repo, ctx.number)
        return pr

    @staticmethod
    def approvals(reviews: list[Review], *, author: str, sha: str) -> list[str]:
        """Who approves `sha`: each reviewer's latest deciding review, on that very commit."""
        latest: dict[str, Review] = {}
        for review in reviews:  # GitHub lists reviews in chronological order
            if review.state in _SUPERSEDING:
                latest[review.reviewer] = review
        return sorted(
            reviewer
            for reviewer, review in latest.items()
            if review.state == "APPROVED" and review.commit_id == sha and reviewer != author
        )

    # ---- commands --------------------------------------------------------------------------

    async def _deploy(self, ctx: Context, pr: PullRequest, name: str) -> None:
        config = await self._config(pr)
        environment = await self._environment(ctx, config, name)
        sha = pr.head_sha  # what the command was given: nothing else may be applied
        context = f"{self.options.status_context}/deploy/{name}"
        services = await self.repository.changed_services(pr.base_ref, sha, environment.path)
        if not services:
            raise Refused(f"this pull request changes nothing under `{environment.path}/`.")
        await self._status(ctx, sha, "pending", context, f"/deploy {name} by @{ctx.actor}: waiting for the lock")
        keys = [(name, service) for service in services]
        holders = {h.describe() for env, service in keys if (h := self.locks.holder(env, service))}
        if holders:
            await self._reply(ctx, f"`/deploy {name}` is waiting: locked by {', '.join(sorted(holders))}.")
        holder = Holder(ctx.actor, f"/deploy {name}", ctx.number, now())
        try:
            async with self.locks.hold(keys, holder, timeout_s=self.options.lock_wait_s):
                result = await self._deploy_locked(ctx, name, environment, sha, services, context)
        except LockTimeout as timeout:
            who = timeout.who or "another command"
            await self._status(ctx, sha, "failure", context, "still locked; comment again later")
            raise Refused(f"`{name}/{timeout.key[1]}` is still locked by {who}.") from None
        except Refused as refused:
            if refused.status:
                await self._status(ctx, sha, "failure", context, str(refused))
            raise
        except asyncio.CancelledError:
            await asyncio.shield(self._status(ctx, sha, "error", context, "cancelled by /unlock"))
            raise
        except Exception as error:
            await self._status(ctx, sha, "error", context, f"bot error: {type(error).__name__}")
            raise
        if not result.ok:  # a success was set before the merge, under the lock
            await self._status(ctx, sha, "failure", context, result.summary)
        await self._reply(ctx, result.details or result.summary)

    async def _deploy_locked(
        self, ctx: Context, name: str, environment: Environment, sha: str, services: list[str], context: str
    ) -> ApplyResult:
        # Everything is read again now that the lock is held: the command may have waited.
        pr, reviews = await asyncio.gather(
            self._mergeable(ctx), self.github.reviews(ctx.owner, ctx.repo, ctx.number)
        )
        if pr.state != "open" or pr.merged:
            raise Refused("the pull request was closed or merged while the command waited.", status=False)
        if pr.head_sha != sha:
            raise Refused(
                f"the head moved from `{sha[:12]}` to `{pr.head_sha[:12]}` after the command; "
                "review the new commits and comment again."
            )
        approvers = self.approvals(reviews, author=pr.author, sha=sha)
        if len(approvers) < environment.approvals:
            raise Refused(
                f"`{name}` needs {environment.approvals} approval(s) of `{sha[:12]}` by someone other "
                f"than @{pr.author}; it has {len(approvers)} (a review of an earlier commit does not count)."
            )
        if pr.mergeable is not True:
            state = "unknown (GitHub is still computing it)" if pr.mergeable is None else pr.mergeable_state
            raise Refused(f"the pull request is not mergeable: {state}.")
        if not await self.repository.has_commit(sha):  # fetched with the config; else once more
            await self.repository.fetch(pr.base_ref, pr.number)
        if not await self.repository.has_commit(sha):
            raise Refused(f"`{sha[:12]}` is not in the repository any more.")
        origin = Origin(ctx.actor, ctx.full_name, ctx.number, sha, now())
        lines = [f"`/deploy {name}` of `{sha[:12]}` (approved by {', '.join('@' + a for a in approvers) or 'nobody needed'}):", ""]
        with tempfile.TemporaryDirectory(prefix="kakehashi-bot-") as tmp:
            for service in services:
                change = await self._change(pr.base_ref, sha, name, environment, service, Path(tmp))
                result = await self.cluster.apply(change, origin)
                lines += [f"**{service}**: {result.summary}", "", result.details, ""]
                if not result.ok:
                    return ApplyResult(False, f"{service}: {result.summary}", "\n".join(lines).strip())
        # The rollout's verdict goes on the commit before the merge: a branch protection that
        # requires this very status (so nobody merges what was not deployed) then lets it merge.
        summary = f"deployed {', '.join(services)} to {name}"
        await self._status(ctx, sha, "success", context, summary)
        try:
            merged = await self.github.merge(ctx.owner, ctx.repo, ctx.number, sha, f"/deploy {name} by @{ctx.actor}")
        except MergeRefused as refused:
            lines.append(f"Applied, but GitHub refused the merge ({refused.status}: {refused}).")
            return ApplyResult(False, f"applied; merge refused: {refused}", "\n".join(lines).strip())
        lines.append(f"Merged as `{merged[:12]}`.")
        return ApplyResult(True, summary, "\n".join(lines).strip())

    async def _change(self, base_ref: str, sha: str, name: str, environment: Environment, service: str,
                      tmp: Path) -> ServiceChange:
        """The service's directory at `sha`; when the PR deletes it, the base branch's too (the
        objects to prune are where that one put them)."""
        path = f"{environment.path}/{service}"
        directory = await self.repository.export(sha, path, tmp / "head")
        before = None
        if directory is None:
            before = await self.repository.export(f"refs/remotes/origin/{base_ref}", path, tmp / "base")
        return ServiceChange(name, service, directory, before)

    async def _diff(self, ctx: Context, pr: PullRequest, name: str) -> None:
        config = await self._config(pr)
        environment = await self._environment(ctx, config, name)
        sha = pr.head_sha
        services = await self.repository.changed_services(pr.base_ref, sha, environment.path)
        if not services:
            raise Refused(f"this pull request changes nothing under `{environment.path}/`.")
        parts = [f"`/diff {name}` of `{sha[:12]}` against the live cluster:"]
        with tempfile.TemporaryDirectory(prefix="kakehashi-bot-") as tmp:
            for service in services:
                text = await self.cluster.diff(await self._change(pr.base_ref, sha, name, environment, service, Path(tmp)))
                parts.append(f"**{service}**\n```diff\n{text.rstrip() or '(no changes)'}\n```")
        await self._reply(ctx, "\n\n".join(parts))

    async def _rollback(self, ctx: Context, pr: PullRequest, service: str, target: str | None) -> None:
        config = await self._config(pr)
        name = config.rollback_environment
        await self._environment(ctx, config, name)
        origin = Origin(ctx.actor, ctx.full_name, ctx.number, pr.head_sha, now())
        holder = Holder(ctx.actor, f"/rollback {service}", ctx.number, now())
        if (current := self.locks.holder(name, service)) is not None:
            await self._reply(ctx, f"`/rollback {service}` is waiting: locked by {current.describe()}.")
        try:
            async with self.locks.hold([(name, service)], holder, timeout_s=self.options.lock_wait_s):
                result = await self.cluster.rollback(name, service, target, origin)
        except LockTimeout as timeout:
            who = timeout.who or "another command"
            raise Refused(f"`{name}/{service}` is still locked by {who}.") from None
        verdict = "done" if result.ok else "failed"
        await self._reply(ctx, f"`/rollback {service}` on {name} {verdict}: {result.summary}\n\n{result.details}".strip())

    async def _train(self, ctx: Context, pr: PullRequest) -> None:
        config = await self._config(pr)
        sha = pr.head_sha
        context = f"{self.options.status_context}/train"
        await self._status(ctx, sha, "pending", context, f"/train by @{ctx.actor}")
        origin = Origin(ctx.actor, ctx.full_name, ctx.number, sha, now())
        with tempfile.TemporaryDirectory(prefix="kakehashi-bot-") as tmp:
            directory = await self.repository.export(sha, config.training_path, Path(tmp))
            if directory is None:
                await self._status(ctx, sha, "failure", context, f"no {config.training_path}/ at the head")
                raise Refused(f"the head commit has no `{config.training_path}/` directory.")
            result = await self.cluster.train(directory, origin)
        await self._status(ctx, sha, "success" if result.ok else "failure", context, result.summary)
        metrics = "\n".join(f"| {key} | {value:g} |" for key, value in sorted(result.metrics.items()))
        gate = {True: "passed (promotable)", False: "not passed (not promotable)", None: "no gate"}[result.promotable]
        table = f"\n\n| metric | value |\n| --- | --- |\n{metrics}" if metrics else ""
        await self._reply(ctx, f"`/train` of `{sha[:12]}`: {result.summary}. Gate: {gate}.{table}")

    async def _unlock(self, ctx: Context, pr: PullRequest, name: str) -> None:
        config = await self._config(pr)
        await self._environment(ctx, config, name)
        released = self.locks.unlock(name)
        lines = [f"- `{name}/{service}`: {holder.describe()}, cancelled" for service, holder in released]
        if self.locks.leases is not None:
            # Held by another replica: freeing its Lease makes that replica cancel its command.
            mine = {holder.describe() for _, holder in released}
            others = await asyncio.to_thread(self.locks.leases.unlock, name)
            lines += [f"- {who}, cancelled" for who in others if not any(m in who for m in mine)]
        if not lines:
            await self._reply(ctx, f"`{name}` holds no lock.")
            return
        await self._reply(ctx, f"@{ctx.actor} unlocked `{name}`:\n" + "\n".join(lines))

    # ---- reporting ---------------------------------------------------------------------------

    async def _reply(self, ctx: Context, body: str) -> None:
        await self.github.comment(ctx.owner, ctx.repo, ctx.number, body)

    async def _status(self, ctx: Context, sha: str, state: StatusState, context: str, description: str) -> None:
        await self.github.status(ctx.owner, ctx.repo, sha, state, context, description)
