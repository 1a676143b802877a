"""An htpasswd file of bcrypt entries (`htpasswd -B`, the registry's own format), kept current.

Only bcrypt entries are used: the file's other schemes (MD5 `$apr1$`, `{SHA}`, crypt) are weak
and are skipped with a warning, as are malformed lines. A file that cannot be read leaves the
previous entries in force (a half-written file never signs anybody out) unless it was deleted,
which empties the backend: removing the file removes its users.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from gateway.policy.hashformats import BCRYPT

log = logging.getLogger("registry_gateway")

# What htpasswd and crypt(3) write, by prefix: named in warnings, never quoted.
_SCHEMES = (
    ("$2a$", "a malformed bcrypt hash"),
    ("$2b$", "a malformed bcrypt hash"),
    ("$2y$", "a malformed bcrypt hash"),
    ("$apr1$", "MD5 ($apr1$)"),
    ("{SHA}", "SHA-1 ({SHA})"),
    ("$1$", "MD5-crypt ($1$)"),
    ("$5$", "SHA-256-crypt ($5$)"),
    ("$6$", "SHA-512-crypt ($6$)"),
    ("$argon2", "argon2 (in the policy only)"),
)
_DES_CRYPT = re.compile(r"[./0-9A-Za-z]{13}")


def scheme_of(stored: str) -> str:
    """The name of the scheme of a stored password that is not bcrypt; not one character
    of it (a line in plain text would give away its password)."""
    for prefix, name in _SCHEMES:
        if stored.startswith(prefix):
            return name
    if _DES_CRYPT.fullmatch(stored):
        return "DES crypt"
    return "an unknown scheme or plain text"


@dataclass(frozen=True, slots=True)
class HtpasswdEntries:
    """One reading of the file: user name -> bcrypt hash."""

    hashes: dict[str, str]
    revision: str  # SHA-256 prefix of the file's bytes ("" when there is no file)
    warnings: tuple[str, ...] = ()


def parse(text: str, source: str = "htpasswd") -> HtpasswdEntries:
    """Read `user:hash` lines; comments (#) and blank lines are ignored."""
    hashes: dict[str, str] = {}
    warnings: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, stored = line.partition(":")
        if not sep or not user:
            warnings.append(f"{source}:{number}: not a user:hash line; skipped")
        elif not BCRYPT.fullmatch(stored):
            # The line number and the scheme's name only: the line may hold a password.
            warnings.append(
                f"{source}:{number}: only bcrypt hashes are accepted (htpasswd -B), "
                f"not {scheme_of(stored)}; skipped"
            )
        elif user in hashes:
            warnings.append(f"{source}:{number}: user {user!r} is repeated; the first entry counts")
        else:
            hashes[user] = stored
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return HtpasswdEntries(hashes, digest, tuple(warnings))


class HtpasswdFile:
    """The current entries of one htpasswd file; `reload()` re-reads it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.entries = HtpasswdEntries({}, "")
        self.last_error: str | None = None

    def get(self, username: str) -> str | None:
        """The bcrypt hash of `username`, if the file has one."""
        return self.entries.hashes.get(username)

    def reload(self) -> bool:
        """Re-read the file; True when its users or hashes changed."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = ""
            self.last_error = f"{self.path} does not exist: no htpasswd users"
            log.warning(self.last_error, extra={"event": "htpasswd_missing"})
        except (OSError, UnicodeDecodeError) as exc:
            self.last_error = f"cannot read {self.path}: {exc}; keeping the previous entries"
            log.error(self.last_error, extra={"event": "htpasswd_error"})
            return False
        else:
            self.last_error = None
        entries = parse(text, str(self.path))
        for warning in entries.warnings:
            log.warning(warning, extra={"event": "htpasswd_warning"})
        changed = entries.hashes != self.entries.hashes
        self.entries = entries
        if changed:
            log.info(
                "htpasswd %s: %d users",
                self.path,
                len(entries.hashes),
                extra={"event": "htpasswd_loaded", "revision": entries.revision},
            )
        return changed
