"""The gateway's operational commands: serve, keys, registry-config, hash-password, robot and
token secrets, and reading a token."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import io
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.config import FIELDS, ConfigError, Settings, env_name, load_settings

if TYPE_CHECKING:
    import datetime as dt

    from gateway.auth.keys import KeyStore


def settings_from(args: argparse.Namespace) -> Settings:
    flags = {f.name: getattr(args, f.name, None) for f in FIELDS}
    return load_settings(flags, config_file=getattr(args, "config", None))


WORKER_START_TIMEOUT = 120  # seconds; see cmd_serve


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.app import build_services, create_app
    from gateway.auth.keys import KeyStoreError
    from gateway.limits import RequestLimits
    from gateway.logs import configure
    from gateway.protocol import LimitedHttpToolsProtocol, ServerConfig
    from gateway.server import serve, serve_workers
    from gateway.services import PolicyUnavailable

    try:
        settings = settings_from(args)
    except ConfigError as exc:
        print(f"registry-gateway serve: {exc}", file=sys.stderr)
        return 2
    try:
        from gateway.auth.ldap import LdapConfig

        LdapConfig.from_settings(settings)
    except ConfigError as exc:
        print(f"registry-gateway serve: {exc}", file=sys.stderr)
        return 2
    log_config = configure(settings.log_level, settings.log_format)
    # Started here, before serving: a missing key or policy ends the command at once. One
    # worker serves these very services; several build their own from the environment.
    try:
        services = build_services(settings)
    except ConfigError as exc:  # a setting only a backend can judge (redis_url)
        print(f"registry-gateway serve: {exc}", file=sys.stderr)
        return 2
    try:
        services.keys.ensure(settings.key_algorithm)
    except (KeyStoreError, OSError) as exc:
        print(
            f"registry-gateway serve: signing keys in {settings.data_dir}: {exc}", file=sys.stderr
        )
        return 1
    try:
        services.start()
    except PolicyUnavailable as exc:
        print(
            f"registry-gateway serve: not serving tokens without a valid policy: {exc}",
            file=sys.stderr,
        )
        return 1
    limits = RequestLimits.from_settings(settings)
    options = {
        "host": settings.host,
        "port": settings.port,
        "loop": settings.event_loop,
        # httptools, with the limits an app cannot enforce (gateway/protocol.py)
        "http": LimitedHttpToolsProtocol,
        "limits": limits,
        "log_config": log_config,
        "access_log": False,
        "server_header": False,
        "timeout_graceful_shutdown": 20,
        "proxy_headers": True,
        "forwarded_allow_ips": settings.forwarded_allow_ips,
    }
    if settings.workers == 1:
        app = create_app(services=services)
        serve(
            ServerConfig(app, **options),  # type: ignore[arg-type]
            drain=settings.drain_seconds,
            on_drain=services.draining.set,
        )
        return 0
    # Workers rebuild the settings from the environment: publish the resolved ones there.
    for field in FIELDS:
        value = getattr(settings, field.name)
        if field.flag and value is not None:
            os.environ[env_name(field.name)] = str(value)
    if getattr(args, "config", None):
        os.environ[env_name("config")] = str(args.config)
    # Workers add their samples up in files here; start empty so the dead don't count.
    metrics_dir = settings.data_dir / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    config = ServerConfig(
        "gateway.app:create_app",
        factory=True,
        workers=settings.workers,
        # uvicorn's supervisor kills a worker that has not started within this, or does not
        # answer its ping (a thread that needs the GIL): its default of 5 s killed workers in a
        # loop while they loaded a large policy, or any policy on a busy host.
        timeout_worker_healthcheck=WORKER_START_TIMEOUT,
        **options,  # type: ignore[arg-type]
    )
    serve_workers(config)
    return 0


def _keystore(args: argparse.Namespace) -> tuple[Settings, KeyStore]:
    from gateway.auth.keys import KeyStore

    settings = settings_from(args)
    return settings, KeyStore(settings.data_dir, common_name=settings.issuer)


def cmd_keys(args: argparse.Namespace) -> int:
    from gateway.auth.keys import KeyStoreError

    try:
        settings, store = _keystore(args)
        if args.keys_command == "bundle":
            store.ensure(settings.key_algorithm)
            pem = store.bundle_pem()
            if args.output:
                Path(args.output).write_text(pem)
                print(f"wrote {len(store.keys())} certificate(s) to {args.output}", file=sys.stderr)
            else:
                sys.stdout.write(pem)
        elif args.keys_command == "rotate":
            key = store.rotate(args.algorithm or settings.key_algorithm)
            print(f"new signing key {key.kid} ({key.algorithm}) in {key.path}")
            print(
                "give the registry the new bundle (registry-gateway keys bundle) and restart it; "
                "running gateways sign with the new key within seconds",
                file=sys.stderr,
            )
        else:
            store.ensure(settings.key_algorithm)
            current = store.current()
            for key in store.keys():
                mark = "signing" if key.kid == current.kid else "verify-only"
                print(f"{key.kid}  {key.algorithm}  {key.created:%Y-%m-%d %H:%M:%S}  {mark}")
    except (ConfigError, KeyStoreError, OSError) as exc:
        print(f"registry-gateway keys: {exc}", file=sys.stderr)
        return 1
    return 0


def signing_algorithms(settings: Settings) -> tuple[list[str], str]:
    """The algorithms of the keys in the data dir (every one the bundle holds, so a rotation
    to another algorithm keeps working), or of the first key to come; and where they came from.
    KeyStoreError when the keys cannot be read."""
    from gateway.auth.keys import ALGORITHMS, KeyStore

    keys = KeyStore(settings.data_dir, common_name=settings.issuer).keys()
    if not keys:
        where = f"key_algorithm, as there are no keys in {settings.data_dir} yet"
        return [settings.key_algorithm], where
    found = {key.algorithm for key in keys}
    return [a for a in ALGORITHMS if a in found], f"those of the keys in {settings.data_dir}"


def registry_config_text(
    settings: Settings, rootcertbundle: str, algorithms: list[str] | None = None
) -> str:
    """The registry's auth (and notifications) sections for these settings, as YAML.

    `signingalgorithms` pins what Distribution 3.x accepts (its default list includes HS256
    and the other HMAC algorithms); 2.8 ignores the option."""
    from ruamel.yaml import YAML

    config: dict[str, Any] = {
        "auth": {
            "token": {
                "realm": settings.realm,
                "service": settings.service,
                "issuer": settings.issuer,
                "rootcertbundle": rootcertbundle,
                "signingalgorithms": algorithms or [settings.key_algorithm],
            }
        }
    }
    if settings.notification_secret:
        config["notifications"] = {
            "endpoints": [
                {
                    "name": "registry-gateway",
                    "url": f"{settings.public_url}/-/notifications",
                    "headers": {"Authorization": ["Bearer <notification_secret>"]},
                    "timeout": "2s",
                    "threshold": 5,
                    "backoff": "5s",
                }
            ]
        }
    out = io.StringIO()
    yaml = YAML()
    yaml.default_flow_style = False
    yaml.dump(config, out)
    return out.getvalue()


def cmd_registry_config(args: argparse.Namespace) -> int:
    from gateway.auth.keys import KeyStoreError

    try:
        settings = settings_from(args)
    except ConfigError as exc:
        print(f"registry-gateway registry-config: {exc}", file=sys.stderr)
        return 2
    try:
        algorithms, where = signing_algorithms(settings)
    except (KeyStoreError, OSError) as exc:
        print(f"registry-gateway registry-config: signing keys: {exc}", file=sys.stderr)
        return 1
    print("# Registry configuration for this gateway; merge into the registry's config.yml.")
    print(
        "# Write the certificate bundle with: registry-gateway keys bundle -o "
        + args.rootcertbundle
    )
    print(f"# signingalgorithms: {where}. Distribution 3.x accepts only these; 2.8 ignores it.")
    sys.stdout.write(registry_config_text(settings, args.rootcertbundle, algorithms))
    return 0


def cmd_hash_password(args: argparse.Namespace) -> int:
    import bcrypt
    from argon2 import PasswordHasher

    if sys.stdin.isatty() and not args.stdin:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("registry-gateway hash-password: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 8:
        print("registry-gateway hash-password: use at least 8 characters", file=sys.stderr)
        return 1
    if args.algorithm == "bcrypt":
        if len(password.encode()) > 72:
            print(
                "registry-gateway hash-password: bcrypt takes at most 72 bytes; use --algorithm argon2id",
                file=sys.stderr,
            )
            return 1
        print(bcrypt.hashpw(password.encode(), bcrypt.gensalt(args.cost)).decode())
    else:
        print(PasswordHasher().hash(password))
    return 0


# -- robot and personal access token secrets -----------------------------------------------

_SHOWN_ONCE = (
    "registry-gateway: the secret above is shown this once and stored nowhere: put it in your "
    "secret store now. Commit the YAML entry (it holds only the SHA-256) to a policy file."
)


def _expires(text: str | None, command: str) -> tuple[dt.date | None, str | None]:
    """(date or None, error message or None) for an --expires value."""
    import datetime as dt

    if text is None:
        return None, None
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        return None, f"registry-gateway {command}: --expires takes a date such as 2027-06-30"
    if day < dt.date.today():
        return None, f"registry-gateway {command}: --expires {day} is in the past"
    return day, None


def cmd_robot(args: argparse.Namespace) -> int:
    from gateway.auth.credentials import ROBOT_PREFIX, new_secret, robot_entry
    from gateway.policy.patterns import is_component

    if not is_component(args.name):
        print(
            f"registry-gateway robot create: {args.name!r} is not a valid name (lower-case "
            "letters and digits, optionally joined by '.', '_' or '-')",
            file=sys.stderr,
        )
        return 2
    expires, error = _expires(args.expires, "robot create")
    if error:
        print(error, file=sys.stderr)
        return 2
    secret = new_secret(ROBOT_PREFIX)
    entry = robot_entry(args.name, secret, expires=expires, description=args.description or "")
    sys.stdout.write(f"{secret}\n\n{entry}")
    print(_SHOWN_ONCE, file=sys.stderr)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    import re
    import secrets

    from gateway.auth.credentials import TOKEN_PREFIX, new_secret, token_entry
    from gateway.policy.model import REPOSITORY_ACTIONS
    from gateway.policy.patterns import is_component

    if not is_component(args.user):
        print(f"registry-gateway token create: {args.user!r} is not a user name", file=sys.stderr)
        return 2
    actions = None
    if args.actions is not None:
        actions = [a.strip() for a in args.actions.split(",") if a.strip()]
        unknown = [a for a in actions if a not in (*REPOSITORY_ACTIONS, "*")]
        if unknown or not actions:
            print(
                "registry-gateway token create: --actions takes pull, push, delete or '*', "
                "comma-separated",
                file=sys.stderr,
            )
            return 2
    expires, error = _expires(args.expires, "token create")
    if error:
        print(error, file=sys.stderr)
        return 2
    name = args.name or f"token-{secrets.token_hex(3)}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        print(
            "registry-gateway token create: --name takes letters, digits, '.', '_' and '-'",
            file=sys.stderr,
        )
        return 2
    secret = new_secret(TOKEN_PREFIX)
    entry = token_entry(
        args.user,
        name,
        secret,
        expires=expires,
        actions=actions,
        description=args.description or "",
    )
    sys.stdout.write(f"{secret}\n\n{entry}")
    print(_SHOWN_ONCE, file=sys.stderr)
    print(
        f"registry-gateway: sign in as {args.user} with this token as the password, "
        "e.g. docker login -u " + args.user,
        file=sys.stderr,
    )
    return 0


# -- reading a token -----------------------------------------------------------------------

MAX_DECODE_INPUT = 1024 * 1024


def read_token(text: str) -> str:
    """The JWT in `text`: a bare token, or the token endpoint's JSON answer; ValueError if none."""
    import json

    text = text.strip()
    if text.startswith("{"):
        try:
            answer = json.loads(text)
        except ValueError:
            raise ValueError("the input is neither a token nor a JSON answer") from None
        found = (
            answer.get("token") or answer.get("access_token") if isinstance(answer, dict) else None
        )
        if not isinstance(found, str):
            raise ValueError('the JSON answer holds no token (no "token" or "access_token")')
        text = found.strip()
    if text.count(".") != 2:
        raise ValueError("a token has three dot-separated parts (header.claims.signature)")
    return text


