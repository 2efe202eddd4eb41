"""Webhook notifications over real HTTP on loopback: the message arrives, a redirect is not
followed, and the URL (a credential: Slack's secret is its path) appears in no log line."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import pytest

from kakehashi import notify
from kakehashi.addresses import Allowlist

SECRET_PATH = "/services/T000/B000/XXXXSECRETXXXX"
LOOPBACK = Allowlist(["127.0.0.1/32"])
MESSAGE = notify.WebhookMessage(text="TrainingRun team/digits Succeeded", blocks=[])


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, str, dict[str, Any]]]] = []
    answer: ClassVar[int] = 200

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Hook.received.append((self.path, self.headers["Host"], body))
        self.send_response(self.answer)
        if self.answer in (301, 302, 307, 308):
            self.send_header("Location", "/elsewhere")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[str]:
    _Hook.received.clear()
    _Hook.answer = 200
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}{SECRET_PATH}"
    finally:
        server.shutdown()
        server.server_close()


def _send(url: str) -> None:
    asyncio.run(notify.send(url, MESSAGE, allowlist=LOOPBACK, allow_http=True, timeout_s=5))


def test_the_message_arrives_and_the_url_is_in_no_log_line(hook: str, caplog: pytest.LogCaptureFixture) -> None:
    # DEBUG on every logger: what `kakehashi operator run -v` would print.
    with caplog.at_level(logging.DEBUG):
        _send(hook)
    assert _Hook.received == [(SECRET_PATH, hook.split("/")[2], MESSAGE.model_dump())]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "XXXXSECRETXXXX" not in logged and SECRET_PATH not in logged


@pytest.mark.parametrize(("answer", "words"), [(302, "redirect (HTTP 302)"), (500, "answered HTTP 500")])
def test_a_redirect_is_not_followed_and_errors_never_name_the_url(
    hook: str, caplog: pytest.LogCaptureFixture, answer: int, words: str
) -> None:
    _Hook.answer = answer
    with caplog.at_level(logging.DEBUG), pytest.raises(notify.NotificationError) as info:
        _send(hook)
    assert words in str(info.value)
    assert [path for path, _, _ in _Hook.received] == [SECRET_PATH]  # /elsewhere never asked
    logged = "\n".join(record.getMessage() for record in caplog.records) + str(info.value)
    assert "XXXXSECRETXXXX" not in logged and "127.0.0.1" not in str(info.value)
