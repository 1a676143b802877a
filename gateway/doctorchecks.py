"""`doctor`'s verdicts, pure: what the registry's answers and config file mean for the wiring.

No HTTP here: `doctor.py` gathers the evidence (the registry's challenge, its clock, what the
gateway answers) and these functions say what is wrong and how to fix it, in one line each.
Nothing a function returns may hold a secret: the notification secret is compared, never shown.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from gateway.config import Settings
from gateway.policy.load import Problem as PolicyProblem

__all__ = [
    "CHECKS",
    "CLOCK_TOLERANCE",
    "LEEWAY",
    "Challenge",
    "CheckResult",
    "Problem",
    "RegistryConfig",
    "RegistryConfigError",
    "challenge_problems",
    "clock_verdict",
    "notification_problems",
    "parse_challenge",
    "policy_errors",
    "read_registry_config",
    "shown_url",
    "token_config_problems",
]

# Distribution's leeway on a token's nbf and exp, both ways, and how much of it doctor lets a
# skew use up: beyond that, a little more drift refuses every token.
LEEWAY = 60
CLOCK_TOLERANCE = 30.0
MAX_CONFIG_BYTES = 1 << 20
PLACEHOLDER = "<notification_secret>"

# The six checks, in the order they run, and what each one looks at (`doctor --help`).
CHECKS: tuple[tuple[str, str], ...] = (
    (
        "challenge",
        "GET /v2/ on the registry must answer 401 with WWW-Authenticate: Bearer realm=...,"
        "service=...; the realm must be this gateway's token endpoint (<public_url>/auth/token) "
        "and answer, with tokens signed by this gateway's keys; the service must be the "
        "gateway's service (every token's audience).",
    ),
    (
        "token",
        "a token signed with the gateway's newest key (from its data dir) and no access at all "
        "must open GET /v2/; a 401 invalid_token means the registry's issuer, service, "
        "certificate bundle (or, on Distribution 3.x, signingalgorithms) do not match, and "
        "--registry-config FILE says which.",
    ),
    (
        "clock",
        f"the Date headers of the registry and the gateway must agree within "
        f"{CLOCK_TOLERANCE:.0f} s: the registry allows tokens {LEEWAY} s of skew either way.",
    ),
    (
        "notifications",
        "a probe envelope with no events, sent to <gateway>/-/notifications with "
        "notification_secret, must be accepted; with --registry-config, the registry's "
        "notifications endpoint must be that URL with Authorization: Bearer <the same secret>.",
    ),
    (
        "policy",
        "the policy directory the gateway reads must load and its own tests must pass (what "
        "`registry-gateway check` does).",
    ),
    (
        "health",
        "the gateway's /healthz must answer status ok, serving the revision found here.",
    ),
)


class RegistryConfigError(ValueError):
    """The registry's config file cannot be read or is not a registry configuration."""


@dataclass(frozen=True)
class CheckResult:
    """One check's verdict: `ok`, `FAIL` or `skip` (another check's failure hides it)."""

    name: str
    status: str
    detail: str
    fix: str | None = None

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"

    def line(self) -> str:
        """The one line `doctor` prints for it."""
        text = f"{self.status:<5} {self.name:<14} {self.detail}"
        return f"{text}. Fix: {self.fix}" if self.fix else text

    def as_json(self) -> dict[str, Any]:
        return {
            "check": self.name,
            "status": self.status,
            "ok": not self.failed,
            "detail": self.detail,
            "fix": self.fix,
        }


@dataclass(frozen=True)
class Problem:
    """Something wrong, and what to do about it."""

    what: str
    fix: str


def failed(name: str, problems: list[Problem]) -> CheckResult:
    """A FAIL naming every problem (most likely first) and their fixes, on one line."""
    fixes = list(dict.fromkeys(p.fix for p in problems))
    return CheckResult(name, "FAIL", "; ".join(p.what for p in problems), "; ".join(fixes))


