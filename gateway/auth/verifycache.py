"""Credentials recently proven right, so that a `docker push` costs one slow check, not twenty.

An entry is added only after a slow hash or an LDAP bind succeeded. Its key is a MAC (keyed
BLAKE2b), under a random key made at start and never stored, of the backend, the user name,
the password and a `stamp` of the stored credential (the hash in the policy or htpasswd
file): no password is kept, a memory dump gives nothing to test guesses against without the
MAC key, and changing a user's stored hash makes every old entry unreachable at once. A wrong
password never finds an entry, because an entry exists only for a password that was checked
right.

Per process and in memory: replicas each keep their own, which only saves work, never decides.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any


class VerificationCache:
    """A bounded LRU of recently verified credentials, each with a payload (LDAP groups)."""

    def __init__(
        self, ttl: float, size: int = 10000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.size = size
        self._clock = clock
        self._key = secrets.token_bytes(32)
        self._items: OrderedDict[bytes, tuple[float, str, Any]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.ttl > 0 and self.size > 0

    def _digest(self, backend: str, username: str, password: str, stamp: str) -> bytes:
        message = b"\0".join(part.encode() for part in (backend, username, stamp, password))
        # Keyed BLAKE2b is a MAC (RFC 7693) like HMAC-SHA256, at a fraction of OpenSSL's
        # per-call HMAC set-up: this runs on every request that signs in with a password.
        return hashlib.blake2b(message, key=self._key, digest_size=32).digest()

    def get(self, backend: str, username: str, password: str, stamp: str = "") -> Any | None:
        """The payload stored for exactly these credentials, if verified within the TTL."""
        if not self.enabled:
            return None
        key = self._digest(backend, username, password, stamp)
        item = self._items.get(key)
        if item is None:
            return None
        expires, _, payload = item
        if self._clock() >= expires:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return payload

    def expires(self, backend: str, username: str, password: str, stamp: str = "") -> float | None:
        """When the entry for these credentials stops vouching for them (on this cache's
        clock); None when there is none."""
        if not self.enabled:
            return None
        item = self._items.get(self._digest(backend, username, password, stamp))
        return item[0] if item is not None else None

    def put(
        self, backend: str, username: str, password: str, stamp: str = "", payload: Any = True
    ) -> None:
        """Remember credentials that were just verified right."""
        if not self.enabled:
            return
        key = self._digest(backend, username, password, stamp)
        self._items[key] = (self._clock() + self.ttl, username, payload)
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def forget(self, username: str | None = None) -> int:
        """Drop every entry (of one user, when named); returns how many went."""
        if username is None:
            count = len(self._items)
            self._items.clear()
            return count
        doomed = [key for key, (_, name, _p) in self._items.items() if name == username]
        for key in doomed:
            del self._items[key]
        return len(doomed)

    def __len__(self) -> int:
        return len(self._items)
