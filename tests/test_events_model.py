"""Events as records: what the registry's notifications become, token denials from an
answer's audit fields, ids that replicas compute alike, and no secret in any of them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.events import formats, model
from gateway.events.publisher import events_of
from gateway.policy.webhooks import EVENT_TYPES

DIGEST = "sha256:" + "b" * 64
MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def registry_event(action: str, **target: Any) -> dict[str, Any]:
    return {
        "id": f"id-{action}-{sorted(target.items())}",
        "timestamp": "2026-01-01T10:00:00.123456789Z",
        "action": action,
        "target": {"repository": "team/app", **target},
        "request": {"id": "r-1", "host": "127.0.0.1:5000", "method": "PUT"},
        "actor": {"name": "bob"},
        "source": {"addr": "host:5000", "instanceID": "x"},
    }


def read(raw: Any) -> model.Event | None:
    return model.from_registry(raw, revision="rev", kind_of=lambda name: "user", now=1.0)


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (registry_event("push", mediaType=MANIFEST, digest=DIGEST, tag="v1", size=7), "image.pushed"),
        (registry_event("push", mediaType="application/vnd.oci.image.index.v1+json", digest=DIGEST), "image.pushed"),
        (registry_event("push", mediaType="application/octet-stream", digest=DIGEST), None),
        (registry_event("pull", mediaType=MANIFEST, digest=DIGEST, tag="v1"), None),
        (registry_event("mount", mediaType="application/octet-stream", digest=DIGEST), None),
        (registry_event("delete", tag="v1"), "tag.deleted"),
        (registry_event("delete", digest=DIGEST), "image.deleted"),
        (registry_event("delete"), "repository.deleted"),
        (registry_event("push", mediaType=MANIFEST, digest="sha256:short"), None),
        (registry_event("push", mediaType=MANIFEST, repository="../etc"), None),
        ({"action": "push"}, None),
        ("not an event", None),
    ],
)  # fmt: skip
def test_registry_notifications_become_events(raw: Any, kind: str | None) -> None:
    event = read(raw)
    assert (event.type if event else None) == kind


def test_a_pushed_image_carries_what_a_receiver_needs() -> None:
    event = read(registry_event("push", mediaType=MANIFEST, digest=DIGEST, tag="v1", size=7))
    assert event is not None
    assert event.repository == "team/app" and event.shared
    assert event.data == {
        "repository": "team/app",
        "namespace": "team",
        "tag": "v1",
        "digest": DIGEST,
        "media_type": MANIFEST,
        "size": 7,
        "actor": {"kind": "user", "name": "bob"},
        "request_id": "r-1",
        "registry": "127.0.0.1:5000",
        "registry_event_id": event.data["registry_event_id"],
        "occurred_at": "2026-01-01T10:00:00.123456789Z",
        "policy_revision": "rev",
    }


def test_the_same_registry_event_has_the_same_id_on_every_replica() -> None:
    raw = registry_event("push", mediaType=MANIFEST, digest=DIGEST, tag="v1")
    first = model.from_registry(raw, revision="a", kind_of=lambda n: "user", now=1.0)
    again = model.from_registry(raw, revision="b", kind_of=lambda n: "robot", now=99.0)
    assert first is not None and again is not None and first.id == again.id
    other = read({**raw, "id": "another"})
    assert other is not None and other.id != first.id


def test_token_denials_from_the_audit_fields() -> None:
    audit = {
        "subject": "user:carol",
        "auth": "password",
        "revision": "rev-9",
        "granted": [
            {"type": "repository", "name": "platform/prod/api", "actions": ["pull"]},
            {"type": "repository", "name": "platform/dev", "actions": ["pull", "push"]},
        ],
        "denied": [{"type": "repository", "name": "platform/prod/api", "actions": ["push"]}],
    }
    [event] = model.token_denied(audit, request_id="req-7", client="10.0.0.9", now=5.0)
    assert event.type == "token.denied" and event.repository == "platform/prod/api"
    assert event.data["denied_actions"] == ["push"]
    assert event.data["granted_actions"] == ["pull"]
    assert event.data["actor"] == {"kind": "user", "name": "carol"}
    assert event.data["request_id"] == "req-7" and event.data["client"] == "10.0.0.9"
    assert event.data["policy_revision"] == "rev-9"


def test_policy_and_key_events_have_ids_derived_from_what_they_report() -> None:
    a = model.policy_changed("r1", "r2", {}, now=1.0)
    b = model.policy_changed("r0", "r2", {}, now=2.0)  # a replica that missed r1
    assert a.id == b.id and a.shared
    assert (
        model.key_rotated("K:1", None, "ES256", now=1).id
        == model.key_rotated("K:1", "K:0", "ES256", now=3).id
    )


@pytest.mark.parametrize("kind", sorted(EVENT_TYPES))
def test_every_type_has_a_sample_that_serialises(kind: str) -> None:
    event = model.sample(kind, repository="team/app", revision="rev", now=0.0)
    document = formats.cloudevent(event, "https://gateway.example.com")
    assert document["type"] == f"registry-gateway.{kind}"
    assert document["time"] == "1970-01-01T00:00:00.000Z"
    assert json.loads(formats.body(document))["data"]["test"] is True


def test_queued_work_becomes_events_off_the_token_path() -> None:
    event = model.key_rotated("K", None, "ES256", now=0)
    assert events_of([event, lambda: [event, event]]) == [event, event, event]