def shown_url(url: str) -> str:
    """A URL fit to print: no user name, password or query (which may carry a secret)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


# -- the registry's challenge ------------------------------------------------------------

_PARAM = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?')


@dataclass(frozen=True)
class Challenge:
    """A `WWW-Authenticate` challenge: its scheme and parameters."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")

    @property
    def service(self) -> str:
        return self.params.get("service", "")

    @property
    def error(self) -> str:
        return self.params.get("error", "")


def parse_challenge(values: Iterable[str]) -> Challenge | None:
    """The first challenge of the `WWW-Authenticate` values, Bearer preferred; None if none."""
    found: list[Challenge] = []
    for value in values:
        scheme, _, rest = value.strip().partition(" ")
        if not scheme:
            continue
        params: dict[str, str] = {}
        position = 0
        while position < len(rest):
            match = _PARAM.match(rest, position)
            if match is None or match.end() == position:
                break
            quoted, bare = match.group(2), match.group(3)
            params[match.group(1).lower()] = (
                re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
            )
            position = match.end()
        found.append(Challenge(scheme, params))
    bearer = [c for c in found if c.scheme.lower() == "bearer"]
    return (bearer or found)[0] if found else None


# -- the registry's config file ----------------------------------------------------------


@dataclass(frozen=True)
class RegistryConfig:
    """What doctor reads of the registry's config.yml: auth.token and the notification
    endpoints (nothing else: the file holds secrets doctor has no business printing)."""

    path: Path
    token: Mapping[str, Any] | None
    endpoints: tuple[Mapping[str, Any], ...]

    def value(self, key: str) -> str | None:
        raw = (self.token or {}).get(key)
        return None if raw is None else str(raw)

    @property
    def signing_algorithms(self) -> list[str] | None:
        raw = (self.token or {}).get("signingalgorithms")
        if raw is None:
            return None
        return [str(a) for a in raw] if isinstance(raw, list) else [str(raw)]


def read_registry_config(path: Path) -> RegistryConfig:
    """The registry's config file; RegistryConfigError when it cannot be used."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise RegistryConfigError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise RegistryConfigError(f"{path} is over {MAX_CONFIG_BYTES} bytes")
    try:
        config = yaml.safe_load(data)
    except yaml.YAMLError:
        raise RegistryConfigError(f"{path} is not valid YAML") from None
    if not isinstance(config, dict):
        raise RegistryConfigError(f"{path} is not a registry configuration (a YAML mapping)")
    auth = config.get("auth")
    token = auth.get("token") if isinstance(auth, dict) else None
    notifications = config.get("notifications")
    endpoints = notifications.get("endpoints") if isinstance(notifications, dict) else None
    return RegistryConfig(
        path,
        token if isinstance(token, dict) else None,
        tuple(e for e in endpoints or () if isinstance(e, dict)),
    )


def _same_url(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def challenge_problems(
    settings: Settings, challenge: Challenge, config: RegistryConfig | None
) -> list[Problem]:
    """What is wrong with the registry's Bearer challenge for this gateway."""
    restart = "and restart the registry"
    problems = []
    if not _same_url(challenge.realm, settings.realm):
        problems.append(
            Problem(
                f"the registry sends clients to realm {challenge.realm or '(none)'}, but this "
                f"gateway's token endpoint is {settings.realm}",
                f"set auth.token.realm: {settings.realm} in the registry's config {restart}, "
                "or the gateway's public_url if clients reach it at that realm",
            )
        )
    if challenge.service != settings.service:
        problems.append(
            Problem(
                f"the registry's service is {challenge.service or '(none)'!r}, but the "
                f"gateway's is {settings.service!r} (every token's audience)",
                f"set auth.token.service: {settings.service} in the registry's config {restart}, "
                f"or the gateway's service to {challenge.service!r}",
            )
        )
    if config is not None and config.token is not None:
        for key, live in (("realm", challenge.realm), ("service", challenge.service)):
            written = config.value(key)
            if written is not None and written.rstrip("/") != live.rstrip("/"):
                problems.append(
                    Problem(
                        f"{config.path} says {key} {written}, but the registry answers "
                        f"{live or '(none)'}",
                        "restart the registry, or pass the config file it actually runs with "
                        "(REGISTRY_AUTH_TOKEN_* variables override the file)",
                    )
                )
    elif config is not None:
        problems.append(
            Problem(
                f"{config.path} has no auth.token section, yet the registry asks for tokens",
                "pass the config file the registry runs with",
            )
        )
    return problems


