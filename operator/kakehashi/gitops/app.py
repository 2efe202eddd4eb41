"""The webhook endpoint: verify, deduplicate, filter, answer at once, work afterwards.

GitHub gives a delivery 10 seconds; a deploy takes longer. So the answer (202) goes out as soon
as the request is known to be genuine, new and actionable, and the command runs as a task the
app keeps track of (and waits for on shutdown).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from kakehashi.gitops import commands as cmd
from kakehashi.gitops.bot import Bot
from kakehashi.gitops.events import IssueCommentEvent
from kakehashi.gitops.metrics import WEBHOOKS
from kakehashi.gitops.signature import SignatureError, verify

log = logging.getLogger("kakehashi.gitops")


class Deliveries:
    """The delivery GUIDs already accepted: a redelivery (same GUID) must not run twice.

    `first_time` checks and records in memory, with no await: atomic on the event loop, so two
    copies of one delivery arriving together cannot both pass. With a `journal` file, `record`
    then appends the GUID and fsyncs it in a worker thread (an fsync can take tens of
    milliseconds on a busy disk, and the loop is answering other webhooks meanwhile) before the
    command starts; the newest `capacity` are read back at start, so a redelivery after the bot
    restarted mid-command is still a duplicate, not a second run.

    The journal is compacted as it grows, not only at start: once it holds twice `capacity`
    lines it is rewritten to the newest `capacity` (a new file, fsynced, renamed over the old
    one, so a crash mid-way leaves one or the other whole). Rewriting `capacity` lines every
    `capacity` appends keeps the cost per delivery constant and the file under 2x capacity.
    """

    def __init__(self, capacity: int, journal: Path | None = None) -> None:
        self.capacity = capacity
        self.journal = journal
        self._seen: OrderedDict[str, None] = OrderedDict()
        # Appends and rewrites of the journal, from worker threads: one at a time.
        self._writing = threading.Lock()
        self._lines = 0  # lines in the journal file now
        if journal is not None and journal.exists():
            for line in journal.read_text().splitlines()[-capacity:]:
                if line.strip():
                    self._seen[line.strip()] = None
            self._lines = _rewrite(journal, list(self._seen))

    def first_time(self, guid: str) -> bool:
        """Record `guid` in memory; False if it was recorded before. No await inside."""
        if guid in self._seen:
            self._seen.move_to_end(guid)
            return False
        self._seen[guid] = None
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return True

    def forget(self, guid: str) -> None:
        """Undo `first_time` (the journal could not keep it: let GitHub's redelivery run it)."""
        self._seen.pop(guid, None)

    async def record(self, guid: str) -> None:
        """Make `guid` survive a restart: appended and fsynced off the event loop."""
        if self.journal is not None:
            await asyncio.to_thread(self._append, self.journal, guid)

    @property
    def journal_lines(self) -> int:
        return self._lines

    def _append(self, journal: Path, guid: str) -> None:
        with self._writing:
            with journal.open("a") as handle:
                handle.write(f"{guid}\n")
                handle.flush()
                os.fsync(handle.fileno())
            self._lines += 1
            if self._lines >= 2 * self.capacity:
                # Read from the file, not from `_seen`: the loop may be changing that now.
                tail = [line for line in journal.read_text().splitlines() if line.strip()][-self.capacity:]
                self._lines = _rewrite(journal, tail)


def _rewrite(journal: Path, guids: list[str]) -> int:
    """Replace the journal by `guids` atomically (temporary file, fsync, rename); their count."""
    temporary = journal.with_name(journal.name + ".new")
    with temporary.open("w") as handle:
        handle.write("".join(f"{guid}\n" for guid in guids))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, journal)
    return len(guids)


