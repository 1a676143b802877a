"""Lockout counts in Redis, shared by every replica: the rules of gateway/auth/lockout.py in Lua.

Per address or user key: a sorted set of failure times (the sliding window), a sorted set of
attempts under way, and a lock key and a wait key that expire by themselves; per account, a
sorted set of failure times. One script reserves an attempt and one settles it, each atomic
and one round trip, with Redis's own clock, so replicas whose clocks differ still agree. If
Redis is unreachable, sign-ins are not throttled (and the error is logged): an outage of the
counter must not lock everyone out.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.auth.lockout import (
    BACKOFF_CAP,
    KEPT,
    PENDING_TTL,
    Epoch,
    Keys,
    Limits,
    Outcome,
    Refusal,
    Scope,
)

log = logging.getLogger("registry_gateway.lockout")

# Shared by both scripts. KEYS: address f, p, lock, wait; [user f, p, lock, wait; account f];
# the epoch (see lockout.Epoch), last.
# Times are milliseconds.
_COMMON = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local groups = (#KEYS == 10) and 2 or 1
local function prune(g, window, pending_ttl)
  redis.call('ZREMRANGEBYSCORE', KEYS[4 * g - 3], '-inf', now - window)
  redis.call('ZREMRANGEBYSCORE', KEYS[4 * g - 2], '-inf', now - pending_ttl)
end
"""

# ARGV: ticket, window, pending ttl, backoff (ms), account limit, then limit and free per group.
# Returns {0} when reserved, else {scope (1 address, 2 user, 3 account), retry ms, locked}.
_RESERVE = (
    _COMMON
    + """
local ticket, window, pending_ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local backoff, account_limit = tonumber(ARGV[4]), tonumber(ARGV[5])
for g = 1, groups do
  prune(g, window, pending_ttl)
  local limit, free = tonumber(ARGV[4 + 2 * g]), tonumber(ARGV[5 + 2 * g])
  local locked = redis.call('PTTL', KEYS[4 * g - 1])
  if locked > 0 then return {g, locked, 1} end
  local failures = redis.call('ZCARD', KEYS[4 * g - 3])
  local pending = redis.call('ZCARD', KEYS[4 * g - 2])
  if limit > 0 and failures + pending >= limit then return {g, 1000, 0} end
  if backoff > 0 and failures >= free then
    if pending > 0 then return {g, 1000, 0} end
    local waiting = redis.call('PTTL', KEYS[4 * g])
    if waiting > 0 then return {g, waiting, 0} end
  end
end
if groups == 2 and account_limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[9], '-inf', now - window)
  if redis.call('ZCARD', KEYS[9]) >= account_limit then
    if redis.call('ZCARD', KEYS[6]) > 0 then return {3, 1000, 0} end
    local newest = redis.call('ZRANGE', KEYS[5], -1, -1, 'WITHSCORES')
    if newest[2] then return {3, tonumber(newest[2]) + window - now, 1} end
  end
end
for g = 1, groups do
  redis.call('ZADD', KEYS[4 * g - 2], now, ticket)
  redis.call('PEXPIRE', KEYS[4 * g - 2], pending_ttl)
end
return {0}
"""
)

