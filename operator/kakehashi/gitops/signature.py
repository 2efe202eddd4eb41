"""Webhook signature checking: X-Hub-Signature-256 only, over the raw body, in constant time."""

from __future__ import annotations

import hashlib
import hmac


class SignatureError(Exception):
    """The request is not provably from GitHub; the message says why (it holds no secret)."""


def verify(secret: bytes, body: bytes, signature_256: str | None) -> None:
    """Raise SignatureError unless `signature_256` is `sha256=<hex HMAC of body>`.

    Only the SHA-256 header counts: a request carrying only X-Hub-Signature (SHA-1) is refused,
    so a downgrade to the weaker MAC is impossible. The comparison is hmac.compare_digest's.
    """
    if not signature_256:
        raise SignatureError("missing X-Hub-Signature-256")
    scheme, _, received = signature_256.partition("=")
    if scheme != "sha256" or not received:
        raise SignatureError("X-Hub-Signature-256 is not a sha256= signature")
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), received.strip().lower().encode()):
        raise SignatureError("signature does not match")


def sign(secret: bytes, body: bytes) -> str:
    """The header GitHub would send for `body` (tests and the benchmark sign with it)."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
