"""Two kinds of failure, as kopf itself has (`TemporaryError(delay)` and `PermanentError`).

A temporary failure (429, 5xx, a timeout, a dropped connection, S3's SlowDown) says nothing
about the object: it is retried with backoff and never written down as a fact. A permanent one
(the API server refusing an object with 400/422/403) is the answer: retrying cannot change it,
so the controller records it in the status, naming what the server named. Classification is by
duck typing, so this module needs neither the Kubernetes client nor boto3 installed.
"""

from __future__ import annotations

import json
from typing import Any, Final

# S3 and other AWS services: codes that mean "try again" whatever the HTTP status says.
_AWS_RETRYABLE: Final = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeoutException",
    "InternalError", "ServiceUnavailable", "RequestLimitExceeded", "TooManyRequestsException",
    "ProvisionedThroughputExceededException", "EC2ThrottledException",
})
_TRANSPORT_NAMES: Final = frozenset({
    # urllib3, botocore and httpx transport failures, named to avoid importing each library.
    "MaxRetryError", "ProtocolError", "NewConnectionError", "ReadTimeoutError", "ConnectTimeoutError",
    "EndpointConnectionError", "ConnectionClosedError", "ReadTimeout", "ConnectTimeout",
    "ConnectError", "RemoteProtocolError", "PoolTimeout", "WriteTimeout", "NetworkError",
    "ResponseStreamingError", "IncompleteReadError", "ClientPayloadError", "ServerDisconnectedError",
})


class TemporaryError(Exception):
    """Retry later; `delay` overrides the backoff (e.g. from a Retry-After header)."""

    def __init__(self, message: str, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(Exception):
    """The answer will not change by asking again; `reason` is a CamelCase status reason."""

    def __init__(self, message: str, reason: str = "Refused") -> None:
        super().__init__(message)
        self.reason = reason


def http_status(error: BaseException) -> int | None:
    """The HTTP status of a Kubernetes ApiException, a botocore ClientError or an httpx error."""
    status = getattr(error, "status", None)
    if isinstance(status, int):
        return status
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        code = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(code) if isinstance(code, int) else None
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def _aws_code(error: BaseException) -> str:
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _retry_after(error: BaseException) -> float | None:
    headers: Any = getattr(error, "headers", None) or {}
    try:
        value = headers.get("Retry-After")
        return float(value) if value is not None else None
    except (AttributeError, TypeError, ValueError):
        return None


def api_message(error: BaseException) -> str:
    """What the server said, in its own words (a Kubernetes Status names the field)."""
    body = getattr(error, "body", None)
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    if isinstance(body, str) and body:
        try:
            decoded = json.loads(body)
        except ValueError:
            return body[:2000]
        if isinstance(decoded, dict) and decoded.get("message"):
            return str(decoded["message"])
    aws = getattr(error, "response", None)
    if isinstance(aws, dict) and aws.get("Error", {}).get("Message"):
        return f"{_aws_code(error)}: {aws['Error']['Message']}"
    reason = getattr(error, "reason", None)
    return str(reason or error)[:2000]


def is_transport(error: BaseException) -> bool:
    """A failure to talk at all: no answer that could be a fact."""
    if isinstance(error, (TimeoutError, ConnectionError)):
        return True
    return any(cls.__name__ in _TRANSPORT_NAMES for cls in type(error).__mro__)


def classify(error: BaseException) -> TemporaryError | PermanentError | None:
    """Temporary, permanent, or None when the error is not a remote answer (a bug of ours)."""
    if isinstance(error, (TemporaryError, PermanentError)):
        return error
    if is_transport(error):
        return TemporaryError(f"{type(error).__name__}: connection failed or timed out")
    status = http_status(error)
    code = _aws_code(error)
    if code in _AWS_RETRYABLE:
        return TemporaryError(f"{code} (HTTP {status})", _retry_after(error))
    if status is None:
        return None
    if status == 0:  # the Kubernetes client's "no response"
        return TemporaryError(f"no response: {api_message(error)}")
    if status == 429 or status >= 500:
        return TemporaryError(f"HTTP {status}: {api_message(error)}", _retry_after(error))
    if 400 <= status < 500:
        return PermanentError(api_message(error), reason=_permanent_reason(status))
    return None


def _permanent_reason(status: int) -> str:
    return {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
            409: "Conflict", 410: "Gone", 413: "TooLarge", 422: "Invalid"}.get(status, f"HTTP{status}")


def is_temporary(error: BaseException) -> bool:
    return isinstance(classify(error), TemporaryError)
