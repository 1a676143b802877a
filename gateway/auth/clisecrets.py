"""CLI secrets: what people who sign in through the OpenID provider give `docker login`.

A person makes one on the UI's CLI secrets page after an OIDC sign-in; it is shown once. It
is `rgw_cli_<id>_<random>`: the store keeps, under the id, the owner's name, a label, the
expiry, the groups at creation and the SHA-256 of the whole secret (never the secret). When
the provider gave a refresh token, it is kept too, encrypted with a key derived from the
secret itself, so only the secret's holder can have it used: each use then asks the provider
who the person is now (at most every `oidc_cli_secret_recheck`; 0: on every use), and a person
the provider no longer signs in, or whose groups changed, is refused or gets the rights of the
groups they have now.

Where: an SQLite file in the data dir (the workers of one host), or Redis when `redis_url` is
set (every replica), as the lockout counts are kept (gateway/auth/lockstore.py).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cryptography.fernet import Fernet, InvalidToken

from gateway.auth.credentials import sha256_hex

if TYPE_CHECKING:
    import redis.asyncio as aioredis

PREFIX = "rgw_cli_"
FILE = "cli-secrets.sqlite3"
RECHECK_SECONDS = 10.0  # how long a provider's "yes" stands (oidc_cli_secret_recheck's default)
MAX_PER_USER = 20
MAX_LABEL = 100


class CliSecretError(Exception):
    """A CLI secret that does not sign in; the message may be shown to its holder."""


@dataclass(frozen=True, slots=True)
class CliSecret:
    """One CLI secret's record (no secret in it)."""

    id: str
    user: str
    label: str
    created: float
    expires: float
    groups: tuple[str, ...]
    sha256: str
    refresh: str | None = None  # the provider's refresh token, encrypted with the secret

    def data(self) -> dict[str, object]:
        """What the UI shows of it."""
        return {
            "id": self.id,
            "label": self.label,
            "created": self.created,
            "expires": self.expires,
        }


def parse(secret: str) -> str | None:
    """The id of a CLI secret's text, or None when it is not one."""
    if not secret.startswith(PREFIX):
        return None
    ident, sep, rest = secret[len(PREFIX) :].partition("_")
    if not sep or len(ident) != 16 or not rest or len(secret) > 200:
        return None
    return ident


def _box(secret: str) -> Fernet:
    key = hmac.new(secret.encode(), b"registry-gateway cli secret refresh", hashlib.sha256)
    return Fernet(base64.urlsafe_b64encode(key.digest()))


def make(
    user: str, label: str, ttl: float, groups: frozenset[str], refresh: str | None
) -> tuple[str, CliSecret]:
    """A new secret (shown once) and its record."""
    ident = secrets.token_hex(8)
    secret = f"{PREFIX}{ident}_{secrets.token_urlsafe(32)}"
    sealed = _box(secret).encrypt(refresh.encode()).decode() if refresh else None
    now = time.time()
    record = CliSecret(
        ident, user, label[:MAX_LABEL], now, now + ttl, tuple(sorted(groups)), sha256_hex(secret)
    )
    return secret, CliSecret(**{**asdict(record), "refresh": sealed})


def opened(record: CliSecret, secret: str) -> str | None:
    """The refresh token a record keeps for this secret, if any."""
    if record.refresh is None:
        return None
    try:
        return _box(secret).decrypt(record.refresh.encode()).decode()
    except InvalidToken:
        return None


class Store(Protocol):
    async def put(self, record: CliSecret) -> None: ...

    async def update(self, record: CliSecret) -> None:
        """Replace a record that is still there (a revoked one stays revoked)."""

    async def get(self, ident: str) -> CliSecret | None: ...

    async def of(self, user: str) -> list[CliSecret]: ...

    async def delete(self, user: str, ident: str) -> bool: ...


def _load(text: str | bytes) -> CliSecret:
    data = json.loads(text)
    data["groups"] = tuple(data["groups"])
    return CliSecret(**data)


