"""Settings: defaults < YAML config file < environment (REGISTRY_GATEWAY_*) < command-line flags.

Every setting is declared once in FIELDS, which drives the flags, the environment variable
names, the config file keys, `--help`, and the error a bad value gives.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

ENV_PREFIX = "REGISTRY_GATEWAY_"
DEFAULT_LDAP_GROUP_FILTER = (
    "(|(&(objectClass=groupOfNames)(member={dn}))"
    "(&(objectClass=groupOfUniqueNames)(uniqueMember={dn}))"
    "(&(objectClass=posixGroup)(memberUid={username})))"
)


class ConfigError(ValueError):
    """A setting with a bad value; the message names the setting, its source and what is expected."""


class Secret:
    """A secret string whose repr and str never show the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _int(minimum: int, maximum: int) -> Callable[[str], int]:
    def cast(text: str) -> int:
        value = int(text)
        if not minimum <= value <= maximum:
            raise ValueError(f"must be between {minimum} and {maximum}")
        return value

    cast.__doc__ = f"an integer from {minimum} to {maximum}"
    return cast


def _duration(text: str) -> float:
    """a duration such as 30, 30s, 5m, 1h"""
    text = str(text).strip()
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            value = float(text[: -len(unit)]) * units[unit]
            break
    else:
        value = float(text)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _listen(text: str) -> str:
    """HOST:PORT"""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected HOST:PORT such as 127.0.0.1:5001")
    return text


def _url(text: str) -> str:
    """an http(s) URL"""
    parts = urlsplit(str(text))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("expected an http:// or https:// URL")
    return str(text).rstrip("/")


def _ldap_url(text: str) -> str:
    """an ldap:// or ldaps:// URL"""
    parts = urlsplit(str(text))
    if parts.scheme not in ("ldap", "ldaps") or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError("expected ldap://HOST[:PORT] or ldaps://HOST[:PORT]")
    return str(text).rstrip("/")


def _issuers(text: str) -> str:
    """NAME=https://ISSUER pairs, comma-separated"""
    for part in (p.strip() for p in str(text or "").split(",")):
        name, sep, url = part.partition("=")
        if not part:
            continue
        if not sep or not name.strip() or not url.strip().startswith(("https://", "http://")):
            raise ValueError(f"{part[:100]!r} is not NAME=URL")
    return str(text or "")


def _bool(text: str) -> bool:
    """true or false"""
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _choice(*options: str) -> Callable[[str], str]:
    def cast(text: str) -> str:
        if text not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return text

    cast.__doc__ = " or ".join(options)
    return cast


def _text(text: str) -> str:
    """a non-empty string"""
    if not str(text).strip():
        raise ValueError("must not be empty")
    return str(text)


def _path(text: str) -> Path:
    """a file system path"""
    return Path(str(text)).expanduser()


def _optional(cast: Callable[[str], Any]) -> Callable[[str], Any]:
    def wrapped(text: str) -> Any:
        return None if text in ("", None) else cast(text)

    wrapped.__doc__ = cast.__doc__
    return wrapped


def _secret(text: str) -> Secret:
    """a secret string"""
    return Secret(str(text))


@dataclass(frozen=True)
class Field:
    name: str
    default: Any
    cast: Callable[[str], Any]
    help: str
    flag: bool = True  # secrets are never flags: a command line is visible to every user


