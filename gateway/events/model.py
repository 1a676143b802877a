"""The gateway's events, as records: what happened, to which repository, by whom, under which
policy revision. Never a secret: no password, token, signing key or webhook secret is ever
put in `data` (a user name attempted at a locked-out sign-in is the most sensitive field).

Event ids: an event that only one replica can see (a token decision, a lockout) has a random
id; one that several replicas may see (a registry notification sent again, a policy revision
or a key that every replica loads) has an id derived from what it reports, so that every
replica names it alike and it is claimed once (`gateway/events/dedupe.py`) or, failing that,
de-duplicated by the receiver on the CloudEvents `id`.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.catalog.index import Event as RegistryEvent
from gateway.catalog.registry import INDEX_TYPES
from gateway.policy.patterns import is_repository_name
from gateway.policy.webhooks import EVENT_TYPES

# The namespace of the ids derived from what an event reports (uuid5).
_IDS = uuid.UUID("8f0d3c36-4b1e-5b0e-9a57-6c1f3f2a9e11")
MAX_TEXT = 200  # characters kept of free text from a client (user names, media types)


@dataclass(frozen=True, slots=True)
class Event:
    """One event. `type` is short (`image.pushed`); `repository` is what subscriptions'
    patterns are matched against (None: an event about no repository)."""

    id: str
    type: str
    time: str  # RFC 3339, UTC
    repository: str | None
    data: dict[str, Any] = field(hash=False)
    shared: bool = False  # replicas may each publish it: claimed once by id before delivery

    @property
    def subject(self) -> str | None:
        """The CloudEvents `subject`: the repository, with its tag or digest when known."""
        if self.repository is None:
            return None
        tag, digest = self.data.get("tag"), self.data.get("digest")
        if tag:
            return f"{self.repository}:{tag}"
        return f"{self.repository}@{digest}" if digest else self.repository


def rfc3339(when: float) -> str:
    """A Unix time as RFC 3339 in UTC, to the millisecond."""
    moment = dt.datetime.fromtimestamp(when, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def random_id() -> str:
    """An id for an event only one replica sees: 128 random bits, in hex."""
    return secrets.token_hex(16)


def derived_id(*parts: str) -> str:
    """An id every replica computes alike for the same facts."""
    return str(uuid.uuid5(_IDS, "\0".join(parts)))


def _text(value: Any) -> str | None:
    return value[:MAX_TEXT] if isinstance(value, str) and value else None


def actor(name: str | None, kind_of: Callable[[str], str]) -> dict[str, str]:
    """Who acted: `{"kind": "user" | "robot" | "anonymous", "name": ...}`."""
    if not name:
        return {"kind": "anonymous", "name": ""}
    return {"kind": kind_of(name), "name": name[:MAX_TEXT]}


# -- from the registry's notifications ---------------------------------------------------


def is_manifest(media_type: str) -> bool:
    """Whether a pushed object is a manifest or an index (not a layer or a config blob)."""
    return "manifest" in media_type or media_type in INDEX_TYPES


def from_registry(
    raw: Any, *, revision: str | None, kind_of: Callable[[str], str], now: float | None = None
) -> Event | None:
    """The event a registry notification event reports, or None: not well-formed, or not
    one of ours (pulls, blob uploads, mounts). The id is derived from the registry's own
    event id, so an envelope the registry sends again (to another replica) is one event."""
    seen = RegistryEvent.read(raw)  # the catalog's one reading of a registry event
    if seen is None:
        return None
    action, name, tag, digest = seen.action, seen.repository, seen.tag, seen.digest
    media_type, target = seen.media_type, raw["target"]
    if action == "push" and is_manifest(media_type):
        kind = "image.pushed"
    elif action == "delete" and tag:
        kind = "tag.deleted"
    elif action == "delete" and digest:
        kind = "image.deleted"
    elif action == "delete":
        kind = "repository.deleted"
    else:
        return None
    size = target.get("size", target.get("length"))
    request = raw.get("request") if isinstance(raw.get("request"), Mapping) else {}
    who = raw.get("actor") if isinstance(raw.get("actor"), Mapping) else {}
    assert isinstance(request, Mapping) and isinstance(who, Mapping)
    registry_id = _text(raw.get("id"))
    identity = registry_id or json.dumps(raw, sort_keys=True, default=str)[:4096]
    stamp = now if now is not None else time.time()
    data: dict[str, Any] = {
        "repository": name,
        "namespace": name.partition("/")[0] if "/" in name else "",
        "tag": tag,
        "digest": digest,
        "media_type": media_type[:MAX_TEXT] or None,
        "size": size if isinstance(size, int) and size >= 0 else None,
        "actor": actor(_text(who.get("name")), kind_of),
        "request_id": _text(request.get("id")),
        "registry": _text(request.get("host")),
        "registry_event_id": registry_id,
        "occurred_at": _text(raw.get("timestamp")),
        "policy_revision": revision,
    }
    return Event(
        derived_id("registry", identity, kind),
        kind,
        rfc3339(stamp),
        name,
        data,
        shared=True,
    )


# -- the gateway's own -------------------------------------------------------------------


def token_denied(
    audit: Mapping[str, Any], *, request_id: str, client: str | None, now: float
) -> list[Event]:
    """One event per resource a token request was refused an action on, from the answer's
    audit fields (`granted`, `denied`, subject, method, revision)."""
    subject = str(audit.get("subject") or "anonymous")
    kind, _, name = subject.partition(":")
    who = {"kind": kind, "name": name[:MAX_TEXT]} if name else {"kind": "anonymous", "name": ""}
    granted = {
        (g.get("type"), g.get("name")): list(g.get("actions") or ())
        for g in audit.get("granted") or ()
        if isinstance(g, Mapping)
    }
    events = []
    for refused in audit.get("denied") or ():
        if not isinstance(refused, Mapping):
            continue
        rtype, rname = str(refused.get("type")), str(refused.get("name"))
        repository = rname if rtype == "repository" and is_repository_name(rname) else None
        data = {
            "repository": repository,
            "resource": {"type": rtype, "name": rname[:MAX_TEXT]},
            "denied_actions": list(refused.get("actions") or ()),
            "granted_actions": granted.get((rtype, rname), []),
            "actor": who,
            "auth_method": _text(audit.get("auth")),
            "token_name": _text(audit.get("token_name")),
            "client": _text(client),
            "request_id": request_id,
            "policy_revision": _text(audit.get("revision")),
        }
        events.append(Event(random_id(), "token.denied", rfc3339(now), repository, data))
    return events


def locked_out(
    username: str | None, client: str, scopes: Sequence[str], *, revision: str | None, now: float
) -> Event:
    """Failed sign-ins locked a user name (for one address), an address, or put a name under
    attack (`scopes`: user, address, account)."""
    data = {
        "username": _text(username),
        "client": _text(client),
        "locks": list(scopes),
        "policy_revision": revision,
    }
    return Event(random_id(), "signin.locked_out", rfc3339(now), None, data)


def policy_changed(
    previous: str | None, revision: str, summary: dict[str, Any], *, now: float
) -> Event:
    """A new revision is in force; `summary` is the permission diff's (docs/events.md)."""
    data = {"previous_revision": previous, "policy_revision": revision, "diff": summary}
    return Event(
        derived_id("policy.changed", revision),
        "policy.changed",
        rfc3339(now),
        None,
        data,
        shared=True,
    )


