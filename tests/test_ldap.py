"""LDAP settings checked at start, without a server. Against a real slapd:
tests/realworld/test_ldap.py."""

from __future__ import annotations

import pytest

from gateway.auth.ldap import LdapConfig
from gateway.config import ConfigError, Settings, load_settings

from tests.support.ldap import SUFFIX

PEOPLE = f"ou=people,{SUFFIX}"


def test_incomplete_ldap_settings_are_refused_at_start() -> None:
    def settings(**values: str) -> Settings:
        return load_settings({"ldap_url": "ldap://127.0.0.1:1", **values}, environ={})

    with pytest.raises(ConfigError, match="ldap_user_base"):
        LdapConfig.from_settings(settings())
    with pytest.raises(ConfigError, match="username"):
        LdapConfig.from_settings(settings(ldap_user_dn="uid=x,dc=example,dc=org"))
    with pytest.raises(ConfigError, match="ldap://"):
        load_settings({"ldap_url": "http://ldap.example.org"}, environ={})
    assert LdapConfig.from_settings(settings(ldap_user_base=PEOPLE)) is not None
