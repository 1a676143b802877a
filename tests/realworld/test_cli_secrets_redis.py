"""CLI secrets kept in a real Redis shared by replicas (docs/oidc.md, "CLI secrets").

Each replica is its own `cli_secrets_for(..., redis_url, ...)` with its own connection; the
tests read Redis directly (every key under the service's prefix) to see what an operator's
Redis holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.auth.clisecrets import (
    CliSecretError,
    CliSecrets,
    RedisStore,
    cli_secrets_for,
    opened,
)

from tests.support.redis import RedisServer

DAY = 86400.0
MAX_TTL = 90 * DAY
SERVICE = "registry.example.test"
OTHER_SERVICE = "staging.example.test"
REFRESH = "provider-refresh-token-7d2a41"  # what the provider gave at the UI sign-in
ROTATED = "new-token"  # what a rotating provider answered a refresh with
DEVS = frozenset({"platform-devs"})
REFUSED = "unknown or revoked CLI secret"


def prefix(service: str) -> str:
    return f"registry-gateway:{service}:cli:"


@asynccontextmanager
async def replicas(
    tmp_path: Path, url: str, *services: str
) -> AsyncIterator[tuple[list[CliSecrets], aioredis.Redis[bytes]]]:
    """One store per service named (each its own Redis connection, as replicas have) and a
    plain client to look at Redis; every connection closed at the end."""
    async with AsyncExitStack() as connections:
        stores = []
        for n, service in enumerate(services):
            each = cli_secrets_for(tmp_path / f"replica-{n}", url, service, MAX_TTL)
            assert isinstance(each.store, RedisStore)  # a redis URL means Redis, not SQLite
            await connections.enter_async_context(each.store.client)
            stores.append(each)
        raw: aioredis.Redis[bytes] = aioredis.from_url(url)
        await connections.enter_async_context(raw)
        yield stores, raw


async def everything_under(raw: aioredis.Redis[bytes], service: str) -> bytes:
    """Every key and value Redis holds under a service's prefix (records are strings under
    `id:`, each owner's list of ids a set under `user:`)."""
    out = b""
    async for key in raw.scan_iter(match=f"{prefix(service)}*"):
        out += key
        if key.startswith(f"{prefix(service)}user:".encode()):
            out += b"".join(await raw.smembers(key))
        else:
            out += await raw.get(key) or b""
    return out


async def ttl_of(raw: aioredis.Redis[bytes], ident: str) -> int:
    ttl: int = await raw.ttl(f"{prefix(SERVICE)}id:{ident}")
    return ttl


def test_a_secret_made_on_one_replica_checks_out_lists_and_is_revoked_on_another(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async def scenario() -> None:
        async with replicas(tmp_path, redis_server.url, SERVICE, SERVICE) as ((a, b), _):
            secret, record = await a.create("dana", "laptop", DAY, DEVS, REFRESH)

            assert await b.check(secret) == record
            assert [r.data() for r in await b.of("dana")] == [record.data()]
            assert await b.of("erin") == []

            # Only its owner revokes it; then the other replica refuses it at once.
            assert not await b.revoke("erin", record.id)
            assert await a.check(secret) == record
            assert await b.revoke("dana", record.id)
            with pytest.raises(CliSecretError, match=REFUSED):
                await a.check(secret)
            assert await a.of("dana") == []
            assert not await a.revoke("dana", record.id)

    asyncio.run(scenario())


def test_redis_holds_neither_secret_nor_refresh_token_and_the_record_expires(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async def scenario() -> None:
        async with replicas(tmp_path, redis_server.url, SERVICE) as ((a,), raw):
            secret, record = await a.create("dana", "laptop", DAY, DEVS, REFRESH)

            held = await everything_under(raw, SERVICE)
            assert record.id.encode() in held and b"laptop" in held  # the record is there
            assert secret.encode() not in held
            assert secret.split("_", 3)[3].encode() not in held  # nor its random part
            assert REFRESH.encode() not in held

            ttl = await ttl_of(raw, record.id)
            assert 0 < ttl <= DAY + 1

    asyncio.run(scenario())


def test_a_rotated_refresh_token_kept_on_one_replica_opens_on_another_and_never_revives(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async def scenario() -> None:
        async with replicas(tmp_path, redis_server.url, SERVICE, SERVICE) as ((a, b), raw):
            secret, record = await a.create("dana", "laptop", DAY, DEVS, REFRESH)
            kept = await a.keep_refresh(record, secret, ROTATED)

            seen_on_b = await b.check(secret)
            assert seen_on_b == kept
            assert opened(seen_on_b, secret) == ROTATED
            assert opened(seen_on_b, secret.replace("_", "-")) is None  # only its secret opens it
            assert ROTATED.encode() not in await everything_under(raw, SERVICE)
            assert 0 < await ttl_of(raw, record.id) <= DAY + 1  # still expires with the secret

            # A refresh racing a revoke must not bring the revoked secret back.
            assert await b.revoke("dana", record.id)
            await a.keep_refresh(seen_on_b, secret, "token-after-revoke")
            for replica in (a, b):
                with pytest.raises(CliSecretError, match=REFUSED):
                    await replica.check(secret)
                assert await replica.of("dana") == []
            assert await raw.exists(f"{prefix(SERVICE)}id:{record.id}") == 0

    asyncio.run(scenario())


def test_two_services_on_one_redis_do_not_see_each_others_secrets(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async def scenario() -> None:
        services = (SERVICE, OTHER_SERVICE)
        async with replicas(tmp_path, redis_server.url, *services) as ((prod, staging), raw):
            secret, record = await prod.create("dana", "laptop", DAY, DEVS, REFRESH)
            staging_secret, staging_record = await staging.create("dana", "ci", DAY, DEVS, None)

            with pytest.raises(CliSecretError, match=REFUSED):
                await staging.check(secret)
            with pytest.raises(CliSecretError, match=REFUSED):
                await prod.check(staging_secret)
            assert [r.id for r in await prod.of("dana")] == [record.id]
            assert [r.id for r in await staging.of("dana")] == [staging_record.id]

            assert not await staging.revoke("dana", record.id)
            assert await prod.check(secret) == record
            assert record.id.encode() not in await everything_under(raw, OTHER_SERVICE)

    asyncio.run(scenario())
