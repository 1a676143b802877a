"""Failure counts in Redis, shared by every replica (the same rules as the in-memory counter).

Each key has a sorted set of failure times (the sliding window), a lock key and a wait key
that expire by themselves. One Lua script counts a failure atomically with Redis's own
clock, so replicas whose clocks differ still agree.
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.auth.lockout import Rules

log = logging.getLogger("registry_gateway.lockout")

# KEYS: failures zset, lock key, wait key. ARGV: window ms, limit, lockout ms.
# Returns {count, locked (0/1)}.
_FAILED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
redis.call('ZADD', KEYS[1], now, now .. '-' .. redis.call('INCR', KEYS[1] .. ':seq'))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1] .. ':seq', ARGV[1])
local count = redis.call('ZCARD', KEYS[1])
local limit = tonumber(ARGV[2])
if limit > 0 and count >= limit then
  redis.call('DEL', KEYS[1], KEYS[3])
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
  return {count, 1}
end
return {count, 0}
"""


class RedisFailureCounter:
    """`FailureCounter` in Redis. If Redis is unreachable, sign-ins are not throttled (and the
    failure is logged): an outage of the counter must not lock everyone out."""

    def __init__(self, client: aioredis.Redis[bytes], rules: Rules, prefix: str) -> None:
        self.client = client
        self.rules = rules
        self.prefix = prefix
        self._failed = client.register_script(_FAILED)

    def _keys(self, key: str) -> tuple[str, str, str]:
        base = f"{self.prefix}{key}"
        return f"{base}:failures", f"{base}:lock", f"{base}:wait"

    async def retry_after(self, key: str) -> tuple[float, bool]:
        _, lock, wait = self._keys(key)
        try:
            locked_ms, wait_ms = await self.client.pttl(lock), await self.client.pttl(wait)
        except RedisError as exc:
            log.error("lockout store unreachable: %s", exc, extra={"event": "lockout_store_down"})
            return 0.0, False
        if locked_ms > 0:
            return locked_ms / 1000, True
        return max(0.0, wait_ms / 1000), False

    async def failed(self, key: str) -> tuple[float, bool]:
        failures, lock, wait = self._keys(key)
        window_ms = max(1, int(self.rules.window * 1000))
        lockout_ms = max(1, int(self.rules.lockout * 1000))
        try:
            count, locked = await self._failed(
                keys=[failures, lock, wait], args=[window_ms, self.rules.failures, lockout_ms]
            )
            if locked:
                return self.rules.lockout, True
            pause = self.rules.wait_after(int(count))
            if pause > 0:
                await self.client.set(wait, "1", px=max(1, int(pause * 1000)))
            return pause, False
        except RedisError as exc:
            log.error("lockout store unreachable: %s", exc, extra={"event": "lockout_store_down"})
            return 0.0, False

    async def reset(self, key: str) -> None:
        try:
            await self.client.delete(*self._keys(key))
        except RedisError as exc:
            log.error("lockout store unreachable: %s", exc, extra={"event": "lockout_store_down"})