# -- the token -----------------------------------------------------------------------------


def token_config_problems(
    settings: Settings,
    config: RegistryConfig,
    *,
    algorithm: str,
    kid: str,
    bundle_holds_key: bool | None,
) -> list[Problem]:
    """Why a registry running `config` would refuse the gateway's tokens, most likely first.

    `bundle_holds_key` says whether the config's rootcertbundle holds the signing key's
    certificate (None: the file cannot be read from here)."""
    where = f"in {config.path} and restart the registry"
    if config.token is None:
        return [
            Problem(
                f"{config.path} has no auth.token section",
                "add the auth section `registry-gateway registry-config` prints, and restart",
            )
        ]
    problems = []
    issuer = config.value("issuer")
    if issuer != settings.issuer:
        problems.append(
            Problem(
                f"the registry trusts issuer {issuer!r}, but the gateway signs as "
                f"{settings.issuer!r}",
                f"set auth.token.issuer: {settings.issuer} {where}, or the gateway's issuer "
                f"to {issuer!r}",
            )
        )
    service = config.value("service")
    if service != settings.service:
        problems.append(
            Problem(
                f"the registry's service is {service!r}, but the gateway's tokens are for "
                f"{settings.service!r}",
                f"set auth.token.service: {settings.service} {where}",
            )
        )
    bundle = config.value("rootcertbundle")
    if bundle is None:
        problems.append(
            Problem(
                f"{config.path} has no rootcertbundle (the gateway's tokens are checked "
                "against it, also by Distribution 3.x)",
                f"write it with `registry-gateway keys bundle -o FILE`, set "
                f"auth.token.rootcertbundle: FILE {where}",
            )
        )
    elif bundle_holds_key is False:
        problems.append(
            Problem(
                f"the registry's rootcertbundle {bundle} does not hold the certificate of the "
                f"gateway's signing key {kid}",
                f"write it again with `registry-gateway keys bundle --data-dir "
                f"{settings.data_dir} -o {bundle}` and restart the registry",
            )
        )
    pinned = config.signing_algorithms
    if pinned is not None and algorithm not in pinned:
        problems.append(
            Problem(
                f"the registry's signingalgorithms {pinned} leave out {algorithm}, the "
                "signing key's algorithm (Distribution 3.x refuses every token; 2.8 ignores "
                "the list)",
                f"set auth.token.signingalgorithms to what `registry-gateway registry-config "
                f"--data-dir {settings.data_dir}` prints {where}",
            )
        )
    return problems


# -- the clock -----------------------------------------------------------------------------


def clock_verdict(
    registry_offset: float, reference_offset: float | None, *, token_ttl: int
) -> CheckResult:
    """Judge the registry's clock against the gateway's (or this host's, when the gateway's
    is unknown). Offsets are seconds ahead of this host's clock, from Date headers."""
    reference = "the gateway's" if reference_offset is not None else "this host's"
    skew = registry_offset - (reference_offset or 0.0)
    size = abs(skew)
    direction = "ahead of" if skew > 0 else "behind"
    if size < 2:  # Date headers have whole seconds: this is agreement
        return CheckResult("clock", "ok", f"the registry's clock agrees with {reference}")
    if size <= CLOCK_TOLERANCE:
        return CheckResult(
            "clock",
            "ok",
            f"the registry's clock is {size:.0f} s {direction} {reference} (tokens allow "
            f"{LEEWAY} s)",
        )
    if skew < 0 and size > LEEWAY:
        effect = (
            f"it takes every token for one not valid yet for its first {size - LEEWAY:.0f} s, "
            "and refuses it (invalid_token)"
        )
    elif skew < 0:
        effect = f"tokens are within its {LEEWAY} s leeway by {LEEWAY - size:.0f} s only"
    elif size > token_ttl + LEEWAY:
        effect = f"every token has expired when it arrives (token_ttl {token_ttl} s)"
    else:
        effect = f"tokens expire {size:.0f} s early, after {token_ttl + LEEWAY - size:.0f} s"
    return CheckResult(
        "clock",
        "FAIL",
        f"the registry's clock is {size:.0f} s {direction} {reference}: {effect}",
        "synchronise the clocks of the registry's and the gateway's hosts with NTP (chrony, "
        "systemd-timesyncd)",
    )


