"""CLI secrets (docs/oidc.md, "CLI secrets"): the store, and signing in with one.

The store is the real SQLite file in a temporary data dir. The provider behind a secret is a
small stand-in for `People.refresh` (counting its calls), except in the last test, where the
real `People.refresh` talks to a `CiIssuer` and a token endpoint through mock transports.
"""

from __future__ import annotations

import asyncio
import json
import time
import types
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import httpx
import httpx2
import pytest
from authlib.integrations.httpx_client import AsyncOAuth2Client

from gateway.auth import clisecrets
from gateway.auth.clisecrets import (
    MAX_LABEL,
    MAX_PER_USER,
    CliSecretError,
    CliSecrets,
    cli_secrets_for,
)
from gateway.auth.identity import AuthenticationFailed, Authenticator, Identity
from gateway.auth.oidc import OidcRefused, Verifier
from gateway.auth.people import People, Person
from gateway.policy.engine import Engine
from gateway.policy.load import load_texts

from tests.support.oidc import CiIssuer

DAY = 86400.0
MAX_TTL = 90 * DAY
SERVICE = "unit-registry"
ISSUER = "http://127.0.0.1:8398"
REFRESH = "provider-refresh-token-4f1c9e"  # what the provider gave at the UI sign-in
DEVS = frozenset({"platform-devs"})

POLICY = """
namespaces:
  acme: {visibility: private}
teams:
  builders:
    oidc_groups: [platform-devs]
grants:
  - to: [team:builders]
    repositories: ["acme/**"]
    actions: [pull, push]
"""


def store(data_dir: Path) -> CliSecrets:
    return cli_secrets_for(data_dir, None, SERVICE, MAX_TTL)


def stored_bytes(data_dir: Path) -> bytes:
    """Every byte SQLite wrote for the store (the file and, in WAL mode, its journal)."""
    return b"".join(p.read_bytes() for p in sorted(data_dir.glob(f"{clisecrets.FILE}*")))


def clock_at(when: float) -> types.SimpleNamespace:
    """A stand-in for the module `time` as the store sees it: the wall clock reads `when`."""
    return types.SimpleNamespace(time=lambda: when)


# -- the store --------------------------------------------------------------------------------


