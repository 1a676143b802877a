"""Robot secrets and personal access tokens: how they look, how they are made and stored.

Both are random 256-bit secrets with a recognisable prefix, so that secret scanners can spot a
leaked one and the gateway can tell a token from a password without trying a slow hash. The
policy holds only their SHA-256: at this entropy a salted slow hash adds nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
from collections.abc import Iterable

ROBOT_PREFIX = "rgw_robot_"
TOKEN_PREFIX = "rgw_pat_"
SECRET_BYTES = 32


def sha256_hex(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret(prefix: str) -> str:
    """A fresh secret: the prefix and 256 random bits, URL-safe base64 (no padding)."""
    return prefix + secrets.token_urlsafe(SECRET_BYTES)


def is_access_token(password: str) -> bool:
    """Whether a password is shaped like a personal access token (checked by hash lookup only)."""
    return password.startswith(TOKEN_PREFIX)


def _yaml(entry: dict[str, object], path: Iterable[str]) -> str:
    """`entry` nested under the keys of `path`, as block YAML ready to paste into a policy."""
    lines = []
    depth = 0
    for depth, key in enumerate(path):
        lines.append(f"{'  ' * depth}{key}:")
    indent = "  " * (depth + 1)
    for key, value in entry.items():
        if isinstance(value, list):
            text = "[" + ", ".join(json.dumps(v) for v in value) + "]"
        elif isinstance(value, dt.date):
            text = value.isoformat()
        else:
            text = json.dumps(value)  # a JSON string is a YAML double-quoted scalar
        lines.append(f"{indent}{key}: {text}")
    return "\n".join(lines) + "\n"


def robot_entry(
    name: str, secret: str, *, expires: dt.date | None = None, description: str = ""
) -> str:
    """The `robots:` entry for a robot with this secret."""
    entry: dict[str, object] = {"token_sha256": sha256_hex(secret)}
    if expires is not None:
        entry["expires"] = expires
    if description:
        entry["description"] = description
    return _yaml(entry, ("robots", name))


def token_entry(
    user: str,
    name: str,
    secret: str,
    *,
    expires: dt.date | None = None,
    actions: Iterable[str] | None = None,
    description: str = "",
) -> str:
    """The `users.USER.tokens:` entry for a personal access token with this secret."""
    entry: dict[str, object] = {"token_sha256": sha256_hex(secret)}
    if expires is not None:
        entry["expires"] = expires
    if actions is not None:
        entry["actions"] = list(actions)
    if description:
        entry["description"] = description
    return _yaml(entry, ("users", user, "tokens", name))
