"""The LDAP backend against a real slapd: both ways to find users, TLS, groups, failures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest

from gateway.auth.identity import AuthenticationFailed, Authenticator, Identity
from gateway.auth.ldap import LdapConfig, LdapDirectory, LdapRejected, LdapUnavailable, LdapUser
from gateway.auth.verifycache import VerificationCache
from gateway.policy.engine import Engine
from gateway.policy.load import load_texts

from tests.support.ldap import PASSWORDS, SERVICE_DN, SERVICE_PASSWORD, SUFFIX, Slapd, start_slapd

PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
TEMPLATE = f"uid={{username}},{PEOPLE}"
DEVS = f"cn=platform-devs,{GROUPS}"
READERS = f"cn=readers,{GROUPS}"


@pytest.fixture(scope="module")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    server = start_slapd(tmp_path_factory.mktemp("slapd"))
    yield server
    server.stop()


def search_config(url: str, **changes: object) -> LdapConfig:
    options: dict[str, object] = {
        "url": url,
        "bind_dn": SERVICE_DN,
        "bind_password": SERVICE_PASSWORD,
        "user_base": PEOPLE,
        "group_base": GROUPS,
        **changes,
    }
    return LdapConfig(**options)  # type: ignore[arg-type]


def test_search_then_bind_finds_groups_from_member_of_and_a_group_search(slapd: Slapd) -> None:
    directory = LdapDirectory(search_config(slapd.url))
    lara = directory.authenticate("lara", PASSWORDS["lara"])
    assert lara.name == "lara" and lara.groups == {DEVS}
    leo = directory.authenticate("Leo", PASSWORDS["leo"])  # case-insensitive, made canonical
    assert leo.name == "leo" and leo.groups == {READERS}  # posixGroup memberUid
    for username, password in (("lara", "wrong"), ("nobody", "x"), ("lara", ""), ("*", "x")):
        with pytest.raises(LdapRejected):
            directory.authenticate(username, password)


def test_dn_template_binds_without_a_service_account(slapd: Slapd) -> None:
    directory = LdapDirectory(LdapConfig(url=slapd.url, user_dn=TEMPLATE))
    assert directory.authenticate("lara", PASSWORDS["lara"]).groups == {DEVS}  # memberOf
    with pytest.raises(LdapRejected):
        directory.authenticate("lara", "wrong")
    with pytest.raises(LdapRejected):
        directory.authenticate("lara,ou=x", PASSWORDS["lara"])  # not a name


def test_start_tls_and_ldaps_check_the_certificate(slapd: Slapd) -> None:
    ca = str(slapd.ca_file)
    start_tls = LdapConfig(url=slapd.url, start_tls=True, ca_file=ca, user_dn=TEMPLATE)
    assert LdapDirectory(start_tls).authenticate("lara", PASSWORDS["lara"]).name == "lara"
    ldaps = search_config(slapd.ldaps_url, ca_file=ca)
    assert LdapDirectory(ldaps).authenticate("leo", PASSWORDS["leo"]).name == "leo"
    untrusted = search_config(slapd.ldaps_url)  # the system CAs do not know the test CA
    with pytest.raises(LdapUnavailable):
        LdapDirectory(untrusted).authenticate("leo", PASSWORDS["leo"])


def test_a_wrong_service_password_is_a_configuration_problem_not_a_wrong_user(
    slapd: Slapd,
) -> None:
    directory = LdapDirectory(search_config(slapd.url, bind_password="not-it"))
    with pytest.raises(LdapUnavailable, match="service account"):
        directory.authenticate("lara", PASSWORDS["lara"])


def test_a_server_that_is_down_fails_at_once_and_is_left_alone_for_a_while(
    tmp_path: Path,
) -> None:
    server = start_slapd(tmp_path / "doomed")
    directory = LdapDirectory(LdapConfig(url=server.url, user_dn=TEMPLATE, connect_timeout=1))
    assert directory.authenticate("lara", PASSWORDS["lara"])
    server.stop()
    started = time.monotonic()
    with pytest.raises(LdapUnavailable):
        directory.authenticate("lara", PASSWORDS["lara"])
    assert directory.down
    with pytest.raises(LdapUnavailable, match="is down"):
        directory.authenticate("leo", PASSWORDS["leo"])
    assert time.monotonic() - started < 1.0


def engine_with(policy: str) -> Engine:
    return Engine(load_texts({"p.yaml": policy}).policy)


def test_ldap_sign_ins_are_cached_with_their_groups(slapd: Slapd) -> None:
    binds = []
    directory = LdapDirectory(search_config(slapd.url))
    real = directory.authenticate

    def counting(username: str, password: str) -> LdapUser:
        binds.append(username)
        return real(username, password)

    directory.authenticate = counting  # type: ignore[method-assign]
    authenticator = Authenticator(ldap=directory, cache=VerificationCache(300))
    engine = engine_with("users: {}\n")

    async def sign_ins() -> list[Identity]:
        return [await authenticator.password(engine, "lara", PASSWORDS["lara"]) for _ in range(20)]

    identities = asyncio.run(sign_ins())
    assert binds == ["lara"]
    subject = identities[-1].subject
    assert subject.directory and subject.groups == {DEVS} and identities[-1].method == "ldap"
    with pytest.raises(AuthenticationFailed):
        asyncio.run(authenticator.password(engine, "lara", "wrong"))


def test_ldap_cannot_sign_in_a_name_another_backend_owns(slapd: Slapd) -> None:
    stored = bcrypt.hashpw(b"policy-password", bcrypt.gensalt(4)).decode()
    engine = engine_with(f'users:\n  lara: {{password: "{stored}"}}\n  erin: {{}}\n')
    authenticator = Authenticator(ldap=LdapDirectory(search_config(slapd.url)))
    # "Lara" is not the policy's "lara", so it reaches LDAP, which says it is lara: refused.
    with pytest.raises(AuthenticationFailed, match="another backend"):
        asyncio.run(authenticator.password(engine, "Lara", PASSWORDS["lara"]))
    # erin has no password in the policy: the directory signs her in as the policy's erin.
    erin = asyncio.run(authenticator.password(engine, "erin", PASSWORDS["erin"]))
    assert erin.subject.name == "erin" and engine.known(erin.subject)
