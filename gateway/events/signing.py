"""The signature on every webhook request: HMAC-SHA256 with the subscription's secret over
the timestamp, a dot and the body, so a receiver can check both who sent it and when.

    X-Registry-Gateway-Timestamp: 1767225600
    X-Registry-Gateway-Signature: sha256=<64 hex digits>

The timestamp is the attempt's own (a retry is signed afresh), so a receiver may refuse any
request older than a few minutes (`verify`'s `tolerance`), and a recorded request replayed
later fails. docs/events.md has a receiver that checks both, in Python.
"""

from __future__ import annotations

import hashlib
import hmac

TIMESTAMP_HEADER = "X-Registry-Gateway-Timestamp"
SIGNATURE_HEADER = "X-Registry-Gateway-Signature"
TOLERANCE = 300  # seconds a receiver should accept a timestamp away from its clock


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """`sha256=` and the hex HMAC-SHA256 of `<timestamp>.<body>`."""
    message = str(timestamp).encode("ascii") + b"." + body
    return "sha256=" + hmac.new(secret, message, hashlib.sha256).hexdigest()


def headers(secret: bytes, timestamp: int, body: bytes) -> dict[str, str]:
    """The two headers that sign `body` at `timestamp`."""
    return {
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(secret, timestamp, body),
    }


def verify(
    secret: bytes,
    timestamp: str | None,
    signed: str | None,
    body: bytes,
    *,
    now: float,
    tolerance: float = TOLERANCE,
) -> bool:
    """Whether a request's headers sign `body` with `secret` at a time within `tolerance`
    seconds of `now` (what a receiver does; the tests and `webhook test` use it too)."""
    if not timestamp or not signed or not timestamp.isdigit() or len(timestamp) > 12:
        return False
    if abs(now - int(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(signed, signature(secret, int(timestamp), body))