class SqliteStore:
    """The records in an SQLite file (WAL), shared by the workers of one host."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path, timeout=5, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS cli_secrets (id TEXT PRIMARY KEY, user TEXT NOT NULL, "
                "expires REAL NOT NULL, data TEXT NOT NULL)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS cli_secrets_user ON cli_secrets (user)")
            self.path.chmod(0o600)
            self._db = db
        return self._db

    async def put(self, record: CliSecret) -> None:
        self._conn().execute(
            "INSERT OR REPLACE INTO cli_secrets VALUES (?, ?, ?, ?)",
            (record.id, record.user, record.expires, json.dumps(asdict(record))),
        )

    async def update(self, record: CliSecret) -> None:
        self._conn().execute(
            "UPDATE cli_secrets SET data = ? WHERE id = ?",
            (json.dumps(asdict(record)), record.id),
        )

    async def get(self, ident: str) -> CliSecret | None:
        row = self._conn().execute("SELECT data FROM cli_secrets WHERE id = ?", (ident,)).fetchone()
        return _load(row[0]) if row else None

    async def of(self, user: str) -> list[CliSecret]:
        db = self._conn()
        db.execute("DELETE FROM cli_secrets WHERE expires < ?", (time.time(),))
        rows = db.execute(
            "SELECT data FROM cli_secrets WHERE user = ? ORDER BY expires", (user,)
        ).fetchall()
        return [_load(row[0]) for row in rows]

    async def delete(self, user: str, ident: str) -> bool:
        done = self._conn().execute(
            "DELETE FROM cli_secrets WHERE id = ? AND user = ?", (ident, user)
        )
        return done.rowcount > 0


class RedisStore:
    """The records in Redis (every replica), each key expiring with its secret."""

    def __init__(self, client: aioredis.Redis[bytes], prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    async def put(self, record: CliSecret) -> None:
        ttl = max(1, int(record.expires - time.time()) + 1)
        key = f"{self.prefix}id:{record.id}"
        await self.client.set(key, json.dumps(asdict(record)).encode(), ex=ttl)
        await self.client.sadd(f"{self.prefix}user:{record.user}", record.id)

    async def update(self, record: CliSecret) -> None:
        key = f"{self.prefix}id:{record.id}"
        data = json.dumps(asdict(record)).encode()
        await self.client.set(key, data, xx=True, keepttl=True)

    async def get(self, ident: str) -> CliSecret | None:
        found = await self.client.get(f"{self.prefix}id:{ident}")
        return _load(found) if found else None

    async def of(self, user: str) -> list[CliSecret]:
        ids = await self.client.smembers(f"{self.prefix}user:{user}")
        out = []
        for raw in ids:
            ident = raw.decode()
            found = await self.get(ident)
            if found is None:
                await self.client.srem(f"{self.prefix}user:{user}", ident)
            else:
                out.append(found)
        return sorted(out, key=lambda r: r.expires)

    async def delete(self, user: str, ident: str) -> bool:
        found = await self.get(ident)
        if found is None or found.user != user:
            return False
        await self.client.delete(f"{self.prefix}id:{ident}")
        await self.client.srem(f"{self.prefix}user:{user}", ident)
        return True


class CliSecrets:
    """Making, listing, revoking and checking CLI secrets over a store."""

    def __init__(self, store: Store, max_ttl: float) -> None:
        self.store = store
        self.max_ttl = max_ttl
        self._lock = asyncio.Lock()

    async def create(
        self, user: str, label: str, ttl: float, groups: frozenset[str], refresh: str | None
    ) -> tuple[str, CliSecret]:
        if not 0 < ttl <= self.max_ttl:
            raise CliSecretError(f"a CLI secret lives at most {int(self.max_ttl // 86400)} days")
        async with self._lock:
            if len(await self.store.of(user)) >= MAX_PER_USER:
                raise CliSecretError(
                    f"you have {MAX_PER_USER} CLI secrets already: revoke one first"
                )
            secret, record = make(user, label, ttl, groups, refresh)
            await self.store.put(record)
        return secret, record

    async def of(self, user: str) -> list[CliSecret]:
        return await self.store.of(user)

    async def revoke(self, user: str, ident: str) -> bool:
        return await self.store.delete(user, ident)

    async def keep_refresh(self, record: CliSecret, secret: str, refresh: str) -> CliSecret:
        """Keep the refresh token the provider rotated to (sealed with the secret, as at
        creation): providers that rotate refuse the old one at its next use."""
        sealed = _box(secret).encrypt(refresh.encode()).decode()
        updated = CliSecret(**{**asdict(record), "refresh": sealed})
        await self.store.update(updated)
        return updated

    async def check(self, secret: str) -> CliSecret:
        """The record of a right, unexpired secret; CliSecretError otherwise."""
        ident = parse(secret)
        record = await self.store.get(ident) if ident is not None else None
        if record is None or not hmac.compare_digest(record.sha256, sha256_hex(secret)):
            raise CliSecretError("unknown or revoked CLI secret")
        if record.expires <= time.time():
            raise CliSecretError("this CLI secret has expired: make a new one in the UI")
        return record


def cli_secrets_for(
    data_dir: Path, redis_url: str | None, service: str, max_ttl: float
) -> CliSecrets:
    """Redis when `redis_url` is set (every replica), else an SQLite file in the data dir."""
    if redis_url:
        import redis.asyncio as aioredis

        client = aioredis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        return CliSecrets(RedisStore(client, f"registry-gateway:{service}:cli:"), max_ttl)
    return CliSecrets(SqliteStore(data_dir / FILE), max_ttl)


__all__ = [
    "PREFIX",
    "CliSecret",
    "CliSecretError",
    "CliSecrets",
    "cli_secrets_for",
    "opened",
    "parse",
]