FIELDS: tuple[Field, ...] = (
    Field(
        "policies",
        Path("policies"),
        _path,
        "policy directory (in a git work tree: its commit is the revision)",
    ),
    Field("data_dir", Path(".data"), _path, "signing keys and other state live here"),
    Field("listen", "127.0.0.1:5001", _listen, "address to serve on, HOST:PORT"),
    Field("service", "registry", _text, "the registry's auth.token.service; tokens' audience"),
    Field("issuer", "registry-gateway", _text, "tokens' issuer; the registry's auth.token.issuer"),
    Field("token_ttl", 300, _int(30, 86400), "lifetime of access tokens, seconds"),
    Field("refresh_ttl", 90 * 86400, _int(60, 3650 * 86400), "lifetime of refresh tokens, seconds"),
    Field(
        "public_url",
        "http://127.0.0.1:5001",
        _url,
        "how clients reach the gateway (the realm's base)",
    ),
    Field("workers", 1, _int(1, 64), "server worker processes"),
    Field(
        "event_loop",
        "asyncio",
        _choice("asyncio", "uvloop"),
        "the event loop: asyncio accepts every waiting connection at once; uvloop (libuv) "
        "accepts one per loop turn, so a burst of new connections waits behind busy ones "
        "(docs/deploy.md has the figures)",
    ),
    Field(
        "forwarded_allow_ips",
        "127.0.0.1",
        _text,
        "proxies trusted for X-Forwarded-For (comma-separated addresses, or *): the client "
        "address that lockout and the audit log see",
    ),
    Field(
        "drain_seconds",
        5.0,
        _duration,
        "on SIGTERM, answer /readyz 503 this long before shutting down (one worker only)",
    ),
    Field(
        "key_algorithm",
        "ES256",
        _choice("ES256", "RS256"),
        "algorithm of newly generated signing keys",
    ),
    Field("audit_log", "-", _text, "where audit lines go: a file path, or - for standard output"),
    Field("log_level", "info", _choice("debug", "info", "warning", "error"), "server log level"),
    Field("log_format", "json", _choice("json", "text"), "server log format"),
    Field(
        "access_log",
        True,
        _bool,
        "one server log line per request (false: none; the audit still has every token request, "
        "with its request id)",
    ),
    Field(
        "registry_url", None, _optional(_url), "the registry's API, for the catalog UI (optional)"
    ),
    Field(
        "registry_public",
        None,
        _optional(str),
        "registry address shown in pull commands (default: from registry_url)",
    ),
    Field("max_scopes", 100, _int(1, 10000), "most scopes one token request may ask for"),
    Field(
        "catalog_refresh",
        300.0,
        _duration,
        "how often the catalog index re-reads the registry's repository and tag lists",
    ),
    Field(
        "catalog_full_refresh",
        3600.0,
        _duration,
        "how often a catalog refresh asks every tag's digest again, which finds a tag moved "
        "without a notification (0: every refresh)",
    ),
    Field(
        "catalog_concurrency",
        8,
        _int(1, 256),
        "requests the catalog index keeps in flight to the registry",
    ),
    Field("watch", True, _bool, "reload the policy when its files change"),
    Field("reload_debounce", 0.2, _duration, "wait this long for a burst of file changes to end"),
    Field(
        "policy_git",
        None,
        _optional(str),
        "git URL to clone the policy from (instead of --policies)",
    ),
    Field("policy_branch", "main", _text, "branch of --policy-git to follow"),
    Field("policy_path", "policies", _text, "policy directory inside the --policy-git repository"),
    Field("poll_interval", 30.0, _duration, "how often to fetch --policy-git, e.g. 30s or 5m"),
    Field(
        "policy_git_ssh_key",
        None,
        _optional(_path),
        "SSH private key file for --policy-git (never on the command line; file or env)",
        flag=False,
    ),
    Field(
        "policy_git_token",
        None,
        _optional(_secret),
        "HTTPS token for --policy-git, sent as a header, never in a URL (env or file only)",
        flag=False,
    ),
    Field(
        "reload_secret",
        None,
        _optional(_secret),
        "shared secret for POST /-/reload (env or file only)",
        flag=False,
    ),
    Field(
        "notification_secret",
        None,
        _optional(_secret),
        "shared secret the registry sends with notifications (env or file only)",
        flag=False,
    ),
    Field(
        "session_secret",
        None,
        _optional(_secret),
        "key that signs UI session cookies (default: derived from the signing key)",
        flag=False,
    ),
    # -- sign-in (docs/authentication.md) ------------------------------------------------
    Field(
        "htpasswd",
        None,
        _optional(_path),
        "htpasswd file of bcrypt entries (htpasswd -B), watched and reloaded",
    ),
    Field(
        "auth_cache_ttl",
        300.0,
        _duration,
        "how long verified passwords and LDAP sign-ins are remembered (0: never)",
    ),
    Field("auth_cache_size", 10000, _int(0, 10_000_000), "most remembered sign-ins"),
    Field(
        "lockout_failures",
        10,
        _int(0, 100000),
        "failed password sign-ins of one user name from one address within lockout_window that "
        "lock that name for that address (0: never)",
    ),
    Field(
        "lockout_address_failures",
        50,
        _int(0, 1_000_000),
        "failed sign-ins from one client address within lockout_window that lock it (0: never)",
    ),
    Field(
        "redis_url",
        None,
        _optional(_secret),
        "redis://HOST:PORT/DB shared by replicas for lockout counts (env or file only: it may "
        "hold a password); without it counts are per process",
        flag=False,
    ),
    Field("lockout_window", 300.0, _duration, "the sliding window failures are counted in"),
    Field("lockout_duration", 300.0, _duration, "how long a locked user name or address waits"),
    Field(
        "lockout_backoff",
        1.0,
        _duration,
        "first pause once failures pile up, doubled after each further failure (0: none)",
    ),
    # -- brute-force protection and failure timing (docs/authentication.md) --------------
    Field(
        "lockout_account_failures",
        100,
        _int(0, 1_000_000),
        "failed sign-ins of one user name from every address within lockout_window that put "
        "it under attack: then an address that failed for it is refused it (0: never)",
    ),
    Field(
        "signin_failure_floor",
        0.0,
        _duration,
        "least time a failed sign-in takes; raised to the slowest check measured (0: measured)",
    ),
    Field("ldap_url", None, _optional(_ldap_url), "LDAP server, ldap://HOST[:PORT] or ldaps://"),
    Field("ldap_start_tls", False, _bool, "upgrade an ldap:// connection with StartTLS"),
    Field("ldap_ca_file", None, _optional(_path), "CA certificates for the LDAP server's TLS"),
    Field("ldap_bind_dn", None, _optional(str), "service account DN for search-then-bind"),
    Field(
        "ldap_bind_password",
        None,
        _optional(_secret),
        "password of ldap_bind_dn (env or file only)",
        flag=False,
    ),
    Field("ldap_user_base", None, _optional(str), "where to search for users"),
    Field("ldap_user_filter", "(uid={username})", str, "filter that finds a user's entry"),
    Field(
        "ldap_user_dn",
        None,
        _optional(str),
        "DN template, e.g. uid={username},ou=people,dc=example,dc=org (no search)",
    ),
    Field("ldap_group_base", None, _optional(str), "where to search for groups (optional)"),
    Field(
        "ldap_group_filter",
        DEFAULT_LDAP_GROUP_FILTER,
        str,
        "filter that finds a user's groups; {dn} and {username} are filled in",
    ),
    Field("ldap_group_attribute", "memberOf", str, "user attribute listing group DNs"),
    Field("ldap_connect_timeout", 3.0, _duration, "LDAP connect timeout"),
    Field("ldap_timeout", 5.0, _duration, "LDAP answer timeout"),
    # -- OIDC (docs/oidc.md): people through an identity provider, CI jobs by their token ---
    Field(
        "oidc_issuer",
        None,
        _optional(_url),
        "the identity provider people sign in with (its discovery document is read)",
    ),
    Field("oidc_client_id", None, _optional(str), "the gateway's client id at the provider"),
    Field(
        "oidc_client_secret",
        None,
        _optional(_secret),
        "the gateway's client secret at the provider (env or file only)",
        flag=False,
    ),
    Field(
        "oidc_client_secret_file",
        None,
        _optional(_path),
        "a file holding the client secret (a mounted secret), instead of oidc_client_secret",
    ),
    Field("oidc_scopes", "openid profile email groups", _text, "scopes asked for at sign-in"),
    Field("oidc_redirect_path", "/-/oidc/callback", _text, "the redirect URI's path"),
    Field("oidc_provider_name", "single sign-on", _text, "shown as 'Sign in with NAME'"),
    Field(
        "oidc_username_claim",
        "preferred_username",
        _text,
        "the claim holding the user name (matched to policy users)",
    ),
    Field("oidc_groups_claim", "groups", _text, "the claim holding the user's groups"),
    Field(
        "oidc_group_filter",
        None,
        _optional(str),
        "a regular expression: only groups matching it whole are kept (unset: all)",
    ),
    Field(
        "oidc_admin_group",
        None,
        _optional(str),
        "members of this provider group see the UI's admin pages (registry rights stay policy)",
    ),
    Field("oidc_hide_password_form", False, _bool, "show only the provider's button at sign-in"),
    Field(
        "oidc_cli_secret_max_ttl",
        90 * 86400.0,
        _duration,
        "the longest lifetime a CLI secret made in the UI may have",
    ),
    Field(
        "oidc_cli_secret_recheck",
        10.0,
        _duration,
        "how long the provider's answer stands for a CLI secret (group changes take this long; "
        "0 asks the provider on every use)",
    ),
    Field(
        "oidc_ci_issuers",
        "",
        _issuers,
        "trusted CI issuers besides github and gitlab(.com), NAME=URL,NAME=URL (policy "
        "workloads name them)",
    ),
    # -- webhooks (docs/events.md); the subscriptions are policy, their secrets env or files --
    Field(
        "webhook_queue_size",
        10000,
        _int(1, 1_000_000),
        "events waiting to be sent, and per subscription; when full the oldest is dropped "
        "(and counted)",
    ),
    Field("webhook_timeout", 5.0, _duration, "how long one webhook request may take"),
    Field(
        "webhook_backoff",
        1.0,
        _duration,
        "first wait before sending a failed webhook again (doubled each time, at most 60 s, "
        "randomised)",
    ),
    Field(
        "webhook_retry_time",
        600.0,
        _duration,
        "how long a webhook delivery is retried in all before it is given up",
    ),
    Field(
        "webhook_log_size",
        50,
        _int(1, 10000),
        "deliveries kept per subscription for the Status page",
    ),
    # -- request limits (docs/configuration.md, "Limits") ----------------------------------
    Field(
        "max_body_bytes",
        1048576,
        _int(1024, 1 << 30),
        "largest request body, chunked or not (more: 413); the token form takes 16 KiB",
    ),
    Field(
        "max_header_bytes",
        32768,
        _int(1024, 1 << 24),
        "largest request head, the request line and the headers (more: 431; a URL: 414)",
    ),
    Field("max_headers", 100, _int(8, 10000), "most header fields in a request (more: 431)"),
    Field("max_query_bytes", 16384, _int(256, 1 << 24), "longest query string (more: 414)"),
    Field(
        "header_timeout",
        10.0,
        _duration,
        "a request's line and headers must arrive within this long, or the connection is "
        "dropped (0: no limit)",
    ),
    Field(
        "max_connections",
        1000,
        _int(1, 1_000_000),
        "most open connections (and requests in progress) per worker; more get 503",
    ),
)
_BY_NAME = {f.name: f for f in FIELDS}