class Webhooks:
    """The app's state: the secret, the deliveries seen and the commands still running."""

    def __init__(
        self, bot: Bot, secret: bytes, *, deliveries: int = 10_000, journal: Path | None = None
    ) -> None:
        if not secret:
            raise ValueError("refusing to start without a webhook secret")
        self.bot = bot
        self._secret = secret
        self.deliveries = Deliveries(deliveries, journal)
        self.tasks: set[asyncio.Task[None]] = set()

    async def drain(self, timeout_s: float | None = None) -> None:
        """Wait for the commands still running (tests; shutdown)."""
        while self.tasks:
            await asyncio.wait(set(self.tasks), timeout=timeout_s)
            if timeout_s is not None:
                return

    def _answer(self, code: int, outcome: str, message: str) -> JSONResponse:
        WEBHOOKS.labels(outcome).inc()
        return JSONResponse({"outcome": outcome, "message": message}, status_code=code)

    async def receive(self, request: Request) -> JSONResponse:
        received = time.monotonic()
        body = await request.body()  # the raw bytes: the signature is over them, not over parsed JSON
        try:
            verify(self._secret, body, request.headers.get("x-hub-signature-256"))
        except SignatureError as error:
            unsigned = "x-hub-signature-256" not in request.headers
            log.warning("webhook refused", extra={"reason": str(error), "delivery": request.headers.get("x-github-delivery")})
            return self._answer(401, "unsigned" if unsigned else "forged", str(error))
        guid = request.headers.get("x-github-delivery")
        event = request.headers.get("x-github-event")
        if not guid or not event:
            return self._answer(400, "invalid", "missing X-GitHub-Delivery or X-GitHub-Event")
        # Recorded only after the signature checked out, so a forger cannot pre-empt a GUID.
        if not self.deliveries.first_time(guid):
            return self._answer(200, "duplicate", f"delivery {guid} was handled already")
        if event == "ping":
            return self._answer(200, "ignored", "pong")
        if event != "issue_comment":
            return self._answer(200, "ignored", f"event {event} is not handled")
        try:
            payload = IssueCommentEvent.model_validate(json.loads(body))
        except (ValueError, ValidationError) as error:
            return self._answer(400, "invalid", f"not an issue_comment payload: {type(error).__name__}")
        if payload.action != "created":
            # An edit could rewrite an old comment into a command: only new comments count.
            return self._answer(200, "ignored", f"comment {payload.action}, only new comments act")
        if payload.issue.pull_request is None:
            return self._answer(200, "ignored", "comment on an issue, not a pull request")
        if payload.comment.user.is_bot or payload.sender.is_bot:
            return self._answer(200, "ignored", "comment by a bot")
        commands = cmd.parse(payload.comment.body)
        if not commands:
            return self._answer(200, "ignored", "no command in the comment")
        # Only deliveries that run something need to survive a restart: a redelivery of an
        # ignored one is ignored again anyway.
        try:
            await self.deliveries.record(guid)
        except OSError as error:
            self.deliveries.forget(guid)  # not run, not remembered: GitHub's redelivery may run it
            log.error("delivery journal not written", extra={"delivery": guid, "error": str(error)})
            return self._answer(503, "unavailable", "the delivery journal could not be written; redeliver")
        task = asyncio.create_task(self.bot.handle(payload, commands, received), name=f"delivery-{guid}")
        self.tasks.add(task)
        task.add_done_callback(self._done)
        log.info(
            "commands accepted",
            extra={"delivery": guid, "pr": payload.issue.number, "actor": payload.comment.user.login,
                   "commands": [c.name for c in commands]},
        )
        return self._answer(202, "accepted", f"{len(commands)} command(s) accepted")

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("command task failed", exc_info=task.exception())


def create_app(webhooks: Webhooks) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await webhooks.drain(timeout_s=60)  # let running deploys report before the pod goes

    app = FastAPI(title="kakehashi-bot", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.webhooks = webhooks

    @app.post("/webhook")
    async def webhook(request: Request) -> JSONResponse:
        return await webhooks.receive(request)

    @app.get("/healthz")
    async def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
