"""Sign-in against an LDAP directory (OpenLDAP, Active Directory) with ldap3, and its groups.

Two ways to find the user's entry:
- search-then-bind: bind as a service account (or anonymously), search `ldap_user_base` with
  `ldap_user_filter`, then bind as the entry found with the given password;
- a DN template (`ldap_user_dn`, e.g. `uid={username},ou=people,dc=example,dc=org`): bind as
  that DN directly, with no service account.

Groups come from the entry's `memberOf` (or `ldap_group_attribute`), and from a group search
under `ldap_group_base` when that is set (groupOfNames `member`, posixGroup `memberUid`).

Every call blocks, so `Authenticator` runs it in a worker thread of its own limited pool. A
server that cannot be reached raises `LdapUnavailable` after at most the connect timeout, and
is then not tried again for `DOWN_RETRY` seconds: while it is down, LDAP sign-ins fail at once
and nothing else waits for it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import ssl
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from gateway.config import DEFAULT_LDAP_GROUP_FILTER, ConfigError, Settings

log = logging.getLogger("registry_gateway")

DOWN_RETRY = 5.0  # seconds an unreachable server is left alone before the next try
INVALID_CREDENTIALS = 49
# What a user name may look like before it is put in a filter or a DN (escaped there too).
_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")


def _ldap3() -> ModuleType:
    """ldap3, imported on first use: only gateways that use LDAP pay for it.

    pyasn1 (which ldap3 uses) warns about its own renamed names while ldap3 imports them.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"pyasn1\.")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ldap3\.")
        import ldap3
        import ldap3.core.exceptions
        import ldap3.utils.conv
        import ldap3.utils.dn
    return ldap3


def _verified_tls(lib: ModuleType) -> type:
    """ldap3's Tls, with the standard library checking the certificate and the host name.

    ldap3 checks host names with `ssl.match_hostname`, deprecated and gone in Python 3.12; a
    default SSL context does it in the handshake instead (TLS 1.2 or later, IP SANs too).
    """

    class VerifiedTls(lib.Tls):  # type: ignore[name-defined,misc]
        def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
            context = ssl.create_default_context(cafile=self.ca_certs_file)
            connection.socket = context.wrap_socket(
                connection.socket,
                server_side=False,
                do_handshake_on_connect=do_handshake,
                server_hostname=self.sni,
            )

    return VerifiedTls


class LdapUnavailable(Exception):
    """The directory could not answer (down, timed out, misconfigured): not a wrong password."""


class LdapRejected(Exception):
    """The directory answered no: unknown user, wrong password, or an ambiguous name."""


@dataclass(frozen=True, slots=True)
class LdapUser:
    """A user the directory signed in: the canonical name, its entry and its groups (DNs)."""

    name: str
    dn: str
    groups: frozenset[str]


@dataclass(frozen=True, slots=True)
class LdapConfig:
    url: str
    start_tls: bool = False
    ca_file: str | None = None
    bind_dn: str | None = None
    bind_password: str | None = None
    user_base: str | None = None
    user_filter: str = "(uid={username})"
    user_dn: str | None = None  # a template with {username}
    group_base: str | None = None
    group_filter: str = DEFAULT_LDAP_GROUP_FILTER
    group_attribute: str = "memberOf"
    connect_timeout: float = 3.0
    timeout: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings) -> LdapConfig | None:
        """The LDAP settings, or None when `ldap_url` is unset; ConfigError when incomplete."""
        if not settings.ldap_url:
            return None
        if not settings.ldap_user_dn and not settings.ldap_user_base:
            raise ConfigError(
                "ldap_url is set but neither ldap_user_base (search-then-bind) nor "
                "ldap_user_dn (a DN template) is: the gateway cannot find users"
            )
        if settings.ldap_user_dn and "{username}" not in settings.ldap_user_dn:
            raise ConfigError(
                f"setting ldap_user_dn: {settings.ldap_user_dn!r} does not contain {{username}}"
            )
        if settings.ldap_start_tls and settings.ldap_url.startswith("ldaps:"):
            raise ConfigError("ldap_start_tls is for ldap:// URLs; ldaps:// is TLS already")
        password = settings.ldap_bind_password
        return cls(
            url=settings.ldap_url,
            start_tls=settings.ldap_start_tls,
            ca_file=str(settings.ldap_ca_file) if settings.ldap_ca_file else None,
            bind_dn=settings.ldap_bind_dn,
            bind_password=password.reveal() if password else None,
            user_base=settings.ldap_user_base,
            user_filter=settings.ldap_user_filter,
            user_dn=settings.ldap_user_dn,
            group_base=settings.ldap_group_base,
            group_filter=settings.ldap_group_filter,
            group_attribute=settings.ldap_group_attribute,
            connect_timeout=settings.ldap_connect_timeout,
            timeout=settings.ldap_timeout,
        )