@dataclass(frozen=True)
class Settings:
    policies: Path
    data_dir: Path
    listen: str
    service: str
    issuer: str
    token_ttl: int
    refresh_ttl: int
    public_url: str
    workers: int
    event_loop: str
    forwarded_allow_ips: str
    redis_url: Secret | None
    drain_seconds: float
    key_algorithm: str
    audit_log: str
    log_level: str
    log_format: str
    access_log: bool
    registry_url: str | None
    registry_public: str | None
    max_scopes: int
    catalog_refresh: float
    catalog_full_refresh: float
    catalog_concurrency: int
    watch: bool
    reload_debounce: float
    policy_git: str | None
    policy_branch: str
    policy_path: str
    poll_interval: float
    policy_git_ssh_key: Path | None
    policy_git_token: Secret | None
    reload_secret: Secret | None
    notification_secret: Secret | None
    session_secret: Secret | None
    htpasswd: Path | None
    auth_cache_ttl: float
    auth_cache_size: int
    lockout_failures: int
    lockout_address_failures: int
    lockout_window: float
    lockout_duration: float
    lockout_backoff: float
    lockout_account_failures: int
    signin_failure_floor: float
    ldap_url: str | None
    ldap_start_tls: bool
    ldap_ca_file: Path | None
    ldap_bind_dn: str | None
    ldap_bind_password: Secret | None
    ldap_user_base: str | None
    ldap_user_filter: str
    ldap_user_dn: str | None
    ldap_group_base: str | None
    ldap_group_filter: str
    ldap_group_attribute: str
    ldap_connect_timeout: float
    ldap_timeout: float
    oidc_issuer: str | None
    oidc_client_id: str | None
    oidc_client_secret: Secret | None
    oidc_client_secret_file: Path | None
    oidc_scopes: str
    oidc_redirect_path: str
    oidc_provider_name: str
    oidc_username_claim: str
    oidc_groups_claim: str
    oidc_group_filter: str | None
    oidc_admin_group: str | None
    oidc_hide_password_form: bool
    oidc_cli_secret_max_ttl: float
    oidc_cli_secret_recheck: float
    oidc_ci_issuers: str
    webhook_queue_size: int
    webhook_timeout: float
    webhook_backoff: float
    webhook_retry_time: float
    webhook_log_size: int
    max_body_bytes: int
    max_header_bytes: int
    max_headers: int
    max_query_bytes: int
    header_timeout: float
    max_connections: int

    @property
    def realm(self) -> str:
        return f"{self.public_url}/auth/token"

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0]

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    def replace(self, **changes: Any) -> Settings:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Settings(**values)


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_flags(parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None) -> None:
    """Add `--config` and a flag for each setting (all, or those named) to a parser."""
    parser.add_argument(
        "--config", metavar="FILE", help=f"YAML settings file (env {ENV_PREFIX}CONFIG)"
    )
    for field in FIELDS:
        if not field.flag or (names is not None and field.name not in names):
            continue
        shown = field.default if field.default is not None else "unset"
        parser.add_argument(
            flag_name(field.name),
            dest=field.name,
            metavar=field.name.upper(),
            default=None,
            help=f"{field.help} (env {env_name(field.name)}; default: {shown})",
        )


