"""`registry-gateway doctor`: check the wiring between a running registry and this gateway.

The evidence is gathered here, over HTTP with bounded timeouts and bodies: the registry's
`/v2/` challenge and Date, what the realm answers, whether the registry accepts a token signed
with the gateway's own keys, what the gateway's notifications endpoint and `/healthz` answer.
`doctorchecks.py` judges it. Nothing printed holds a secret or a token.
"""

from __future__ import annotations

import argparse
import email.utils
import json
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from gateway.config import FIELDS, ConfigError, Settings, add_flags, load_settings
from gateway.doctorchecks import (
    CHECKS,
    Challenge,
    CheckResult,
    Problem,
    RegistryConfig,
    RegistryConfigError,
    challenge_problems,
    clock_verdict,
    failed,
    notification_problems,
    parse_challenge,
    policy_errors,
    read_registry_config,
    shown_url,
    token_config_problems,
)

if TYPE_CHECKING:
    import httpx

    from gateway.auth.keys import KeyStore, SigningKey

DOCTOR_SUBJECT = "registry-gateway-doctor"
MAX_BODY = 256 * 1024  # what doctor reads of any answer
DEFAULT_TIMEOUT = 5.0
# The settings doctor reads from flags (all of them also from --config and the environment).
SETTING_FLAGS = (
    "policies",
    "data_dir",
    "service",
    "issuer",
    "public_url",
    "policy_git",
    "policy_path",
)
ENVELOPE_TYPE = "application/vnd.docker.distribution.events.v1+json"


@dataclass(frozen=True)
class Reply:
    """An HTTP answer, its body cut at MAX_BODY, and when it was asked (this host's clock)."""

    status: int
    headers: httpx.Headers
    body: bytes
    asked: float  # the middle of the exchange, seconds since the epoch

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def offset(self) -> float | None:
        """How far the answering host's clock is ahead of this one's, from its Date header."""
        date = self.headers.get("date")
        if not date:
            return None
        try:
            sent = email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            return None
        return sent + 0.5 - self.asked  # a Date has whole seconds: take the middle


class Unreachable(Exception):
    """No HTTP answer: the message says why (refused, timed out, name unknown)."""


