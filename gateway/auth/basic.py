"""HTTP Basic credentials (RFC 7617): the one parser, for the token endpoint and the UI.

Whatever the bytes, the answer is a name and a password, None for no credentials at all, or
AuthenticationFailed: never another exception, so a hostile header is a 401, not a 500.
"""

from __future__ import annotations

import binascii

from gateway.auth.identity import AuthenticationFailed

MALFORMED = "malformed basic credentials"


def basic_credentials(value: str) -> tuple[str, str] | None:
    """User name and password from the part of `Authorization: Basic ...` after the scheme.

    None for an empty name with an empty password (`Basic Og==`, what some clients send when
    they have no credentials): the caller is anonymous. AuthenticationFailed for anything
    that is not `name:password` in base64 of UTF-8 with a non-empty name. The message never
    holds what was sent: a header without a colon may be a bare secret.
    """
    try:
        # Header values arrive as Latin-1 text: anything else than ASCII is not base64.
        raw = binascii.a2b_base64(value.strip().encode("ascii"), strict_mode=True)
        decoded = raw.decode("utf-8")
    except (UnicodeError, binascii.Error):
        raise AuthenticationFailed(MALFORMED) from None
    username, sep, password = decoded.partition(":")
    if not sep:
        raise AuthenticationFailed(MALFORMED)
    if not username:
        if not password:
            return None
        raise AuthenticationFailed(MALFORMED)
    return username, password
