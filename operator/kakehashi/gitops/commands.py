"""Comment commands: `/deploy <env>`, `/diff <env>`, `/rollback <service> [<entry|digest>]`,
`/train`, `/unlock <env>`, `/help`, each at the start of a line.

Parsing is pure (text in, models out) so every rule is testable without a server. A line that
starts with `/` and names no command becomes an `Unknown` with a "did you mean" suggestion; a
known command with the wrong arguments becomes an `Invalid` that says the usage.
"""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

# Environment and service names are Kubernetes-ish names: nothing that could smuggle a path.
NAME: Final = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_NAME_RE: Final = re.compile(NAME)
_DIGEST_RE: Final = re.compile(r"sha256:[0-9a-f]{64}")


class _Command(BaseModel):
    model_config = ConfigDict(frozen=True)


class Deploy(_Command):
    name: Literal["deploy"] = "deploy"
    environment: Annotated[str, Field(pattern=f"^{NAME}$")]


class Diff(_Command):
    name: Literal["diff"] = "diff"
    environment: Annotated[str, Field(pattern=f"^{NAME}$")]


class Rollback(_Command):
    name: Literal["rollback"] = "rollback"
    service: Annotated[str, Field(pattern=f"^{NAME}$")]
    # A history entry (1 = the most recent successful deploy), a digest, or None: the newest
    # successful deploy that is not what runs now.
    target: str | None = None


class Train(_Command):
    name: Literal["train"] = "train"


class Unlock(_Command):
    name: Literal["unlock"] = "unlock"
    environment: Annotated[str, Field(pattern=f"^{NAME}$")]


class Help(_Command):
    name: Literal["help"] = "help"


class Unknown(_Command):
    name: Literal["unknown"] = "unknown"
    word: str
    suggestion: str | None


class Invalid(_Command):
    name: Literal["invalid"] = "invalid"
    command: str
    usage: str


Command = Deploy | Diff | Rollback | Train | Unlock | Help | Unknown | Invalid

USAGE: Final = {
    "deploy": "/deploy <environment>",
    "diff": "/diff <environment>",
    "rollback": "/rollback <service> [<history entry or sha256:digest>]",
    "train": "/train",
    "unlock": "/unlock <environment>",
    "help": "/help",
}
HELP: Final = {
    "deploy": "apply this PR's head to the environment, wait until it is ready, then merge",
    "diff": "show what /deploy would change on the live cluster (server-side dry run)",
    "rollback": "serve the service's previous version (or the given history entry or digest)",
    "train": "run this PR head's TrainingRun manifests on the learning cluster and report the metrics",
    "unlock": "release the environment's locks (stops a deploy that is stuck waiting)",
    "help": "this message",
}


def help_text() -> str:
    lines = ["Commands (one per line, at the start of the line):", ""]
    lines += [f"- `{USAGE[name]}`: {HELP[name]}" for name in USAGE]
    return "\n".join(lines)


def parse(body: str) -> list[Command]:
    """Every command in a comment, in order. Lines not starting with `/` are prose."""
    commands: list[Command] = []
    fenced = False
    for line in body.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            fenced = not fenced
            continue
        # Code blocks and quoted replies ("> /deploy production") quote, they do not command.
        if fenced or not stripped.startswith("/"):
            continue
        words = stripped[1:].split()
        if not words or not re.fullmatch(r"[A-Za-z][-A-Za-z0-9_]*", words[0]):
            continue  # "/ " or a path like "/etc/x": not an attempt at a command
        commands.append(_one(words[0].lower(), words[1:]))
    return commands


def _one(word: str, args: list[str]) -> Command:
    if word not in USAGE:
        close = difflib.get_close_matches(word, list(USAGE), n=1, cutoff=0.6)
        return Unknown(word=word, suggestion=close[0] if close else None)
    invalid = Invalid(command=word, usage=USAGE[word])
    if word in ("deploy", "diff", "unlock"):
        if len(args) != 1 or not _NAME_RE.fullmatch(args[0]):
            return invalid
        if word == "deploy":
            return Deploy(environment=args[0])
        return Diff(environment=args[0]) if word == "diff" else Unlock(environment=args[0])
    if word == "rollback":
        if not 1 <= len(args) <= 2 or not _NAME_RE.fullmatch(args[0]):
            return invalid
        target = args[1] if len(args) == 2 else None
        if target is not None and not (target.isdigit() or _DIGEST_RE.fullmatch(target)):
            return invalid
        return Rollback(service=args[0], target=target)
    if args:
        return invalid
    return Train() if word == "train" else Help()


def describe(command: Command) -> str:
    """How the command reads back in a reply."""
    match command:
        case Deploy(environment=env):
            return f"/deploy {env}"
        case Diff(environment=env):
            return f"/diff {env}"
        case Rollback(service=service, target=target):
            return f"/rollback {service}" + (f" {target}" if target else "")
        case Unlock(environment=env):
            return f"/unlock {env}"
        case Unknown(word=word):
            return f"/{word}"
        case Invalid(command=word):
            return f"/{word}"
        case _:
            return f"/{command.name}"
