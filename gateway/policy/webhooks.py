"""The policy's `webhooks:` section: subscriptions to the gateway's events, read and checked
like every other section (each problem at file:line:column). docs/events.md describes it.

A subscription names where events go (`url`), which event types it wants (`events`), on
which repositories (`repositories`, patterns; none for every repository and for the events
that concern no repository), and where its signing secret is: an environment variable
(`secret_env`) or a file (`secret_file`). A secret written in the policy itself is an error:
policy files are read by everyone who reads the repository they live in.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from urllib.parse import parse_qsl, urlsplit

from gateway.policy import yamlnodes as yn
from gateway.policy.model import Location, Webhook
from gateway.policy.patterns import PatternError, compile_pattern
from gateway.policy.sections import Report, mapping, merge_named, read_named

TYPE_PREFIX = "registry-gateway."

# Every event type, without TYPE_PREFIX, and what it reports.
EVENT_TYPES: dict[str, str] = {
    "image.pushed": "a manifest was pushed (the registry's notification)",
    "image.deleted": "a manifest was deleted by digest (the registry's notification)",
    "tag.deleted": "a tag was deleted (the registry's notification)",
    "repository.deleted": "a repository was deleted (the registry's notification)",
    "token.denied": "a token request was refused an action it named",
    "signin.locked_out": "failed sign-ins locked a user name or a client address out",
    "policy.changed": "a new policy revision is in force (with its permission diff)",
    "key.rotated": "the gateway signs with a new key",
}
# The events about one repository: a subscription's `repositories` patterns filter them.
REPOSITORY_EVENTS = frozenset(
    {"image.pushed", "image.deleted", "tag.deleted", "repository.deleted", "token.denied"}
)
FORMATS = ("cloudevents", "harbor")
# The events Harbor's payload format has a type for (PUSH_ARTIFACT, DELETE_ARTIFACT).
HARBOR_EVENTS = frozenset({"image.pushed", "image.deleted", "tag.deleted"})
FIELDS = ("url", "events", "repositories", "secret_env", "secret_file", "format", "description")
# Keys that would put a secret in the policy: refused with the way to do it instead.
INLINE_SECRETS = ("secret", "hmac_secret", "signing_secret", "token", "password", "key")
MAX_URL_LENGTH = 2048
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_SECRET_WORDS = re.compile(r"secret|token|passw|sig|key|auth|api", re.IGNORECASE)


def read_webhooks(node: yn.Node, file: str, report: Report) -> dict[str, Webhook]:
    """The subscriptions of one file's `webhooks:` mapping; every problem is reported."""
    return read_named(node, "webhook", file, report, _read_one)


def merge_webhooks(files: Iterable[dict[str, Webhook]], report: Report) -> tuple[Webhook, ...]:
    """Every file's subscriptions together; a name defined twice is an error."""
    return tuple(merge_named(files, "webhook", report).values())


def full_type(short: str) -> str:
    """`image.pushed` -> `registry-gateway.image.pushed`."""
    return TYPE_PREFIX + short