class Doctor:
    """Runs the checks against one registry and one gateway, with this gateway's settings."""

    def __init__(
        self,
        settings: Settings,
        *,
        registry: str,
        gateway: str,
        config: RegistryConfig | None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        import httpx

        self.settings = settings
        self.registry = registry.rstrip("/")
        self.gateway = gateway.rstrip("/")
        self.config = config
        self.http = httpx.Client(timeout=timeout, follow_redirects=False)
        self._replies: dict[str, Reply | Unreachable] = {}
        self._keys: KeyStore | None = None
        self.policy_revision: str | None = None  # what the policy check found here

    def close(self) -> None:
        self.http.close()

    # -- evidence ----------------------------------------------------------------------

    def fetch(self, method: str, url: str, **options: Any) -> Reply:
        """One exchange; Unreachable when there is no HTTP answer."""
        import httpx

        started = time.time()
        try:
            with self.http.stream(method, url, **options) as response:
                body = b""
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) >= MAX_BODY:
                        break
                return Reply(
                    response.status_code,
                    response.headers,
                    body[:MAX_BODY],
                    (started + time.time()) / 2,
                )
        except httpx.TimeoutException:
            raise Unreachable(f"no answer within {self.http.timeout.read} s") from None
        except httpx.HTTPError as exc:
            raise Unreachable(str(exc) or type(exc).__name__) from None

    def _once(self, key: str, get: Callable[[], Reply]) -> Reply:
        """An exchange several checks read, made once."""
        if key not in self._replies:
            try:
                self._replies[key] = get()
            except Unreachable as exc:
                self._replies[key] = exc
        found = self._replies[key]
        if isinstance(found, Unreachable):
            raise found
        return found

    def v2(self) -> Reply:
        """The registry's answer to GET /v2/ without a token."""
        return self._once("v2", lambda: self.fetch("GET", f"{self.registry}/v2/"))

    def healthz(self) -> Reply:
        return self._once("healthz", lambda: self.fetch("GET", f"{self.gateway}/healthz"))

    def challenge(self) -> Challenge | None:
        """The registry's Bearer challenge, or None (unreachable, open, another scheme)."""
        try:
            reply = self.v2()
        except Unreachable:
            return None
        found = parse_challenge(reply.headers.get_list("www-authenticate"))
        if reply.status != 401 or found is None or found.scheme.lower() != "bearer":
            return None
        return found

    def keys(self) -> KeyStore:
        from gateway.auth.keys import KeyStore

        if self._keys is None:
            self._keys = KeyStore(self.settings.data_dir, common_name=self.settings.issuer)
        return self._keys

    # -- the checks --------------------------------------------------------------------

    def run(self) -> list[CheckResult]:
        checks: list[tuple[str, Callable[[], CheckResult]]] = [
            ("challenge", self.check_challenge),
            ("token", self.check_token),
            ("clock", self.check_clock),
            ("notifications", self.check_notifications),
            ("policy", self.check_policy),
            ("health", self.check_health),
        ]
        results = []
        for name, check in checks:
            try:
                results.append(check())
            except Exception as exc:  # a bug of ours is one FAIL line, never a traceback
                results.append(
                    CheckResult(
                        name,
                        "FAIL",
                        f"doctor could not run this check ({type(exc).__name__}: {exc})",
                        "report this as a bug of registry-gateway doctor",
                    )
                )
        return results

    def check_challenge(self) -> CheckResult:
        name = "challenge"
        try:
            reply = self.v2()
        except Unreachable as exc:
            return failed(
                name,
                [
                    Problem(
                        f"the registry does not answer at {shown_url(self.registry)}/v2/: {exc}",
                        "start it, or pass --registry with the URL this host reaches it at",
                    )
                ],
            )
        if reply.status == 200:
            return failed(
                name,
                [
                    Problem(
                        "the registry lets anyone in: GET /v2/ answered 200 without a token, "
                        "so it has no auth.token section",
                        "add the auth section `registry-gateway registry-config` prints to its "
                        "config.yml and restart it",
                    )
                ],
            )
        found = parse_challenge(reply.headers.get_list("www-authenticate"))
        if reply.status != 401 or found is None:
            return failed(
                name,
                [
                    Problem(
                        f"GET /v2/ answered HTTP {reply.status} without a challenge, not 401 "
                        "with WWW-Authenticate: Bearer",
                        "check that --registry is the registry's address",
                    )
                ],
            )
        if found.scheme.lower() != "bearer":
            return failed(
                name,
                [
                    Problem(
                        f"the registry asks for {found.scheme} authentication, not a token",
                        "replace its auth section (htpasswd?) with the token section "
                        "`registry-gateway registry-config` prints, and restart it",
                    )
                ],
            )
        problems = challenge_problems(self.settings, found, self.config)
        problems += self._realm_problems(found)
        if problems:
            return failed(name, problems)
        return CheckResult(
            name,
            "ok",
            f"the registry sends clients to {shown_url(found.realm)} (this gateway, which "
            f"answers) for service {found.service!r}",
        )

    def _realm_problems(self, challenge: Challenge) -> list[Problem]:
        """Whether the realm answers, as a token endpoint signing with this gateway's keys."""
        from gateway.auth.keys import KeyStoreError

        realm = challenge.realm
        if urlsplit(realm).scheme not in ("http", "https"):
            return []  # challenge_problems named it already
        ours = realm.rstrip("/") == self.settings.realm
        start = (
            "start the gateway (registry-gateway serve), or set public_url to where clients "
            "reach it"
            if ours
            else f"point the realm at {self.settings.realm}"
        )
        try:
            reply = self.fetch("GET", realm, params={"service": challenge.service})
        except Unreachable as exc:
            return [
                Problem(f"the realm {shown_url(realm)} does not answer from here: {exc}", start)
            ]
        body = reply.json()
        if reply.status == 400 and challenge.service != self.settings.service:
            return []  # the gateway refused the wrong service: challenge_problems said so
        token = body.get("token") if isinstance(body, dict) else None
        if reply.status != 200 or not isinstance(token, str):
            return [
                Problem(
                    f"the realm {shown_url(realm)} answered HTTP {reply.status} to an "
                    "anonymous token request, not a token",
                    start,
                )
            ]
        kid = _token_kid(token)
        try:
            known = {key.kid for key in self.keys().keys()}
        except (KeyStoreError, OSError):  # the token check reports unreadable keys
            return []
        if known and kid not in known:  # no keys at all: the token check says so
            return [
                Problem(
                    f"the realm's tokens are signed with key {kid}, which is not in "
                    f"{self.settings.data_dir}/keys: the realm is another gateway, or doctor "
                    "reads another data dir",
                    "run doctor with the gateway's own settings (--config, --data-dir)",
                )
            ]
        return []

    def check_token(self) -> CheckResult:
        from gateway.auth.keys import KeyStoreError
        from gateway.auth.tokens import TokenIssuer

        name = "token"
        challenge = self.challenge()
        if challenge is None:
            return CheckResult(name, "skip", "the registry asks for no token (see challenge)")
        settings = self.settings
        try:
            keys = self.keys().keys()
            if not keys:
                raise KeyStoreError(f"there are none in {self.keys().keys_dir}")
            key = keys[-1]  # the newest signs
        except (KeyStoreError, OSError) as exc:
            return failed(
                name,
                [
                    Problem(
                        f"cannot read the gateway's signing keys: {exc}",
                        "run doctor with the gateway's data dir (--data-dir, or its --config) "
                        "as a user who may read it",
                    )
                ],
            )
        issuer = TokenIssuer(self.keys(), issuer=settings.issuer, service=settings.service, ttl=60)
        token = issuer.issue_access_token(DOCTOR_SUBJECT, []).token
        try:
            reply = self.fetch(
                "GET", f"{self.registry}/v2/", headers={"Authorization": f"Bearer {token}"}
            )
        except Unreachable as exc:
            return failed(
                name,
                [Problem(f"the registry stopped answering: {exc}", "run doctor again")],
            )
        written = self._config_token_problems(key)
        if reply.status == 200:
            if written:
                assert self.config is not None
                return failed(
                    name,
                    [
                        Problem(
                            "the registry accepts the gateway's tokens now, but "
                            f"{self.config.path} would refuse them after a restart: "
                            + "; ".join(p.what for p in written),
                            written[0].fix,
                        ),
                        *written[1:],
                    ],
                )
            pinned = ""
            if self.config is not None and self.config.signing_algorithms is None:
                pinned = (
                    f" ({self.config.path} does not pin signingalgorithms, so Distribution 3.x "
                    "would also take HS256 tokens: `registry-gateway registry-config` prints "
                    "the line)"
                )
            return CheckResult(
                name,
                "ok",
                f"the registry accepted a token signed with key {key.kid} ({key.algorithm}), "
                f"issuer {settings.issuer!r}, audience {settings.service!r}{pinned}",
            )
        refusal = parse_challenge(reply.headers.get_list("www-authenticate"))
        error = refusal.error if refusal is not None else ""
        if reply.status != 401 or error != "invalid_token":
            return failed(
                name,
                [
                    Problem(
                        f"GET /v2/ with the gateway's token answered HTTP {reply.status}"
                        + (f" ({error})" if error else ""),
                        "read the registry's log (level info) for why",
                    )
                ],
            )
        return failed(name, self._why_invalid(key, challenge, written))

    def _config_token_problems(self, key: SigningKey) -> list[Problem]:
        if self.config is None:
            return []
        return token_config_problems(
            self.settings,
            self.config,
            algorithm=key.algorithm,
            kid=key.kid,
            bundle_holds_key=self._bundle_holds(key),
        )

    def _bundle_holds(self, key: SigningKey) -> bool | None:
        """Whether the registry's rootcertbundle holds `key`'s certificate (None: unreadable)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        path = self.config.value("rootcertbundle") if self.config else None
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                certificates = x509.load_pem_x509_certificates(f.read(MAX_BODY))
        except (OSError, ValueError):
            return None
        der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ours = key.public_key().public_bytes(der, spki)
        return any(c.public_key().public_bytes(der, spki) == ours for c in certificates)

    def _why_invalid(
        self, key: SigningKey, challenge: Challenge, written: list[Problem]
    ) -> list[Problem]:
        """The likely causes of an invalid_token, most likely first."""
        head = "the registry refused a token signed by this gateway (invalid_token)"
        causes = list(written)
        if challenge.service != self.settings.service and not any(
            "service" in p.what for p in causes
        ):
            causes.append(
                Problem(
                    f"its service {challenge.service!r} is not the token's audience "
                    f"{self.settings.service!r}",
                    f"set auth.token.service: {self.settings.service} in the registry's config "
                    "and restart it",
                )
            )
        offset = self._registry_offset()
        if offset is not None and abs(offset) > 60:
            causes.append(
                Problem(
                    f"its clock is {abs(offset):.0f} s {'ahead of' if offset > 0 else 'behind'} "
                    "this host's",
                    "synchronise the clocks with NTP",
                )
            )
        if not causes and self.config is not None:
            causes.append(
                Problem(
                    f"{self.config.path} agrees with this gateway, so the running registry has "
                    "not read it (or REGISTRY_AUTH_TOKEN_* variables override it)",
                    "restart the registry: it reads its config and bundle only at start",
                )
            )
        if not causes:
            causes.append(
                Problem(
                    f"its auth.token.issuer is not {self.settings.issuer!r}, or its "
                    f"rootcertbundle lacks the certificate of key {key.kid}",
                    "pass --registry-config FILE (the registry's config.yml) to tell which; "
                    "`registry-gateway registry-config` and `keys bundle -o FILE` write the "
                    "right values",
                )
            )
        first = causes[0]
        return [Problem(f"{head}: {first.what}", first.fix), *causes[1:]]

    def _registry_offset(self) -> float | None:
        try:
            return self.v2().offset()
        except Unreachable:
            return None

    def check_clock(self) -> CheckResult:
        name = "clock"
        try:
            reply = self.v2()
        except Unreachable:
            return CheckResult(name, "skip", "the registry does not answer (see challenge)")
        offset = reply.offset()
        if offset is None:
            return failed(
                name,
                [
                    Problem(
                        "the registry's answer has no Date header to read its clock from",
                        "let whatever is in front of the registry pass its Date header",
                    )
                ],
            )
        try:
            gateway_offset = self.healthz().offset()
        except Unreachable:
            gateway_offset = None
        return clock_verdict(offset, gateway_offset, token_ttl=self.settings.token_ttl)

    def check_notifications(self) -> CheckResult:
        name = "notifications"
        settings = self.settings
        secret = settings.notification_secret
        if not secret:
            if settings.registry_url is None and not (self.config and self.config.endpoints):
                return CheckResult(
                    name,
                    "skip",
                    "the gateway has no catalog (registry_url is unset), so it uses no "
                    "notifications",
                )
            return failed(
                name,
                [
                    Problem(
                        "notification_secret is not set, so the gateway refuses every "
                        "notification and its catalog sees pushes only at the next full re-read",
                        "set REGISTRY_GATEWAY_NOTIFICATION_SECRET (or notification_secret in "
                        "the config file) for the gateway and doctor, and the registry's "
                        "notifications section `registry-gateway registry-config` prints",
                    )
                ],
            )
        url = f"{self.gateway}/-/notifications"
        problems = []
        try:
            reply = self.fetch(
                "POST",
                url,
                content=b'{"events": []}',
                headers={
                    "Authorization": f"Bearer {secret.reveal()}",
                    "Content-Type": ENVELOPE_TYPE,
                },
            )
        except Unreachable as exc:
            problems.append(
                Problem(
                    f"the gateway does not answer at {shown_url(url)}: {exc}",
                    "start it, or pass --gateway URL",
                )
            )
        else:
            if reply.status == 401:
                problems.append(
                    Problem(
                        f"the gateway at {shown_url(url)} refused a probe with this "
                        "notification_secret (401): it runs with another secret, or none",
                        "give the gateway and doctor the same notification_secret (env or "
                        "config file), and the registry's endpoint the same",
                    )
                )
            elif reply.status != 200:
                problems.append(
                    Problem(
                        f"the gateway at {shown_url(url)} answered a probe envelope with HTTP "
                        f"{reply.status}",
                        "check --gateway and that nothing in front of the gateway changes "
                        "the request",
                    )
                )
        if self.config is not None:
            problems += notification_problems(settings, self.config)
        if problems:
            return failed(name, problems)
        where = ""
        if self.config is not None:
            urls = sorted(
                {shown_url(str(e.get("url"))) for e in self.config.endpoints if e.get("url")}
            )
            where = f"; the registry sends them to {', '.join(urls)}"
        return CheckResult(
            name,
            "ok",
            f"the gateway accepted a probe envelope with notification_secret{where}",
        )

    def policy_directory(self) -> Path:
        settings = self.settings
        if settings.policy_git:
            return settings.data_dir / "policy-git" / settings.policy_path
        return settings.policies

    def check_policy(self) -> CheckResult:
        from gateway.policy.check import check_directory

        name = "policy"
        directory = self.policy_directory()
        if not directory.is_dir():
            return failed(
                name,
                [
                    Problem(
                        f"no policy directory at {directory}",
                        "run doctor with the gateway's settings (--policies, or --data-dir "
                        "with --policy-git), on its host",
                    )
                ],
            )
        report = check_directory(directory)
        self.policy_revision = report.revision
        if not report.ok or report.tests_failed:
            return failed(
                name,
                [
                    Problem(
                        f"{directory}: {report.summary()}: {policy_errors(report.problems)}",
                        f"run `registry-gateway check {directory}` and fix what it lists (the "
                        "gateway keeps serving its last good policy meanwhile)",
                    )
                ],
            )
        return CheckResult(
            name,
            "ok",
            f"{directory} is valid and its {report.tests_run} tests pass (revision "
            f"{report.revision})",
        )

    def check_health(self) -> CheckResult:
        name = "health"
        url = f"{self.gateway}/healthz"
        try:
            reply = self.healthz()
        except Unreachable as exc:
            return failed(
                name,
                [
                    Problem(
                        f"the gateway does not answer at {shown_url(url)}: {exc}",
                        "start it (registry-gateway serve), or pass --gateway URL (default: "
                        "public_url)",
                    )
                ],
            )
        body = reply.json()
        if not isinstance(body, dict) or "status" not in body:
            return failed(
                name,
                [
                    Problem(
                        f"{shown_url(url)} answered HTTP {reply.status}, not the gateway's health",
                        "pass --gateway with the gateway's URL",
                    )
                ],
            )
        status, revision = body.get("status"), body.get("revision")
        if status != "ok":
            error = body.get("error") or "no valid policy"
            return failed(
                name,
                [
                    Problem(
                        f"the gateway is {status} (HTTP {reply.status}): {error}",
                        "fix the policy (`registry-gateway check`); the gateway reloads it "
                        "by itself, and keeps its last good revision meanwhile"
                        if status in ("degraded", "unavailable")
                        else "wait for the restart to finish, or start the gateway again",
                    )
                ],
            )
        local = self.policy_revision
        if local is not None and revision != local:
            return failed(
                name,
                [
                    Problem(
                        f"the gateway serves revision {revision}, but the policy here is {local}",
                        "let it reload (POST /-/reload, or restart it), or run doctor with "
                        "the gateway's own --policies",
                    )
                ],
            )
        return CheckResult(
            name,
            "ok",
            f"the gateway is ok, serving revision {revision} (version {body.get('version')})",
        )


def _token_kid(token: str) -> str | None:
    import base64

    try:
        part = token.split(".")[0]
        header = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (ValueError, IndexError):
        return None
    kid = header.get("kid") if isinstance(header, dict) else None
    return kid if isinstance(kid, str) else None


# -- the command ---------------------------------------------------------------------------


def render_text(results: list[CheckResult]) -> str:
    failures = sum(r.failed for r in results)
    lines = [r.line() for r in results]
    summary = (
        f"doctor: {failures} of {len(results)} checks FAIL"
        if failures
        else "doctor: all checks ok"
        + (" (some skipped)" if any(r.status == "skip" for r in results) else "")
    )
    return "\n".join([*lines, summary])


def render_json(results: list[CheckResult], *, registry: str, gateway: str) -> str:
    document = {
        "ok": not any(r.failed for r in results),
        "registry": shown_url(registry),
        "gateway": shown_url(gateway),
        "checks": [r.as_json() for r in results],
    }
    return json.dumps(document, indent=2)


def add_parser(sub: Any) -> None:
    """The `doctor` subcommand, on the CLI's subparsers."""
    checks = "\n".join(
        textwrap.fill(text, 92, initial_indent=f"  {name:<15}", subsequent_indent=" " * 17)
        for name, text in CHECKS
    )
    parser = sub.add_parser(
        "doctor",
        help="check the wiring between a running registry and this gateway",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Check, against a running registry and this gateway's settings (the ones `serve`\n"
            "reads: --config, REGISTRY_GATEWAY_* and flags), everything the two must agree on.\n"
            "Each check prints one line: ok, FAIL with the fix, or skip when another check's\n"
            "failure hides it. Exit status 0 when none fails, 1 when one does, 2 for usage.\n\n"
            f"The checks:\n{checks}"
        ),
        epilog=(
            "example: registry-gateway doctor --config /etc/registry-gateway.yml \\\n"
            "    --registry https://registry.example.com --registry-config /etc/docker/registry/config.yml"
        ),
    )
    parser.add_argument(
        "--registry",
        metavar="URL",
        help="the registry, as this host reaches it (default: the registry_url setting)",
    )
    parser.add_argument(
        "--gateway",
        metavar="URL",
        help="the gateway, as this host reaches it (default: the public_url setting)",
    )
    parser.add_argument(
        "--registry-config",
        metavar="FILE",
        help="the registry's config.yml: compared with the gateway's settings to tell why a "
        "token is refused, and whether notifications are wired",
    )
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="for each HTTP request (default: %(default)s)",
    )
    add_flags(parser, SETTING_FLAGS)
    parser.set_defaults(func=main)