# ARGV: ticket, outcome (failed, succeeded, uncounted), window, pending ttl, lockout, backoff,
# backoff cap (ms), account limit, kept, then limit and free per group.
# Returns the scopes whose lockout this failure started (1 address, 2 user, 3 account).
_SETTLE = (
    _COMMON
    + """
local ticket, outcome, window = ARGV[1], ARGV[2], tonumber(ARGV[3])
local pending_ttl, lockout = tonumber(ARGV[4]), tonumber(ARGV[5])
local backoff, cap = tonumber(ARGV[6]), tonumber(ARGV[7])
local account_limit, kept = tonumber(ARGV[8]), tonumber(ARGV[9])
local started = {}
for g = 1, groups do
  redis.call('ZREM', KEYS[4 * g - 2], ticket)
  prune(g, window, pending_ttl)
end
if outcome == 'failed' then
  redis.call('INCR', KEYS[#KEYS])
  for g = 1, groups do
    local f, lock, wait = KEYS[4 * g - 3], KEYS[4 * g - 1], KEYS[4 * g]
    local limit, free = tonumber(ARGV[8 + 2 * g]), tonumber(ARGV[9 + 2 * g])
    redis.call('ZADD', f, now, now .. '-' .. ticket)
    redis.call('ZREMRANGEBYRANK', f, 0, -(kept + 1))
    redis.call('PEXPIRE', f, window)
    local count = redis.call('ZCARD', f)
    if limit > 0 and count >= limit then
      redis.call('DEL', f, wait)
      if lockout > 0 then redis.call('SET', lock, '1', 'PX', lockout) end
      started[#started + 1] = g
    elseif backoff > 0 and count >= free then
      local pause = math.floor(math.min(cap, backoff * 2 ^ math.min(count - free, 64)))
      if pause > 0 then redis.call('SET', wait, '1', 'PX', pause) end
    end
  end
  if groups == 2 and account_limit > 0 then
    local a = KEYS[9]
    redis.call('ZREMRANGEBYSCORE', a, '-inf', now - window)
    local before = redis.call('ZCARD', a)
    redis.call('ZADD', a, now, now .. '-' .. ticket)
    redis.call('ZREMRANGEBYRANK', a, 0, -(account_limit + 1))
    redis.call('PEXPIRE', a, window)
    if before < account_limit and redis.call('ZCARD', a) >= account_limit then
      started[#started + 1] = 3
    end
  end
elseif outcome == 'succeeded' and groups == 2 then
  redis.call('DEL', KEYS[5], KEYS[8])
end
return started
"""
)

_SCOPES: dict[int, Scope] = {1: "address", 2: "user", 3: "account"}


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisLockStore:
    """`LockStore` in Redis, shared by every replica that uses the same server and service."""

    shared = True

    def __init__(self, client: aioredis.Redis[bytes], limits: Limits, prefix: str) -> None:
        self.client = client
        self.limits = limits
        self.prefix = prefix
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)
        self._epoch_key = f"{prefix}epoch"
        self._epoch = Epoch()

    def epoch(self) -> Hashable:
        return self._epoch.current()

    async def refresh_epoch(self) -> None:
        try:
            value = await self.client.get(self._epoch_key)
        except RedisError as exc:
            _unreachable(exc)
            return  # the epoch goes stale: no replays until Redis answers again
        self._epoch.read(int(value or 0))

    def _keys(self, keys: Keys) -> list[str]:
        names = []
        for scope, key in keys.scoped():
            base = f"{self.prefix}{key}"
            if scope == "account":
                names.append(f"{base}:failures")
            else:
                names += [f"{base}:failures", f"{base}:pending", f"{base}:lock", f"{base}:wait"]
        return [*names, self._epoch_key]

    def _per_group(self) -> list[int]:
        limits = self.limits
        return [
            limits.address,
            limits.free(limits.address),
            limits.user,
            limits.free(limits.user),
        ]

    async def reserve(self, keys: Keys, ticket: str) -> Refusal | None:
        limits = self.limits
        args: list[str | int] = [
            ticket,
            _ms(limits.window),
            _ms(PENDING_TTL),
            int(limits.backoff * 1000),
        ]
        args += [limits.account, *self._per_group()]
        try:
            answer = await self._reserve(keys=self._keys(keys), args=args)
        except RedisError as exc:
            _unreachable(exc)
            return None
        if not answer or int(answer[0]) == 0:
            return None
        scope, retry_ms, locked = (int(part) for part in answer[:3])
        return Refusal(_SCOPES[scope], max(1, -(-retry_ms // 1000)), bool(locked))

    async def settle(self, keys: Keys, ticket: str, outcome: Outcome) -> list[Scope]:
        limits = self.limits
        cap = min(BACKOFF_CAP, limits.lockout) if limits.lockout > 0 else BACKOFF_CAP
        args: list[str | int] = [ticket, outcome, _ms(limits.window), _ms(PENDING_TTL)]
        args += [int(limits.lockout * 1000), int(limits.backoff * 1000), _ms(cap)]
        args += [limits.account, KEPT, *self._per_group()]
        try:
            started = await self._settle(keys=self._keys(keys), args=args)
        except RedisError as exc:
            _unreachable(exc)
            return []
        return [_SCOPES[int(scope)] for scope in started]


def _unreachable(exc: RedisError) -> None:
    log.error("lockout store unreachable: %s", exc, extra={"event": "lockout_store_down"})