def key_rotated(kid: str, previous: str | None, algorithm: str, *, now: float) -> Event:
    """The gateway signs with a new key (`kid`: its libtrust key id, as in the JWKS)."""
    data = {"kid": kid, "previous_kid": previous, "algorithm": algorithm}
    return Event(
        derived_id("key.rotated", kid), "key.rotated", rfc3339(now), None, data, shared=True
    )


SAMPLE_DIGEST = "sha256:" + "0" * 64


def sample(kind: str, *, repository: str, revision: str | None, now: float) -> Event:
    """A made-up event of type `kind` for `webhook test`, marked `"test": true`."""
    assert kind in EVENT_TYPES
    who = {"kind": "user", "name": "registry-gateway-test"}
    data: dict[str, Any] = {"repository": repository, "policy_revision": revision, "test": True}
    if kind in ("image.pushed", "image.deleted", "tag.deleted"):
        data.update(
            tag=None if kind == "image.deleted" else "test",
            digest=None if kind == "tag.deleted" else SAMPLE_DIGEST,
            media_type="application/vnd.oci.image.manifest.v1+json",
            size=0,
            actor=who,
        )
    elif kind == "token.denied":
        data.update(denied_actions=["push"], granted_actions=["pull"], actor=who)
    elif kind == "signin.locked_out":
        data.update(username="registry-gateway-test", client="127.0.0.1", locks=["user"])
    elif kind == "key.rotated":
        data.update(kid="TEST:TEST", previous_kid=None, algorithm="ES256")
    elif kind == "policy.changed":
        data.update(previous_revision=None, diff={"changed": False})
    scoped = kind in ("image.pushed", "image.deleted", "tag.deleted", "repository.deleted")
    return Event(
        str(uuid.uuid4()),
        kind,
        rfc3339(now),
        repository if scoped or kind == "token.denied" else None,
        data,
    )
