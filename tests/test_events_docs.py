"""docs/events.md: its receiver example accepts what the gateway signs and refuses the rest,
and it documents every event type, subscription key, webhook setting and metric."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from gateway import metrics
from gateway.events import signing
from gateway.policy.webhooks import EVENT_TYPES, FIELDS, FORMATS

DOC = Path(__file__).resolve().parent.parent / "docs" / "events.md"


def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def receiver_example(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The Python receiver of docs/events.md, defined but not serving."""
    [block] = [
        b for b in re.findall(r"```python\n(.*?)```", doc(), re.DOTALL) if "def verified" in b
    ]
    code = "\n".join(line for line in block.splitlines() if "serve_forever" not in line)
    monkeypatch.setenv("DEPLOY_HOOK_SECRET", "the-documented-secret")
    namespace: dict[str, Any] = {}
    exec(compile(code, "docs/events.md", "exec"), namespace)
    return namespace


def test_the_documented_receiver_checks_signature_and_freshness(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    verified = receiver_example(monkeypatch)["verified"]
    body = b'{"specversion":"1.0","id":"x"}'
    now = int(time.time())
    good = signing.headers(b"the-documented-secret", now, body)
    assert verified(good, body)
    assert not verified(good, body + b" ")  # altered
    assert not verified(signing.headers(b"another-secret", now, body), body)  # forged
    assert not verified(signing.headers(b"the-documented-secret", now - 600, body), body)  # old
    assert not verified({}, body)


def test_every_event_type_key_format_and_setting_is_documented() -> None:
    text = doc()
    wanted = [f"registry-gateway.{kind}" for kind in EVENT_TYPES]
    wanted += [f"`{key}`" for key in FIELDS] + [f"`{form}`" for form in FORMATS]
    wanted += [f"`webhook_{name}`" for name in ("timeout", "backoff", "retry_time", "log_size")]
    wanted += ["`webhook_queue_size`"]
    missing = [w for w in wanted if w not in text]
    assert not missing, f"docs/events.md does not mention {missing}"


def test_every_events_metric_is_documented() -> None:
    text = doc()
    names = [
        m._name
        for m in (
            metrics.EVENTS,
            metrics.WEBHOOK_DELIVERIES,
            metrics.WEBHOOK_ATTEMPTS,
            metrics.WEBHOOK_LATENCY,
            metrics.WEBHOOK_DROPPED,
        )
    ]
    missing = [n for n in names if n not in text]
    assert not missing, f"docs/events.md does not name the metrics {missing}"