def test_a_made_secret_checks_out_and_neither_it_nor_the_refresh_token_is_stored(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        secrets = store(tmp_path)
        secret, record = await secrets.create("dana", "laptop", DAY, DEVS, REFRESH)
        assert secret.startswith(f"rgw_cli_{record.id}_")
        assert await secrets.check(secret) == record
        assert (record.user, record.label, record.groups) == ("dana", "laptop", ("platform-devs",))
        assert record.expires == pytest.approx(record.created + DAY)
        assert clisecrets.opened(record, secret) == REFRESH

        kept = stored_bytes(tmp_path)
        assert record.id.encode() in kept and b"laptop" in kept  # the record is there
        random_part = secret.rsplit("_", 1)[1]
        assert random_part.encode() not in kept
        assert REFRESH.encode() not in kept

    asyncio.run(scenario())


def test_wrong_revoked_and_expired_secrets_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        secrets = store(tmp_path)
        secret, record = await secrets.create("dana", "laptop", DAY, DEVS, None)
        other, _ = await secrets.create("dana", "ci", DAY, DEVS, None)
        unknown = f"rgw_cli_{'0' * 16}_{secret.rsplit('_', 1)[1]}"
        wrong = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
        # An unknown id, a known id with a wrong secret and a malformed one: one answer.
        messages = set()
        for bad in (unknown, wrong, "rgw_cli_short", other[:-1]):
            with pytest.raises(CliSecretError) as refused:
                await secrets.check(bad)
            messages.add(str(refused.value))
        assert messages == {"unknown or revoked CLI secret"}

        assert await secrets.revoke("dana", record.id)
        with pytest.raises(CliSecretError, match="unknown or revoked"):
            await secrets.check(secret)

        assert (await secrets.check(other)).label == "ci"
        monkeypatch.setattr(clisecrets, "time", clock_at(time.time() + DAY + 1))
        with pytest.raises(CliSecretError, match="expired"):
            await secrets.check(other)

    asyncio.run(scenario())


def test_lifetime_count_and_label_are_bounded(tmp_path: Path) -> None:
    async def scenario() -> None:
        secrets = store(tmp_path)
        for ttl in (MAX_TTL + 1, 0.0, -DAY):
            with pytest.raises(CliSecretError, match="at most 90 days"):
                await secrets.create("dana", "too long", ttl, DEVS, None)
        assert await secrets.of("dana") == []

        _, longest = await secrets.create("dana", "x" * (MAX_LABEL + 50), MAX_TTL, DEVS, None)
        assert longest.label == "x" * MAX_LABEL  # capped, not refused
        for n in range(MAX_PER_USER - 1):
            await secrets.create("dana", f"s{n}", DAY, DEVS, None)
        with pytest.raises(CliSecretError, match=f"{MAX_PER_USER} CLI secrets already"):
            await secrets.create("dana", "one more", DAY, DEVS, None)
        assert len(await secrets.of("dana")) == MAX_PER_USER
        await secrets.create("erin", "hers", DAY, DEVS, None)  # the bound is per person

    asyncio.run(scenario())


def test_owners_list_and_revoke_only_their_own(tmp_path: Path) -> None:
    async def scenario() -> None:
        secrets = store(tmp_path)
        dana_secret, dana = await secrets.create("dana", "laptop", DAY, DEVS, None)
        _, erin = await secrets.create("erin", "desktop", DAY, DEVS, None)
        assert [r.id for r in await secrets.of("dana")] == [dana.id]
        assert [r.id for r in await secrets.of("erin")] == [erin.id]
        assert dana.data() == {
            "id": dana.id,
            "label": "laptop",
            "created": dana.created,
            "expires": dana.expires,
        }

        assert not await secrets.revoke("erin", dana.id)
        assert (await secrets.check(dana_secret)).user == "dana"
        assert [r.id for r in await secrets.of("dana")] == [dana.id]
        assert await secrets.revoke("dana", dana.id)
        assert await secrets.of("dana") == []
        assert not await secrets.revoke("dana", dana.id)  # once

    asyncio.run(scenario())


def test_the_refresh_token_opens_only_with_its_own_secret(tmp_path: Path) -> None:
    async def scenario() -> None:
        secrets = store(tmp_path)
        secret, _ = await secrets.create("dana", "laptop", DAY, DEVS, REFRESH)
        other, other_record = await secrets.create("dana", "ci", DAY, DEVS, "another-token")
        _, plain = await secrets.create("dana", "no offline_access", DAY, DEVS, None)
        stored = await secrets.check(secret)  # as read back from the file
        assert clisecrets.opened(stored, secret) == REFRESH
        assert clisecrets.opened(stored, other) is None
        assert clisecrets.opened(stored, secret[:-1] + "x") is None
        assert clisecrets.opened(other_record, other) == "another-token"
        assert plain.refresh is None and clisecrets.opened(plain, secret) is None

    asyncio.run(scenario())


# -- signing in with a CLI secret --------------------------------------------------------------


class Provider:
    """Answers `refresh(token)` as People.refresh does, counting the calls."""

    def __init__(self, name: str, groups: Iterable[str]) -> None:
        self.name = name
        self.groups = frozenset(groups)
        self.tokens: list[str] = []
        self.refusing = False
        self.rotating = False  # each refresh answers with a new token and spends the old one
        self.spent: set[str] = set()

    @property
    def calls(self) -> int:
        return len(self.tokens)

    async def refresh(self, refresh_token: str) -> Person:
        self.tokens.append(refresh_token)
        if self.refusing or refresh_token in self.spent:
            raise OidcRefused("the provider refused the refresh (invalid_grant)", ISSUER)
        if self.rotating:
            self.spent.add(refresh_token)
            refresh_token = f"rotated-{len(self.tokens)}"
        return Person(self.name, self.groups, time.time() + 300, "sub-dana", refresh_token)


def engine() -> Engine:
    return Engine(load_texts({"p.yaml": POLICY}).policy)


def authenticator(data_dir: Path, provider: Provider, recheck: float) -> Authenticator:
    return Authenticator(
        people=cast(People, provider),
        cli_secrets=store(data_dir),
        cli_secret_recheck=recheck,
    )


async def sign_in(auth: Authenticator, secret: str, times: int = 1) -> list[Identity]:
    return [await auth.password(engine(), "dana", secret) for _ in range(times)]


def test_the_provider_is_asked_once_per_recheck_interval(tmp_path: Path) -> None:
    async def scenario() -> None:
        provider = Provider("dana", DEVS)
        auth = authenticator(tmp_path, provider, recheck=10)
        assert auth.cli_secrets is not None
        secret, record = await auth.cli_secrets.create("dana", "laptop", DAY, DEVS, REFRESH)
        first, second = await sign_in(auth, secret, 2)
        assert provider.tokens == [REFRESH]  # the decrypted token, asked once
        for identity in (first, second):
            assert identity.method == "cli_secret"
            assert identity.subject.name == "dana" and identity.subject.directory
            assert identity.subject.oidc_groups == DEVS
            assert identity.details == (("cli_secret", record.id),)
            assert identity.vouched_until is not None
            assert identity.vouched_until <= time.monotonic() + 10
        assert engine().granted(first.subject, "repository", "acme/app", ["push"]) == ("push",)

    asyncio.run(scenario())


def test_with_recheck_zero_every_use_asks_and_a_dropped_group_is_lost_at_once(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        provider = Provider("dana", DEVS)
        auth = authenticator(tmp_path, provider, recheck=0)
        assert auth.cli_secrets is not None
        secret, _ = await auth.cli_secrets.create("dana", "laptop", DAY, DEVS, REFRESH)
        (first,) = await sign_in(auth, secret)
        assert first.subject.oidc_groups == DEVS
        provider.groups = frozenset({"readers"})  # taken out of platform-devs at the provider
        (second,) = await sign_in(auth, secret)
        assert provider.calls == 2
        assert second.subject.oidc_groups == {"readers"}
        assert engine().granted(second.subject, "repository", "acme/app", ["pull"]) == ()

    asyncio.run(scenario())


def test_a_refresh_token_the_provider_rotates_is_kept_for_the_next_use(tmp_path: Path) -> None:
    async def scenario() -> None:
        provider = Provider("dana", DEVS)
        provider.rotating = True
        auth = authenticator(tmp_path, provider, recheck=0)
        assert auth.cli_secrets is not None
        secret, record = await auth.cli_secrets.create("dana", "laptop", DAY, DEVS, REFRESH)
        await sign_in(auth, secret, 3)  # each use spends the token the one before was given
        assert provider.tokens == [REFRESH, "rotated-1", "rotated-2"]
        stored = await auth.cli_secrets.store.get(record.id)
        assert stored is not None and REFRESH not in json.dumps(asdict(stored))
        # A secret revoked meanwhile stays revoked: keeping a rotated token brings nothing back.
        assert await auth.cli_secrets.revoke("dana", record.id)
        await auth.cli_secrets.keep_refresh(record, secret, "rotated-9")
        assert await auth.cli_secrets.store.get(record.id) is None

    asyncio.run(scenario())


def test_a_person_the_provider_no_longer_signs_in_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        provider = Provider("dana", DEVS)
        auth = authenticator(tmp_path, provider, recheck=0)
        assert auth.cli_secrets is not None
        secret, _ = await auth.cli_secrets.create("dana", "laptop", DAY, DEVS, REFRESH)
        provider.refusing = True
        with pytest.raises(AuthenticationFailed) as refused:
            await sign_in(auth, secret)
        assert "no longer signs you in" in str(refused.value.public)
        assert provider.calls == 1

        provider.refusing, provider.name = False, "mallory"  # the token now names another
        with pytest.raises(AuthenticationFailed, match="another user"):
            await sign_in(auth, secret)

    asyncio.run(scenario())


def test_a_secret_without_refresh_token_keeps_its_groups_and_never_asks(tmp_path: Path) -> None:
    async def scenario() -> None:
        provider = Provider("dana", frozenset())
        auth = authenticator(tmp_path, provider, recheck=0)
        assert auth.cli_secrets is not None
        secret, _ = await auth.cli_secrets.create("dana", "laptop", DAY, DEVS, None)
        first, second = await sign_in(auth, secret, 2)
        assert provider.calls == 0
        assert first.subject.oidc_groups == second.subject.oidc_groups == DEVS
        with pytest.raises(AuthenticationFailed) as refused:
            await sign_in(auth, secret[:-1] + ("x" if not secret.endswith("x") else "y"))
        assert refused.value.public == "CLI secret refused: unknown or revoked CLI secret"

    asyncio.run(scenario())


# -- People.refresh: what the provider's answer becomes ---------------------------------------


def test_refresh_reads_the_username_claim_filters_groups_and_sees_the_admin_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The admin group is found among all the provider's groups: it need not match the
    filter, which only chooses the groups kept for teams."""
    ci = CiIssuer(url=ISSUER)
    grants: list[dict[str, Any]] = []  # what the token endpoint answers, in turn

    def discovery(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/.well-known/openid-configuration":
            document = {**ci.discovery(), "token_endpoint": f"{ISSUER}/token"}
            return httpx.Response(200, json=document)
        status, body = ci.answer(request.url.path)
        return httpx.Response(status, content=body)

    def token_endpoint(request: httpx2.Request) -> httpx2.Response:
        answer = grants.pop(0)
        return httpx2.Response(answer.pop("status", 200), json=answer)

    people = People(
        issuer=ISSUER,
        client_id="registry-gateway",
        client_secret="client-secret",
        scopes="openid groups offline_access",
        redirect_uri="http://127.0.0.1/callback",
        username_claim="preferred_username",
        groups_claim="groups",
        group_filter="platform-.*",
        admin_group="registry-admins",
        verifier=Verifier(
            [ISSUER], client=httpx.AsyncClient(transport=httpx.MockTransport(discovery))
        ),
    )

    def client() -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            client_id=people.client_id,
            client_secret="client-secret",
            transport=httpx2.MockTransport(token_endpoint),
        )

    monkeypatch.setattr(people, "_client", client)
    claims = {
        "sub": "u-1",
        "aud": "registry-gateway",
        "preferred_username": "dana",
        "groups": [
            "platform-devs",
            "registry-admins",
            "registry-admins-old",
            "everyone",
            "platform",
        ],
    }
    grants.append({"id_token": ci.mint(claims), "token_type": "Bearer", "access_token": "a"})
    grants.append(
        {"id_token": ci.mint({**claims, "groups": ["platform-ops"]}), "refresh_token": "rotated"}
    )
    grants.append({"status": 400, "error": "invalid_grant"})
    grants.append({"id_token": ci.mint({**claims, "preferred_username": ""})})

    async def scenario() -> None:
        person = await people.refresh(REFRESH)
        assert person.name == "dana" and person.subject == "u-1"
        assert person.groups == {"platform-devs"}
        assert person.admin
        assert person.refresh_token == REFRESH  # none sent back: the old one stands
        person = await people.refresh(REFRESH)
        assert (person.groups, person.admin, person.refresh_token) == (
            frozenset({"platform-ops"}),
            False,
            "rotated",
        )
        with pytest.raises(OidcRefused, match="refused the refresh"):
            await people.refresh(REFRESH)
        with pytest.raises(OidcRefused, match="no usable preferred_username"):
            await people.refresh(REFRESH)

    asyncio.run(scenario())
    assert grants == []