class LdapDirectory:
    """Binds users against one LDAP server. Thread-safe: every sign-in has its own connection."""

    def __init__(self, config: LdapConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._down_until = 0.0
        self._lock = threading.Lock()
        self._lib = lib = _ldap3()
        parts = urlsplit(config.url)
        secure = parts.scheme == "ldaps"
        tls = None
        if secure or config.start_tls:
            tls = _verified_tls(lib)(
                validate=ssl.CERT_REQUIRED, ca_certs_file=config.ca_file, sni=parts.hostname
            )
        self.server = lib.Server(
            parts.hostname,
            port=parts.port or (636 if secure else 389),
            use_ssl=secure,
            tls=tls,
            get_info=lib.NONE,
            connect_timeout=config.connect_timeout,
        )

    @property
    def down(self) -> bool:
        return self._clock() < self._down_until

    def describe(self) -> str:
        return self.config.url + (" (StartTLS)" if self.config.start_tls else "")

    def authenticate(self, username: str, password: str) -> LdapUser:
        """Bind as the user; LdapRejected for bad credentials, LdapUnavailable if no answer."""
        if not _USERNAME.fullmatch(username):
            raise LdapRejected("not a valid LDAP user name")
        if not password:
            # An empty password is an "unauthenticated bind", which succeeds as anonymous.
            raise LdapRejected("empty password")
        if self.down:
            raise LdapUnavailable(f"LDAP server {self.describe()} is down; retrying shortly")
        try:
            return self._authenticate(username, password)
        except LdapUnavailable as exc:
            log.error("LDAP server %s: %s", self.describe(), exc, extra={"event": "ldap_error"})
            raise
        except self._lib.core.exceptions.LDAPException as exc:
            with self._lock:
                self._down_until = self._clock() + DOWN_RETRY
            log.error(
                "LDAP server %s: %s: %s",
                self.describe(),
                type(exc).__name__,
                exc,
                extra={"event": "ldap_unavailable"},
            )
            raise LdapUnavailable(f"LDAP server {self.describe()}: {type(exc).__name__}") from None

    def _escape(self, value: str) -> str:
        return str(self._lib.utils.conv.escape_filter_chars(value))

    def _connection(self, user: str | None, password: str | None) -> Any:
        conn = self._lib.Connection(
            self.server,
            user=user,
            password=password,
            receive_timeout=max(1, math.ceil(self.config.timeout)),  # ldap3 packs an int
            read_only=True,
            raise_exceptions=False,
            auto_referrals=False,
        )
        try:
            conn.open()
            if self.config.start_tls:
                conn.start_tls()
        except BaseException:
            _close(conn)
            raise
        return conn

    def _bind(self, conn: Any) -> bool:
        if conn.bind():
            return True
        if conn.result and conn.result.get("result") == INVALID_CREDENTIALS:
            return False
        raise LdapUnavailable(f"LDAP bind failed: {conn.result.get('description')}")

    def _authenticate(self, username: str, password: str) -> LdapUser:
        cfg = self.config
        name = username.lower()
        if cfg.user_dn:
            dn = cfg.user_dn.format(username=self._lib.utils.dn.escape_rdn(username))
            conn = self._connection(dn, password)
            try:
                if not self._bind(conn):
                    raise LdapRejected("wrong password or unknown user")
                groups = self._entry_groups(conn, dn) | self._searched_groups(conn, dn, username)
                return LdapUser(name, dn, groups)
            finally:
                _close(conn)
        conn = self._connection(cfg.bind_dn, cfg.bind_password)
        try:
            if not self._bind(conn):
                raise LdapUnavailable(
                    "the service account (ldap_bind_dn) was refused: check its password"
                )
            search = cfg.user_filter.format(username=self._escape(username))
            conn.search(
                cfg.user_base,
                search,
                self._lib.SUBTREE,
                attributes=[cfg.group_attribute],
                size_limit=2,
                time_limit=max(1, int(cfg.timeout)),
            )
            entries = [r for r in conn.response or () if r.get("type") == "searchResEntry"]
            if not entries:
                raise LdapRejected("unknown LDAP user")
            if len(entries) > 1:
                raise LdapRejected("the user filter finds more than one entry")
            dn = entries[0]["dn"]
            groups = _values(entries[0], cfg.group_attribute)
            groups |= self._searched_groups(conn, dn, username)
            conn.user, conn.password = dn, password
            if not self._bind(conn):
                raise LdapRejected("wrong password")
            return LdapUser(name, dn, groups)
        finally:
            _close(conn)

    def _entry_groups(self, conn: Any, dn: str) -> frozenset[str]:
        conn.search(dn, "(objectClass=*)", self._lib.BASE, attributes=[self.config.group_attribute])
        found: frozenset[str] = frozenset()
        for entry in conn.response or ():
            if entry.get("type") == "searchResEntry":
                found |= _values(entry, self.config.group_attribute)
        return found

    def _searched_groups(self, conn: Any, dn: str, username: str) -> frozenset[str]:
        cfg = self.config
        if not cfg.group_base:
            return frozenset()
        # memberUid matches case-exactly: use the canonical (lower-case) name.
        search = cfg.group_filter.format(
            dn=self._escape(dn), username=self._escape(username.lower())
        )
        conn.search(cfg.group_base, search, self._lib.SUBTREE, attributes=[])
        return frozenset(
            r["dn"].lower() for r in conn.response or () if r.get("type") == "searchResEntry"
        )


def _close(conn: Any) -> None:
    """Close a connection whatever state a failure left it in (no socket may leak)."""
    with contextlib.suppress(Exception):
        conn.unbind()
    sock = getattr(conn, "socket", None)
    if sock is not None:
        with contextlib.suppress(Exception):
            sock.close()


def _values(entry: dict[str, Any], attribute: str) -> frozenset[str]:
    attributes = entry.get("attributes") or {}
    for key, values in attributes.items():
        if key.lower() == attribute.lower():
            if isinstance(values, str):
                values = [values]
            return frozenset(str(v).lower() for v in values)
    return frozenset()