def _url(text: str | None) -> str | None:
    if text is None:
        return None
    parts = urlsplit(text)
    return text.rstrip("/") if parts.scheme in ("http", "https") and parts.netloc else None


def main(args: argparse.Namespace) -> int:
    def usage(message: str) -> int:
        print(f"registry-gateway doctor: {message}", file=sys.stderr)
        return 2

    flags = {f.name: getattr(args, f.name, None) for f in FIELDS}
    try:
        settings = load_settings(flags, config_file=args.config)
    except ConfigError as exc:
        return usage(str(exc))
    registry = _url(args.registry or settings.registry_url)
    if registry is None:
        return usage(
            "--registry URL is required (an http:// or https:// URL; or the registry_url setting)"
        )
    gateway = _url(args.gateway or settings.public_url)
    if gateway is None:
        return usage("--gateway takes an http:// or https:// URL")
    if not 0 < args.timeout <= 120:
        return usage("--timeout takes seconds between 0 and 120")
    config = None
    if args.registry_config:
        try:
            config = read_registry_config(Path(args.registry_config))
        except RegistryConfigError as exc:
            return usage(f"--registry-config: {exc}")
    doctor = Doctor(
        settings, registry=registry, gateway=gateway, config=config, timeout=args.timeout
    )
    try:
        results = doctor.run()
    finally:
        doctor.close()
    if args.format == "json":
        print(render_json(results, registry=registry, gateway=gateway))
    else:
        print(render_text(results))
    return 1 if any(r.failed for r in results) else 0
