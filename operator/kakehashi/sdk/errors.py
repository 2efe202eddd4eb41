"""What the SDK raises: each error carries what a data scientist needs to act on it.

Like Kubeflow's `wait_for_job_conditions`, waiting raises on failure and on timeout instead of
returning a status to inspect, so a notebook cell stops at the line where the run went wrong.
"""

from __future__ import annotations


class KakehashiError(Exception):
    """Base of every SDK error."""


class NotFound(KakehashiError):
    """The named TrainingRun or ModelService does not exist."""


class SpecConflict(KakehashiError):
    """A run of that name exists with another spec: a run is the record of what trained."""

    def __init__(self, kind: str, name: str, differences: dict[str, tuple[object, object]]) -> None:
        self.kind = kind
        self.name = name
        self.differences = differences
        fields = "; ".join(f"{key}: {there!r} there, {here!r} here" for key, (there, here) in differences.items())
        super().__init__(
            f"{kind} {name!r} already exists with a different spec ({fields}). A run is the record "
            f"of what trained and cannot change: choose a new name, or TrainingRun.attach({name!r})."
        )


class RunFailed(KakehashiError):
    """The TrainingRun failed; `reason` (e.g. OOMKilled) and the last lines of its log say why."""

    def __init__(self, name: str, reason: str, message: str, log_tail: str) -> None:
        self.name = name
        self.reason = reason
        self.message = message
        self.log_tail = log_tail
        text = f"TrainingRun {name!r} failed: {reason}: {message}"
        if log_tail and log_tail.strip() not in message:
            text += f"\n--- last lines of its log ---\n{log_tail.rstrip()}"
        super().__init__(text)


class WaitTimeout(KakehashiError, TimeoutError):
    """Waiting ran out of time; the resource keeps going (it is not cancelled)."""

    def __init__(self, kind: str, name: str, phase: str | None, timeout: float, detail: str = "") -> None:
        self.kind = kind
        self.name = name
        self.phase = phase
        self.timeout = timeout
        text = f"{kind} {name!r} still {phase or 'without a phase'} after {timeout:g} s"
        super().__init__(f"{text}: {detail}" if detail else text)


class ServiceFailed(KakehashiError):
    """The ModelService is Failed, or was still Degraded when the wait ran out."""

    def __init__(self, name: str, phase: str, reason: str, message: str) -> None:
        self.name = name
        self.phase = phase
        self.reason = reason
        self.message = message
        super().__init__(f"ModelService {name!r} is {phase}: {reason}: {message}")


class PredictionError(KakehashiError):
    """The inference server (or the way to it) refused the request; `detail` is its answer."""

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"prediction failed ({status}): {detail}")
