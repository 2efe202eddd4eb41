"""What the GitOps delivery and the PR-comment bot share about GitHub: how git authenticates
and how the REST client is built. Here, below both, so neither copies the other (the bot sits
above serving; delivery below it).
"""

from __future__ import annotations

import base64
import os
from typing import Final

from githubkit import GitHub

USER_AGENT: Final = "kakehashi"


def git_environment(url: str, token: str | None) -> dict[str, str]:
    """The environment git runs in: no prompt, and for an https remote the token as an
    `http.extraHeader` given through GIT_CONFIG_* — never on a command line (visible in `ps`)
    nor in a URL (git prints remote URLs in its errors, which end up in logs)."""
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0")
    if token and url.startswith("https://"):
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        env |= {
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "http.extraHeader",
            "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
        }
    return env


def client(token: str, *, base_url: str, timeout_s: float = 10.0, user_agent: str = USER_AGENT) -> GitHub:  # type: ignore[type-arg]
    # No HTTP cache: a cached pull request could show an old head SHA or an old body, and
    # both the bot's checks and delivery's "update the same PR" must see what GitHub has now.
    return GitHub(token, base_url=base_url, timeout=timeout_s, http_cache=False, user_agent=user_agent)
