"""The sender against a real receiver on loopback (a thread in this process): signed bodies,
retries with backoff, refusals not retried, a dead receiver given up in bounded time, a
missing secret sending nothing, the bounded queue, and one delivery across senders."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.events import formats, model
from gateway.events.dedupe import FileClaims
from gateway.events.delivery import Delivery, Item, Retry, Sender
from gateway.events.queue import DropOldestQueue
from gateway.events.subscriptions import Subscriptions
from gateway.policy.model import Location, Policy, Settings, Webhook

from tests.support.receiver import Receiver

SECRET = "s3cret-for-the-delivery-tests"
ENV = "REGISTRY_GATEWAY_TEST_WEBHOOK_SECRET"
FAST = Retry(timeout=2.0, backoff=0.01, total=5.0)


def webhook(url: str, *, name: str = "ci", form: str = "cloudevents", **changes: object) -> Webhook:
    values: dict[str, object] = {
        "name": name,
        "url": url,
        "events": frozenset({"image.pushed", "token.denied"}),
        "repositories": (),
        "secret_env": ENV,
        "secret_file": "",
        "format": form,
        "location": Location("webhooks.yaml", 1, 1),
    }
    values.update(changes)
    return Webhook(**values)  # type: ignore[arg-type]


def policy_with(*hooks: Webhook) -> Policy:
    return Policy(Settings(), {}, {}, {}, {}, (), (), revision="rev-1", webhooks=hooks)


def pushed(digest_byte: str = "a", registry_id: str = "reg-1") -> model.Event:
    raw = {
        "id": registry_id,
        "timestamp": "2026-01-01T00:00:00Z",
        "action": "push",
        "target": {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "size": 428,
            "digest": "sha256:" + digest_byte * 64,
            "repository": "platform/api",
            "tag": "v1",
        },
        "request": {"id": "req-1", "host": "registry.example.com"},
        "actor": {"name": "release"},
    }
    event = model.from_registry(raw, revision="rev-1", kind_of=lambda n: "robot", now=0.0)
    assert event is not None
    return event


def sender_for(
    hooks: tuple[Webhook, ...], tmp_path: Path, *, retry: Retry = FAST
) -> tuple[DropOldestQueue[Item], Sender]:
    queue: DropOldestQueue[Item] = DropOldestQueue(100)
    subscriptions = Subscriptions(policy_with(*hooks))
    sender = Sender(
        queue,
        lambda: subscriptions,
        claims=FileClaims(tmp_path / "claims"),
        retry=retry,
        source="https://gateway.example.com",
        registry="registry.example.com",
        public=lambda name: False,
        rng=random.Random(1),
    )
    return queue, sender


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, SECRET)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver(SECRET.encode())
    yield found
    found.stop()


@pytest.mark.usefixtures("secret_env")
def test_an_event_arrives_once_signed_as_a_cloudevent(receiver: Receiver, tmp_path: Path) -> None:
    hook = webhook(receiver.url)
    _, sender = sender_for((hook,), tmp_path)
    event = pushed()
    delivery = asyncio.run(_deliver(sender, hook, event))
    assert delivery.status == "delivered" and delivery.attempts == 1
    [got] = receiver.taken()
    assert got.verified
    assert got.headers["content-type"] == "application/cloudevents+json; charset=utf-8"
    document = got.json
    assert document["specversion"] == "1.0"
    assert document["type"] == "registry-gateway.image.pushed"
    assert document["id"] == event.id
    assert document["source"] == "https://gateway.example.com"
    assert document["subject"] == "platform/api:v1"
    data = document["data"]
    assert data["digest"] == "sha256:" + "a" * 64
    assert data["actor"] == {"kind": "robot", "name": "release"}
    assert data["size"] == 428 and data["policy_revision"] == "rev-1"
    assert SECRET not in got.body.decode()


@pytest.mark.usefixtures("secret_env")
def test_a_receiver_failing_three_times_gets_the_event_once_after_retries(tmp_path: Path) -> None:
    receiver = Receiver(SECRET.encode(), fail_first=3)
    try:
        hook = webhook(receiver.url)
        _, sender = sender_for((hook,), tmp_path)
        delivery = asyncio.run(_deliver(sender, hook, pushed()))
        assert delivery.status == "delivered"
        assert delivery.attempts == 4
        assert [r.status for r in receiver.requests] == [500, 500, 500, 204]
        assert len(receiver.taken()) == 1
        # Every try is signed afresh, and each was right.
        assert all(r.verified for r in receiver.requests)
        assert sender.log.entries("ci")[0]["attempts"] == 4
    finally:
        receiver.stop()


@pytest.mark.usefixtures("secret_env")
def test_a_refusal_is_not_retried(tmp_path: Path) -> None:
    receiver = Receiver(SECRET.encode(), fail_first=10, fail_status=403)
    try:
        hook = webhook(receiver.url)
        _, sender = sender_for((hook,), tmp_path)
        delivery = asyncio.run(_deliver(sender, hook, pushed()))
        assert (delivery.status, delivery.attempts, delivery.http_status) == ("failed", 1, 403)
    finally:
        receiver.stop()


@pytest.mark.usefixtures("secret_env")
def test_a_wrong_secret_is_refused_by_the_receiver(tmp_path: Path) -> None:
    receiver = Receiver(b"another secret")
    try:
        hook = webhook(receiver.url)
        _, sender = sender_for((hook,), tmp_path)
        delivery = asyncio.run(_deliver(sender, hook, pushed()))
        assert delivery.status == "failed" and delivery.http_status == 401
        assert not receiver.requests[0].verified
    finally:
        receiver.stop()


@pytest.mark.usefixtures("secret_env")
def test_a_dead_receiver_is_given_up_within_the_retry_time(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    hook = webhook(f"http://127.0.0.1:{port}/hook")
    retry = Retry(timeout=0.5, backoff=0.05, total=1.0)
    _, sender = sender_for((hook,), tmp_path, retry=retry)
    started = time.monotonic()
    delivery = asyncio.run(_deliver(sender, hook, pushed()))
    took = time.monotonic() - started
    assert delivery.status == "gave up"
    assert delivery.attempts >= 3
    assert took < retry.total + retry.timeout + 0.5


def test_full_jitter_stays_under_the_exponential_ceiling() -> None:
    retry = Retry(backoff=1.0)
    rng = random.Random(7)
    for tries, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (10, 60.0), (40, 60.0)):
        waits = [retry.wait(tries, rng) for _ in range(200)]
        assert all(0 <= w <= ceiling for w in waits)
        assert max(waits) > ceiling * 0.8  # random over the whole range, not fixed


def test_without_its_secret_a_subscription_sends_nothing(
    receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV, raising=False)
    hook = webhook(receiver.url)
    _, sender = sender_for((hook,), tmp_path)
    delivery = asyncio.run(_deliver(sender, hook, pushed()))
    assert delivery.status == "no secret"
    assert ENV in (delivery.error or "")
    assert receiver.requests == []
    assert sender._failures["ci"] == 1  # counts towards suspending it, as a dead receiver


@pytest.mark.usefixtures("secret_env")
def test_the_harbor_format(receiver: Receiver, tmp_path: Path) -> None:
    hook = webhook(receiver.url, form="harbor")
    _, sender = sender_for((hook,), tmp_path)
    asyncio.run(_deliver(sender, hook, pushed()))
    [got] = receiver.taken()
    assert got.verified
    assert got.headers["content-type"] == formats.HARBOR_TYPE
    body = got.json
    assert body["type"] == "PUSH_ARTIFACT"
    assert body["operator"] == "release"
    assert body["event_data"]["repository"] == {
        "name": "api",
        "namespace": "platform",
        "repo_full_name": "platform/api",
        "repo_type": "private",
    }
    assert body["event_data"]["resources"] == [
        {
            "digest": "sha256:" + "a" * 64,
            "tag": "v1",
            "resource_url": "registry.example.com/platform/api:v1",
        }
    ]


@pytest.mark.usefixtures("secret_env")
def test_the_sender_takes_events_off_the_queue_and_matches_patterns(
    receiver: Receiver, tmp_path: Path
) -> None:
    wanted = webhook(receiver.url, name="platform", repositories=("platform/**",))
    elsewhere = webhook(receiver.url, name="other", repositories=("other/*",))

    async def scenario() -> None:
        queue, sender = sender_for((wanted, elsewhere), tmp_path)
        task = asyncio.create_task(sender.run())
        await asyncio.sleep(0)
        queue.put_nowait(pushed())
        await _until(lambda: len(receiver.taken()) >= 1)
        await asyncio.sleep(0.1)
        task.cancel()
        await sender.close()

    asyncio.run(scenario())
    assert len(receiver.taken()) == 1


@pytest.mark.usefixtures("secret_env")
def test_a_shared_event_is_delivered_once_by_senders_sharing_claims(
    receiver: Receiver, tmp_path: Path
) -> None:
    hook = webhook(receiver.url)

    async def scenario() -> None:
        senders = [sender_for((hook,), tmp_path)[1] for _ in range(3)]
        event = pushed(registry_id="the-same-registry-event")
        for sender in senders:  # three replicas told of one registry event
            await sender.dispatch(event)
        await _until(lambda: len(receiver.taken()) >= 1)
        await asyncio.sleep(0.2)
        for sender in senders:
            await sender.close()

    asyncio.run(scenario())
    assert len(receiver.taken()) == 1


def test_the_queue_drops_the_oldest_and_counts() -> None:
    queue: DropOldestQueue[int] = DropOldestQueue(3)
    for n in range(5):
        queue.put_nowait(n)
    assert queue.take_all() == [2, 3, 4]
    assert queue.dropped == 2


def test_a_put_from_another_thread_wakes_the_sender() -> None:
    async def scenario() -> list[int]:
        queue: DropOldestQueue[int] = DropOldestQueue(10)
        queue.bind()
        threading.Timer(0.05, queue.put_nowait, args=(7,)).start()
        return await asyncio.wait_for(queue.get_batch(), 5)

    assert asyncio.run(scenario()) == [7]


async def _deliver(sender: Sender, hook: Webhook, event: model.Event) -> Delivery:
    try:
        return await sender.deliver(hook, event)
    finally:
        await sender.close()


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


@pytest.mark.usefixtures("secret_env")
def test_a_dead_receiver_is_suspended_and_its_new_events_cost_nothing(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    hook = webhook(f"http://127.0.0.1:{port}/hook")
    retry = Retry(timeout=0.5, backoff=0.01, total=0.2)

    async def scenario() -> Sender:
        _, sender = sender_for((hook,), tmp_path, retry=retry)
        try:
            while sender.active("ci"):
                await sender.deliver(hook, pushed())
            assert sender.suspended_until("ci") is not None
            await sender.dispatch(pushed(registry_id="while-suspended"))
            assert "ci" not in sender._outboxes  # dropped before any work
            return sender
        finally:
            await sender.close()

    sender = asyncio.run(scenario())
    assert sender._failures["ci"] >= 10


@pytest.mark.usefixtures("secret_env")
def test_a_2xx_resumes_a_suspended_receiver(receiver: Receiver, tmp_path: Path) -> None:
    hook = webhook(receiver.url)
    _, sender = sender_for((hook,), tmp_path)
    for _ in range(10):
        sender._answered("ci", False)
    assert not sender.active("ci")
    sender._until["ci"] = 0.0  # the pause is over: the next event is tried
    assert sender.active("ci")
    delivery = asyncio.run(_deliver(sender, hook, pushed()))
    assert delivery.status == "delivered"
    assert sender.active("ci") and "ci" not in sender._failures