def _read_one(
    name: str, where: Location, node: yn.Node, file: str, report: Report
) -> Webhook | None:
    what = f"webhook {name!r}"
    failed = False

    def error(at: Location, message: str) -> None:
        nonlocal failed
        failed = True
        report(at, "error", f"{what}: {message}")

    fields: dict[str, tuple[yn.Node, yn.Node]] = {}
    for key, key_node, value_node in mapping(node, what, file, report):
        at = yn.location(key_node, file)
        if key in INLINE_SECRETS:
            error(
                at,
                "a secret must not be written in the policy (everyone who can read the policy "
                "could forge events): name an environment variable with secret_env, or a file "
                "with secret_file",
            )
        elif key not in FIELDS:
            hint = difflib.get_close_matches(key, FIELDS, n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            failed = True
            report(
                at,
                "error",
                f"unknown key {key!r} in {what} (expected: {', '.join(FIELDS)}){suggestion}",
            )
        else:
            fields[key] = (key_node, value_node)

    url = _url(fields, what, where, file, error, report)
    repositories = _patterns(fields, file, error)
    events = _events(fields, bool(repositories), where, file, error)
    secret_env, secret_file = _secret_source(fields, where, file, error)
    form = "cloudevents"
    if "format" in fields:
        chosen = _string(fields["format"][1])
        if chosen is None or chosen not in FORMATS:
            error(yn.location(fields["format"][1], file), f"format must be one of {FORMATS}")
        else:
            form = chosen
    if form == "harbor" and events - HARBOR_EVENTS:
        error(
            yn.location(fields["format"][1], file),
            f"format harbor has no payload for {', '.join(sorted(events - HARBOR_EVENTS))} "
            f"(only for {', '.join(sorted(HARBOR_EVENTS))}): send those in another webhook",
        )
    description = ""
    if "description" in fields:
        description = _string(fields["description"][1]) or ""
    if failed or url is None:
        return None
    return Webhook(
        name,
        url,
        events,
        repositories,
        secret_env,
        secret_file,
        form,
        where,
        description,
    )


def _url(
    fields: dict[str, tuple[yn.Node, yn.Node]],
    what: str,
    where: Location,
    file: str,
    error: Callable[[Location, str], None],
    report: Report,
) -> str | None:
    if "url" not in fields:
        error(where, "needs url: (where the events are sent)")
        return None
    node = fields["url"][1]
    at = yn.location(node, file)
    text = _string(node)
    if text is None:
        error(at, "url must be a string such as https://ci.example.com/hooks/registry")
        return None
    if len(text) > MAX_URL_LENGTH:
        error(at, f"url is longer than {MAX_URL_LENGTH} characters")
        return None
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        error(at, f"url {text[:100]!r} is not a valid URL ({exc})")
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        error(at, f"url {text[:100]!r} must be an http:// or https:// URL with a host")
        return None
    if parts.username is not None or parts.password is not None:
        error(
            at,
            "url must not carry a user name or password (they would be a secret in the "
            "policy); the receiver checks the signature instead",
        )
        return None
    if parts.fragment:
        error(at, "url must not have a #fragment (it is never sent)")
        return None
    for key, _ in parse_qsl(parts.query, keep_blank_values=True):
        if _SECRET_WORDS.search(key):
            error(
                at,
                f"url has a query parameter {key!r} that looks like a secret; secrets come "
                "from secret_env or secret_file, and the receiver checks the signature",
            )
            return None
    if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        report(
            at,
            "warning",
            f"{what}: url uses plain http: events are signed but anyone on the way can read them",
        )
    return text


def _patterns(
    fields: dict[str, tuple[yn.Node, yn.Node]], file: str, error: Callable[[Location, str], None]
) -> tuple[str, ...]:
    if "repositories" not in fields:
        return ()
    node = fields["repositories"][1]
    items = node.value if isinstance(node, yn.SequenceNode) else [node]
    out = []
    for item in items:
        text = _string(item)
        at = yn.location(item, file)
        if text is None:
            error(at, "each entry of repositories must be a repository pattern")
            continue
        try:
            compile_pattern(text)
        except PatternError as exc:
            error(at, str(exc))
            continue
        out.append(text)
    if isinstance(node, yn.SequenceNode) and not node.value:
        error(yn.location(node, file), "repositories is empty: leave it out for every repository")
    return tuple(out)


def _events(
    fields: dict[str, tuple[yn.Node, yn.Node]],
    scoped: bool,
    where: Location,
    file: str,
    error: Callable[[Location, str], None],
) -> frozenset[str]:
    if "events" not in fields:
        error(where, f"needs events: (a list of: {', '.join(EVENT_TYPES)}, or '*')")
        return frozenset()
    node = fields["events"][1]
    items = node.value if isinstance(node, yn.SequenceNode) else [node]
    wanted: set[str] = set()
    for item in items:
        text = _string(item)
        at = yn.location(item, file)
        if text == "*":
            wanted.update(REPOSITORY_EVENTS if scoped else EVENT_TYPES)
            continue
        if text is None:
            error(at, "each entry of events must be an event type")
            continue
        short = text.removeprefix(TYPE_PREFIX)
        if short not in EVENT_TYPES:
            hint = difflib.get_close_matches(short, EVENT_TYPES, n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            error(
                at,
                f"unknown event type {text!r} (expected: {', '.join(EVENT_TYPES)}, or '*')"
                f"{suggestion}",
            )
            continue
        if scoped and short not in REPOSITORY_EVENTS:
            error(
                at,
                f"{short} concerns no repository, so a subscription with repositories: never "
                "gets it; subscribe to it in a webhook without repositories:",
            )
            continue
        wanted.add(short)
    if isinstance(node, yn.SequenceNode) and not node.value:
        error(yn.location(node, file), "events is empty: the webhook would get nothing")
    return frozenset(wanted)


def _secret_source(
    fields: dict[str, tuple[yn.Node, yn.Node]],
    where: Location,
    file: str,
    error: Callable[[Location, str], None],
) -> tuple[str, str]:
    env = file_ = ""
    if ("secret_env" in fields) == ("secret_file" in fields):
        error(
            where,
            "needs exactly one of secret_env: (an environment variable) or secret_file: (a "
            "file) holding the signing secret",
        )
        return env, file_
    if "secret_env" in fields:
        node = fields["secret_env"][1]
        env = _string(node) or ""
        if not _ENV_NAME.fullmatch(env):
            error(yn.location(node, file), "secret_env must be an environment variable's name")
    else:
        node = fields["secret_file"][1]
        file_ = _string(node) or ""
        if not file_.startswith("/"):
            error(yn.location(node, file), "secret_file must be an absolute path")
    return env, file_


def _string(node: yn.Node) -> str | None:
    value = yn.scalar(node) if isinstance(node, yn.ScalarNode) else None
    return value if isinstance(value, str) and value else None
