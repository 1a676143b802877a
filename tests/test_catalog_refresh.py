"""What the catalog index asks the registry: a refresh that finds nothing new costs one request
per repository page and tag-list page, and manifests and configs are read only for digests the
index does not hold. The registry is tests/support/fakeregistry.py, which counts requests;
tests/realworld/test_catalog_requests.py counts them in the real registry's access log."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.auth.keys import KeyStore
from gateway.auth.tokens import TokenIssuer
from gateway.catalog import index as index_module
from gateway.catalog.index import CatalogIndex
from gateway.catalog.registry import RegistryClient

from tests.support.fakeregistry import OCI_INDEX, OCI_MANIFEST, FakeRegistry

PAGE = 3  # entries per page of the repository list and of each tag list


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> TokenIssuer:
    keys = KeyStore(tmp_path_factory.mktemp("keys"))
    keys.ensure()
    return TokenIssuer(keys, issuer="test", service="test")


@pytest.fixture
def registry() -> FakeRegistry:
    """Seven repositories (three pages); `big` has seven tags (three pages of tags), the
    others two each, every tag its own image; two of `big`'s tags share one image."""
    fake = FakeRegistry()
    for n in range(6):
        for tag in ("v1", "v2"):
            fake.tag(f"team/app-{n}", tag, fake.image(f"app-{n}:{tag}"))
    for n in range(6):
        fake.tag("team/big", f"1.{n}", fake.image(f"big:1.{n}"))
    fake.tag("team/big", "latest", fake.repositories["team/big"]["1.5"])
    return fake


@pytest.fixture
def catalog(registry: FakeRegistry, issuer: TokenIssuer) -> Iterator[CatalogIndex]:
    client = RegistryClient(
        "http://registry.test", issuer, page=PAGE, transport=registry.transport()
    )
    yield CatalogIndex(client, concurrency=4)
    asyncio.run(client.close())