# -- the policy ---------------------------------------------------------------------------


def policy_errors(problems: Iterable[PolicyProblem], *, files: int = 4) -> str:
    """The first error of each file (of the first `files` files), where and what: one file's
    mistake makes others fail to resolve, so every file with an error is named."""
    first: dict[str, PolicyProblem] = {}
    for problem in problems:
        if problem.severity == "error":
            first.setdefault(problem.location.file, problem)
    shown = [
        f"{Path(p.location.file).name}:{p.location.line}:{p.location.column} {p.message[:200]}"
        for p in list(first.values())[:files]
    ]
    more = f" (and {len(first) - files} more files)" if len(first) > files else ""
    return "; ".join(shown) + more


# -- notifications -------------------------------------------------------------------------


def _header_values(endpoint: Mapping[str, Any], name: str) -> list[str]:
    headers = endpoint.get("headers")
    if not isinstance(headers, dict):
        return []
    for key, value in headers.items():
        if str(key).lower() == name.lower():
            return [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return []


def notification_problems(settings: Settings, config: RegistryConfig) -> list[Problem]:
    """What is wrong with the registry's notification endpoints for this gateway."""
    restart = "and restart the registry"
    ours = [
        e
        for e in config.endpoints
        if str(e.get("url", "")).rstrip("/").endswith("/-/notifications")
    ]
    if not ours:
        return [
            Problem(
                f"{config.path} has no notifications endpoint for the gateway "
                "(<gateway>/-/notifications): the catalog sees pushes only at its next "
                "refresh (catalog_refresh) and moved tags at its next full re-read "
                "(catalog_full_refresh)",
                "add the notifications section `registry-gateway registry-config` prints, "
                f"with the secret in place of {PLACEHOLDER}, {restart}",
            )
        ]
    secret = settings.notification_secret
    expected = f"Bearer {secret.reveal()}".encode() if secret else None
    problems = []
    for endpoint in ours:
        name = str(endpoint.get("name", "(unnamed)"))
        if endpoint.get("disabled") is True:
            problems.append(
                Problem(
                    f"the registry's notifications endpoint {name} is disabled",
                    f"remove `disabled: true` from it {restart}",
                )
            )
        values = _header_values(endpoint, "Authorization")
        if not values:
            problems.append(
                Problem(
                    f"the registry's notifications endpoint {name} sends no Authorization "
                    "header: the gateway answers 401 and the registry retries for ever",
                    f"add headers: {{Authorization: [Bearer <notification_secret>]}} to it "
                    f"{restart}",
                )
            )
        elif any(PLACEHOLDER in v for v in values):
            problems.append(
                Problem(
                    f"the registry's notifications endpoint {name} still has the placeholder "
                    f"{PLACEHOLDER} in its Authorization header",
                    f"put the secret itself in place of {PLACEHOLDER} {restart}",
                )
            )
        elif expected is not None and not (
            len(values) == 1 and hmac.compare_digest(values[0].encode(), expected)
        ):
            problems.append(
                Problem(
                    f"the registry's notifications endpoint {name} sends an Authorization "
                    "header other than Bearer <notification_secret> (value not shown): the "
                    "gateway answers 401 and the registry retries for ever",
                    f"set it to Bearer and this gateway's notification_secret {restart}",
                )
            )
    return problems
