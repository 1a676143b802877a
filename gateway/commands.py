"""The gateway's operational commands: serve, keys, registry-config, hash-password."""

from __future__ import annotations

import argparse
import getpass
import io
import os
import shutil
import sys
from pathlib import Path

from gateway.config import FIELDS, ConfigError, Settings, env_name, load_settings


def settings_from(args: argparse.Namespace) -> Settings:
    flags = {f.name: getattr(args, f.name, None) for f in FIELDS}
    return load_settings(flags, config_file=getattr(args, "config", None))


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import PolicyUnavailable, load_first_policy, policy_source
    from gateway.auth.keys import KeyStore, KeyStoreError
    from gateway.logs import configure
    from gateway.server import serve

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
    try:
        KeyStore(settings.data_dir, common_name=settings.issuer).ensure(settings.key_algorithm)
    except (KeyStoreError, OSError) as exc:
        print(
            f"registry-gateway serve: signing keys in {settings.data_dir}: {exc}", file=sys.stderr
        )
        return 1
    try:
        load_first_policy(*policy_source(settings))
    except PolicyUnavailable as exc:
        print(
            f"registry-gateway serve: not serving tokens without a valid policy: {exc}",
            file=sys.stderr,
        )
        return 1
    # Workers rebuild the settings from the environment: publish the resolved ones there.
    for field in FIELDS:
        value = getattr(settings, field.name)
        if field.flag and value is not None:
            os.environ[env_name(field.name)] = str(value)
    if getattr(args, "config", None):
        os.environ[env_name("config")] = str(args.config)
    if settings.workers > 1:
        # Workers add their samples up in files here; start empty so the dead don't count.
        metrics_dir = settings.data_dir / "metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    config = uvicorn.Config(
        "gateway.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http="httptools",
        log_config=log_config,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=20,
    )
    serve(config, workers=settings.workers, drain=settings.drain_seconds)
    return 0


def _keystore(args: argparse.Namespace):
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


def registry_config_text(settings: Settings, rootcertbundle: str) -> str:
    """The registry's auth (and notifications) sections for these settings, as YAML."""
    from ruamel.yaml import YAML

    config: dict = {
        "auth": {
            "token": {
                "realm": settings.realm,
                "service": settings.service,
                "issuer": settings.issuer,
                "rootcertbundle": rootcertbundle,
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
    try:
        settings = settings_from(args)
    except ConfigError as exc:
        print(f"registry-gateway registry-config: {exc}", file=sys.stderr)
        return 2
    print("# Registry configuration for this gateway; merge into the registry's config.yml.")
    print(
        "# Write the certificate bundle with: registry-gateway keys bundle -o "
        + args.rootcertbundle
    )
    sys.stdout.write(registry_config_text(settings, args.rootcertbundle))
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
