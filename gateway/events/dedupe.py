"""Each event delivered once, however many replicas publish it.

Most events have one publisher: the replica the registry's notification reached, or the one
that made a token decision or counted a failed sign-in. A policy revision and a signing key,
though, are loaded by every replica (and a notification the registry sends again may reach
another one), so those events carry an id derived from what they report
(`gateway/events/model.py`), and the sender claims that id before delivering:

- with `redis_url` set, in Redis (`SET key 1 NX EX ttl`): the first replica to claim it
  delivers, the others skip it;
- without Redis, in a file under the data dir (`O_CREAT | O_EXCL`): the workers of one host,
  or replicas that share the data dir, deliver it once; replicas with data dirs of their own
  each deliver it, with the same CloudEvents `id`, for the receiver to de-duplicate.

If Redis cannot be reached the event is delivered anyway (at least once beats never).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Protocol

from redis.exceptions import RedisError

log = logging.getLogger("registry_gateway.events")
CLAIM_TTL = 86400  # seconds a claim is kept: far longer than any delivery's retries
PRUNE_EVERY = 256  # claims between two sweeps of old claim files


class Claims(Protocol):
    async def claim(self, event_id: str) -> bool:
        """True if this process is the one to deliver the event `event_id`."""
        ...

    async def close(self) -> None:
        """Let go of what the claims hold (a connection)."""
        ...


class RedisClaims:
    """Claims in Redis, shared by every replica."""

    def __init__(self, client: object, prefix: str, ttl: int = CLAIM_TTL) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl = ttl
        self._down = False

    async def claim(self, event_id: str) -> bool:
        try:
            won = await self.client.set(  # type: ignore[attr-defined]
                self.prefix + event_id, b"1", nx=True, ex=self.ttl
            )
        except (RedisError, OSError) as exc:
            if not self._down:
                log.error(
                    "cannot claim events in Redis (%s); delivering them anyway, so a "
                    "receiver may get one from several replicas",
                    type(exc).__name__,
                    extra={"event": "webhook_claims_down"},
                )
            self._down = True
            return True
        self._down = False
        return bool(won)

    async def close(self) -> None:
        await self.client.aclose()  # type: ignore[attr-defined]


class FileClaims:
    """Claims as files in one directory: the workers of a host share them."""

    def __init__(self, directory: Path, ttl: int = CLAIM_TTL) -> None:
        self.directory = directory
        self.ttl = ttl
        self._count = 0

    async def close(self) -> None:
        pass

    async def claim(self, event_id: str) -> bool:
        path = self.directory / event_id
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            return False
        except OSError as exc:
            log.warning(
                "cannot claim event %s in %s (%s); delivering it",
                event_id,
                self.directory,
                exc.strerror,
                extra={"event": "webhook_claims_down"},
            )
            return True
        self._count += 1
        if self._count % PRUNE_EVERY == 0:
            self.prune()
        return True

    def prune(self) -> None:
        """Forget claims older than the TTL."""
        limit = time.time() - self.ttl
        try:
            entries = list(os.scandir(self.directory))
        except OSError:
            return
        for entry in entries:
            try:
                if entry.stat().st_mtime < limit:
                    os.unlink(entry.path)
            except OSError:
                pass
