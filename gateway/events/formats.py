"""An event's HTTP body: a CloudEvents 1.0 structured-mode JSON document (the default), or
the payload Harbor's webhooks send (for receivers that already read Harbor's).

docs/events.md shows both.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from gateway.events.model import Event
from gateway.policy.webhooks import full_type

CLOUDEVENTS_TYPE = "application/cloudevents+json; charset=utf-8"
HARBOR_TYPE = "application/json; charset=utf-8"
# Harbor's event types for the events it has; the policy refuses format: harbor for others.
HARBOR_TYPES = {
    "image.pushed": "PUSH_ARTIFACT",
    "image.deleted": "DELETE_ARTIFACT",
    "tag.deleted": "DELETE_ARTIFACT",
}


def cloudevent(event: Event, source: str) -> dict[str, Any]:
    """The event as a CloudEvents 1.0 document. `source` names this gateway (its public
    URL), the same on every replica, so that `source` + `id` name one event everywhere."""
    document: dict[str, Any] = {
        "specversion": "1.0",
        "id": event.id,
        "source": source,
        "type": full_type(event.type),
        "time": event.time,
        "datacontenttype": "application/json",
    }
    subject = event.subject
    if subject is not None:
        document["subject"] = subject
    document["data"] = event.data
    return document


def harbor(event: Event, *, registry: str, public: bool) -> dict[str, Any]:
    """The event in Harbor's webhook payload (`type`, `occur_at`, `operator`, `event_data`
    with `resources` and `repository`). `registry` is the host that `resource_url` names."""
    data = event.data
    repository = str(data.get("repository") or "")
    namespace, _, short = repository.rpartition("/")
    tag, digest = data.get("tag"), data.get("digest")
    host = data.get("registry") or registry
    reference = f":{tag}" if tag else f"@{digest}" if digest else ""
    resource: dict[str, Any] = {"digest": digest or "", "tag": tag or ""}
    resource["resource_url"] = f"{host}/{repository}{reference}" if host else ""
    when = dt.datetime.fromisoformat(event.time.replace("Z", "+00:00"))
    actor = data.get("actor") or {}
    return {
        "type": HARBOR_TYPES[event.type],
        "occur_at": int(when.timestamp()),
        "operator": actor.get("name") or "anonymous",
        "event_data": {
            "resources": [resource],
            "repository": {
                "name": short,
                "namespace": namespace,
                "repo_full_name": repository,
                "repo_type": "public" if public else "private",
            },
        },
    }


def body(document: dict[str, Any]) -> bytes:
    """A document as compact UTF-8 JSON: the exact bytes that are signed and sent."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