def _cast(field: Field, raw: Any, source: str) -> Any:
    try:
        # A YAML null reaches the cast as None: `_optional` reads it as unset, the other casts
        # refuse it or read it as text. Anything else that is not a string is read as text.
        text: Any = raw if isinstance(raw, str) or raw is None else str(raw)
        return field.cast(text)
    except (ValueError, TypeError) as exc:
        expected = field.cast.__doc__ or "a valid value"
        shown = "(hidden)" if field.flag is False else repr(raw)
        raise ConfigError(
            f"setting {field.name} from {source}: {shown} is not valid ({exc}); expected {expected}"
        ) from None


def load_settings(
    flags: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
) -> Settings:
    """Resolve every setting from its layers; ConfigError names the first bad one."""
    environ = os.environ if environ is None else environ
    flags = dict(flags or {})
    config_file = config_file or flags.pop("config", None) or environ.get(ENV_PREFIX + "CONFIG")
    file_values: dict[str, Any] = {}
    if config_file:
        file_values = _read_config_file(Path(config_file))
    values: dict[str, Any] = {}
    for field in FIELDS:
        value = field.default
        if field.name in file_values:
            value = _cast(field, file_values[field.name], f"config file {config_file}")
        if env_name(field.name) in environ:
            value = _cast(
                field, environ[env_name(field.name)], f"environment {env_name(field.name)}"
            )
        if flags.get(field.name) is not None:
            value = _cast(field, flags[field.name], f"flag {flag_name(field.name)}")
        elif isinstance(value, str) and field.cast not in (str, _text) and value is field.default:
            value = _cast(field, value, "the default")
        values[field.name] = value
    return Settings(**values)


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of settings")
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in _BY_NAME:
            raise ConfigError(
                f"config file {path}: unknown setting {key!r} (known: {', '.join(_BY_NAME)})"
            )
        out[name] = value
    return out