def pages(count: int) -> int:
    """Pages of a list of `count` entries, as Distribution pages them (a full last page is
    followed by no link, so no empty page is asked for)."""
    return max(1, -(-count // PAGE))


def lists(registry: FakeRegistry) -> int:
    """Requests for the repository list and every tag list: what a refresh with nothing new
    may cost."""
    listed = [tags for tags in registry.repositories.values() if tags]
    return pages(len(listed)) + sum(pages(len(tags)) for tags in listed)


def listing(registry: FakeRegistry) -> Counter[str]:
    """The requests of a refresh that finds nothing new, by kind; they must be exactly
    what the registry was asked for beyond what a test expects."""
    listed = [tags for tags in registry.repositories.values() if tags]
    return Counter(catalog=pages(len(listed)), tags=lists(registry) - pages(len(listed)))


def refresh(catalog: CatalogIndex, registry: FakeRegistry, *, full: bool | None = None) -> None:
    registry.reset_counts()
    assert asyncio.run(catalog.refresh(full=full)) is True


def pushed(repository: str, tag: str, digest: str) -> dict[str, Any]:
    """The registry's notification of a manifest pushed under `tag`."""
    target = {"repository": repository, "tag": tag, "digest": digest, "mediaType": OCI_MANIFEST}
    return {"action": "push", "target": target}


def tags_of(catalog: CatalogIndex, repository: str) -> dict[str, str]:
    return {tag: m.digest for tag, m in catalog.repositories[repository].tags.items()}


def test_the_first_read_reads_each_manifest_and_config_once(
    catalog: CatalogIndex, registry: FakeRegistry
) -> None:
    refresh(catalog, registry)
    distinct = {d for tags in registry.repositories.values() for d in tags.values()}
    assert registry.counts == {
        "catalog": pages(7),
        "tags": lists(registry) - pages(7),
        "manifest": 19,  # every tag, read by tag (its digest comes with it)
        "blob": len(distinct),  # one config per image, `latest` sharing 1.5's
    }
    assert catalog.status().tags == 19
    assert tags_of(catalog, "team/big") == registry.repositories["team/big"]


def test_a_refresh_with_nothing_new_asks_only_for_the_lists(
    catalog: CatalogIndex, registry: FakeRegistry
) -> None:
    refresh(catalog, registry)
    generation, repositories = catalog.generation, catalog.repositories
    refresh(catalog, registry)
    assert sum(registry.counts.values()) == lists(registry) == 3 + 6 + 3
    assert set(registry.counts) == {"catalog", "tags"}
    # Nothing changed: the same objects, and the UI's caches keyed on the generation stand.
    assert catalog.generation == generation and catalog.repositories is repositories


def test_a_new_tag_of_a_known_image_reads_no_manifest(
    catalog: CatalogIndex, registry: FakeRegistry
) -> None:
    refresh(catalog, registry)
    known = registry.repositories["team/app-1"]["v1"]
    registry.tag("team/app-2", "stable", known)
    refresh(catalog, registry)
    assert registry.counts == {"catalog": pages(7), "tags": lists(registry) - pages(7), "head": 1}
    assert tags_of(catalog, "team/app-2")["stable"] == known


def test_a_new_image_is_one_manifest_and_one_config_read(
    catalog: CatalogIndex, registry: FakeRegistry
) -> None:
    refresh(catalog, registry)
    digest = registry.image("app-3:v3")
    registry.tag("team/app-3", "v3", digest)
    refresh(catalog, registry)
    assert registry.counts - listing(registry) == {"head": 1, "manifest": 1, "blob": 1}
    assert ("GET", f"/v2/team/app-3/manifests/{digest}") in registry.asked
    assert catalog.repositories["team/app-3"].tags["v3"].platforms[0].labels == (
        ("note", "app-3:v3"),
    )


def test_two_new_tags_of_one_new_image_read_it_once(
    catalog: CatalogIndex, registry: FakeRegistry
) -> None:
    refresh(catalog, registry)
    digest = registry.image("app-4:rc")
    registry.tag("team/app-4", "rc", digest)
    registry.tag("team/app-4", "v3", digest)
    refresh(catalog, registry)
    assert registry.counts - listing(registry) == {"head": 2, "manifest": 1, "blob": 1}


def test_a_new_repository_reads_its_tags_and_only_new_configs(
    catalog: CatalogIndex, registry: FakeRegistry
) -> None:
    refresh(catalog, registry)
    registry.tag("copy/app-0", "v1", registry.repositories["team/app-0"]["v1"])
    registry.tag("copy/app-0", "v2", registry.image("copy:v2"))
    refresh(catalog, registry)
    # A repository new to the index: each tag's manifest read at once (a GET tells the
    # digest as a HEAD would), then nothing more for the image the index holds.
    assert registry.counts - listing(registry) == {"manifest": 2, "blob": 1}
    assert tags_of(catalog, "copy/app-0") == registry.repositories["copy/app-0"]


def test_deleted_tags_and_repositories_go_without_other_requests(
    catalog: CatalogIndex, registry: FakeRegistry
) -> None:
    refresh(catalog, registry)
    del registry.repositories["team/big"]["1.0"]
    registry.repositories["team/app-5"] = {}
    refresh(catalog, registry)
    assert set(registry.counts) == {"catalog", "tags"}
    assert "1.0" not in catalog.repositories["team/big"].tags
    assert "team/app-5" not in catalog.repositories
    gone = registry.image("big:1.0")  # the same bytes as the deleted tag's image
    assert gone not in catalog._manifests  # nothing points at it any more


def test_a_moved_tag_shows_at_the_next_full_re_read(
    catalog: CatalogIndex, registry: FakeRegistry
) -> None:
    refresh(catalog, registry)
    moved_to = registry.repositories["team/app-0"]["v2"]
    registry.tag("team/app-0", "v1", moved_to)  # same tag list: a refresh cannot see it
    refresh(catalog, registry)
    assert tags_of(catalog, "team/app-0")["v1"] != moved_to
    refresh(catalog, registry, full=True)
    assert tags_of(catalog, "team/app-0")["v1"] == moved_to
    # A full re-read asks every tag's digest, and reads nothing it holds.
    assert registry.counts - listing(registry) == {"head": 19}


def test_a_full_re_read_is_due_after_its_period(
    registry: FakeRegistry, issuer: TokenIssuer
) -> None:
    now = [1000.0]
    client = RegistryClient("http://registry.test", issuer, transport=registry.transport())
    catalog = CatalogIndex(client, full_refresh=60, clock=lambda: now[0])
    refresh(catalog, registry)
    now[0] += 59
    refresh(catalog, registry)
    assert "head" not in registry.counts
    now[0] += 2
    refresh(catalog, registry)
    assert registry.counts["head"] == 19
    assert catalog.status().last_full_refresh == catalog.last_refresh


def test_a_notified_push_of_a_known_image_reads_no_manifest(
    catalog: CatalogIndex, registry: FakeRegistry
) -> None:
    refresh(catalog, registry)
    digest = registry.repositories["team/app-1"]["v2"]
    registry.tag("team/app-1", "prod", digest)
    assert catalog.apply_events([pushed("team/app-1", "prod", digest)]) == {"team/app-1"}
    registry.reset_counts()
    asyncio.run(catalog.update_repository("team/app-1"))
    assert registry.counts == {"tags": 1}
    assert tags_of(catalog, "team/app-1")["prod"] == digest


def test_an_image_index_shares_the_platforms_the_index_holds(
    catalog: CatalogIndex, registry: FakeRegistry
) -> None:
    amd, arm = registry.image("multi amd64"), registry.image("multi arm64")

    def index_of(*children: str) -> str:
        entries = [
            {"mediaType": OCI_MANIFEST, "digest": child, "size": 500, "platform": platform}
            for child, platform in zip(
                children,
                [{"os": "linux", "architecture": a} for a in ("amd64", "arm64")],
                strict=True,
            )
        ]
        body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        return registry.manifest(body, OCI_INDEX)

    registry.tag("team/multi", "v1", index_of(amd, arm))
    refresh(catalog, registry)
    rebuilt = registry.image("multi arm64, rebuilt")
    registry.tag("team/multi", "v2", index_of(amd, rebuilt))
    refresh(catalog, registry)
    # The new index, and of its platforms only the new one (amd64 is held already).
    assert registry.counts["manifest"] == 2 and registry.counts["blob"] == 1
    v2 = catalog.repositories["team/multi"].tags["v2"]
    assert [p.architecture for p in v2.platforms] == ["amd64", "arm64"]
    assert v2.platforms[0] is catalog.repositories["team/multi"].tags["v1"].platforms[0]


def test_requests_in_flight_never_exceed_the_concurrency(
    registry: FakeRegistry, issuer: TokenIssuer
) -> None:
    registry.delay = 0.002
    for n in range(40):
        registry.tag("wide/one", f"t{n}", registry.image(f"wide {n}"))
    client = RegistryClient("http://registry.test", issuer, transport=registry.transport())
    catalog = CatalogIndex(client, concurrency=3)
    assert asyncio.run(catalog.refresh()) is True
    assert registry.most_in_flight == 3


def test_progress_is_logged_and_shown_while_the_registry_is_read(
    catalog: CatalogIndex,
    registry: FakeRegistry,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry.delay = 0.01
    monkeypatch.setattr(index_module, "LOG_EVERY", 0.02)
    seen = []

    async def run() -> bool:
        refreshing = asyncio.create_task(catalog.refresh())
        while not refreshing.done():
            seen.append(catalog.status().progress)
            await asyncio.sleep(0.01)
        return await refreshing

    with caplog.at_level(logging.INFO, logger="registry_gateway.catalog"):
        assert asyncio.run(run()) is True
    lines = [r for r in caplog.records if getattr(r, "event", "") == "catalog_progress"]
    assert lines, "no progress line while the registry was read"
    last = lines[-1]
    assert last.kind == "first read" and last.repositories_total == 7  # type: ignore[attr-defined]
    assert "requests/s" in last.getMessage()
    shown = [p for p in seen if p is not None]
    assert shown and shown[-1]["repositories_total"] == 7
    assert shown[-1]["manifests"] > 0 and "repositories" in shown[-1]["summary"]
    assert catalog.status().progress is None  # done: nothing under way
    done = [r for r in caplog.records if getattr(r, "event", "") == "catalog_refreshed"]
    assert done[-1].manifests == 19  # type: ignore[attr-defined]


def test_a_notification_during_a_refresh_is_not_undone_by_it(
    catalog: CatalogIndex, registry: FakeRegistry
) -> None:
    """A refresh that read a repository before a push must not publish its older read over
    the notification's newer one."""
    refresh(catalog, registry)
    digest = registry.image("app-0:hotfix")

    async def run() -> None:
        release = registry.held["/v2/team/big/tags/list"] = asyncio.Event()
        refreshing = asyncio.create_task(catalog.refresh(full=True))
        while catalog.progress is None or catalog.progress.repositories_done < 6:
            await asyncio.sleep(0.001)  # every repository read but team/big, held
        registry.tag("team/app-0", "hotfix", digest)
        catalog.apply_events([pushed("team/app-0", "hotfix", digest)])
        await catalog.update_repository("team/app-0")
        assert tags_of(catalog, "team/app-0")["hotfix"] == digest
        release.set()
        assert await refreshing

    asyncio.run(run())
    assert tags_of(catalog, "team/app-0")["hotfix"] == digest


def test_a_tag_to_nothing_is_left_out_and_not_asked_again(
    catalog: CatalogIndex, registry: FakeRegistry
) -> None:
    refresh(catalog, registry)
    registry.tag("team/app-1", "v9", "sha256:" + "0" * 64)  # its manifest is gone
    refresh(catalog, registry)
    assert registry.counts["head"] == 1
    assert "v9" not in catalog.repositories["team/app-1"].tags
    refresh(catalog, registry)
    assert registry.counts == listing(registry)
    refresh(catalog, registry, full=True)  # a full re-read tries it again
    assert ("HEAD", "/v2/team/app-1/manifests/v9") in registry.asked


def test_a_registry_failing_part_way_leaves_the_index_as_it_was(
    catalog: CatalogIndex, registry: FakeRegistry
) -> None:
    refresh(catalog, registry)
    before, generation = catalog.repositories, catalog.generation
    registry.tag("team/app-0", "v3", registry.image("app-0:v3"))
    registry.broken.add("/v2/team/app-3/tags/list")
    registry.reset_counts()
    assert asyncio.run(catalog.refresh()) is False
    assert catalog.repositories is before and catalog.generation == generation
    assert catalog.last_error is not None and "HTTP 500" in catalog.last_error
    registry.broken.clear()
    refresh(catalog, registry)
    assert "v3" in catalog.repositories["team/app-0"].tags and catalog.last_error is None


def test_an_unreadable_manifest_leaves_out_its_tag_not_the_refresh(
    catalog: CatalogIndex, registry: FakeRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    refresh(catalog, registry)
    garbage = b"<html>not a manifest</html>"
    digest = "sha256:" + hashlib.sha256(garbage).hexdigest()
    registry.manifests[digest] = (OCI_MANIFEST, garbage)
    registry.tag("team/app-2", "broken", digest)
    registry.tag("team/app-4", "v3", registry.image("app-4:v3"))
    with caplog.at_level(logging.WARNING, logger="registry_gateway.catalog"):
        assert asyncio.run(catalog.refresh()) is True
    assert catalog.last_error is None
    assert "v3" in catalog.repositories["team/app-4"].tags  # the pass went on
    assert "broken" not in catalog.repositories["team/app-2"].tags
    assert "v1" in catalog.repositories["team/app-2"].tags
    assert any(f"team/app-2:{digest}" in r.getMessage() for r in caplog.records)