def decode_token(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of a JWT, NOT verified; ValueError when they are not JSON objects."""
    import base64
    import binascii
    import json

    parts: list[dict[str, Any]] = []
    for name, text in zip(("header", "claims"), token.split(".")[:2], strict=True):
        try:
            value = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        except (binascii.Error, ValueError):
            raise ValueError(f"the token's {name} is not base64url-encoded JSON") from None
        if not isinstance(value, dict):
            raise ValueError(f"the token's {name} is not a JSON object")
        parts.append(value)
    return parts[0], parts[1]


def render_token(header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A decoded token for a terminal: who, for whom, when, and the access it carries."""
    import datetime as dt

    def when(value: object) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            with contextlib.suppress(OverflowError, OSError, ValueError):
                return dt.datetime.fromtimestamp(value, dt.UTC).isoformat(timespec="seconds")
        return repr(value)

    x5c = header.get("x5c")
    chain = f", x5c {len(x5c)} certificate(s)" if isinstance(x5c, list) else ""
    lines = [
        f"header   alg {header.get('alg')}, kid {header.get('kid')}{chain}",
        f"subject  {claims.get('sub', '(none: anonymous)') or '(none: anonymous)'}",
        f"issuer   {claims.get('iss')}   audience {claims.get('aud')}",
        f"issued   {when(claims.get('iat'))}   expires {when(claims.get('exp'))}",
    ]
    access = claims.get("access")
    if isinstance(access, list):
        lines.append("access" if access else "access   (none)")
        for entry in access:
            if isinstance(entry, dict):
                actions = entry.get("actions")
                shown = ",".join(map(str, actions)) if isinstance(actions, list) else "?"
                lines.append(
                    f"  {entry.get('type')}:{entry.get('name')}  {shown or '(nothing granted)'}"
                )
    for key in sorted(set(claims) - {"sub", "iss", "aud", "iat", "exp", "access"}):
        lines.append(f"{key:<8} {claims[key]}")
    return "\n".join(lines)


def cmd_token_decode(args: argparse.Namespace) -> int:
    import json

    data = sys.stdin.read(MAX_DECODE_INPUT + 1)
    try:
        if len(data) > MAX_DECODE_INPUT:
            raise ValueError(f"the input is over {MAX_DECODE_INPUT} bytes")
        header, claims = decode_token(read_token(data))
    except ValueError as exc:
        print(f"registry-gateway token decode: {exc}", file=sys.stderr)
        return 1
    if args.format == "json":
        json.dump({"header": header, "claims": claims}, sys.stdout, indent=2)
        print()
    else:
        print(render_token(header, claims))
    print(
        "registry-gateway token decode: shown as written, NOT verified (the registry checks "
        "the signature)",
        file=sys.stderr,
    )
    return 0


def cmd_webhook(args: argparse.Namespace) -> int:
    """`webhook test NAME`: send a sample event to one subscription of the policy, now."""
    import asyncio

    from gateway.events.publisher import Events
    from gateway.policy.source import PolicySource
    from gateway.policy.webhooks import EVENT_TYPES, full_type

    try:
        settings = settings_from(args)
    except ConfigError as exc:
        print(f"registry-gateway webhook: {exc}", file=sys.stderr)
        return 2
    source = PolicySource(settings.policies)
    if not source.reload():
        print(
            f"registry-gateway webhook: the policy in {settings.policies} is not valid:\n"
            f"{source.status().last_error}",
            file=sys.stderr,
        )
        return 1
    events = Events(settings, source)
    webhooks = events.subscriptions().webhooks
    webhook = webhooks.get(args.name)
    if webhook is None:
        known = ", ".join(sorted(webhooks)) or "none"
        print(
            f"registry-gateway webhook: no webhook {args.name!r} in {settings.policies} "
            f"(webhooks: {known})",
            file=sys.stderr,
        )
        return 2
    kind = args.event.removeprefix("registry-gateway.") if args.event else None
    if kind is not None and kind not in EVENT_TYPES:
        print(f"registry-gateway webhook: unknown event type {args.event!r}", file=sys.stderr)
        return 2

    async def send() -> Any:
        try:
            return await events.send_test(webhook, kind)
        finally:
            await events.stop()

    delivery = asyncio.run(send())
    what = f"sample {full_type(delivery.type)} event {delivery.event_id} to {webhook.url}"
    answer = f"HTTP {delivery.http_status}" if delivery.http_status else "no answer"
    if delivery.status == "delivered":
        print(
            f"webhook {webhook.name}: delivered {what}: {answer} in {delivery.latency_ms} ms "
            f"after {delivery.attempts} {'try' if delivery.attempts == 1 else 'tries'}"
        )
        return 0
    print(
        f"webhook {webhook.name}: NOT delivered ({delivery.status}) {what}: {delivery.error}",
        file=sys.stderr,
    )
    return 1
