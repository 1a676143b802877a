"""How fast the catalog UI answers with 2,000 repositories and 50,000 tags (or more), and the
index's size.

    .venv/bin/python -m bench.ui [--keep DIR] [--rounds 30]     # from the repository root
    .venv/bin/python -m bench.ui --repositories 10000 --tags 200000 --keep DIR

Fills the storage of a real registry (Debian's `docker-registry`, no auth) with bench/catalog.py's
layout, written on disk as the registry lays it out (a namespace per 100 repositories,
`ns00/big` with 1,000 tags, every tag its own manifest over shared layers and configs), then
runs the gateway app in-process against it: the index is built from cold through the registry
API (its progress is logged every 5 s), and pages are timed warm through the ASGI app,
server-side (its Server-Timing header). With --keep DIR the registry's storage stays in DIR and
the next run with the same layout (bench/catalog.py's too) skips the filling.

Targets: every page under 50 ms server-side (issues 5 and 16); the index under 200 MB at 2,000
repositories (issue 5) and under 300 MB at 10,000 repositories / 200,000 tags (issue 16).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import bcrypt
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import load_settings

from bench.catalog import BIG, BIG_TAGS, CONFIGS, deep_size, fill, namespaces
from tests.support.registry import start_registry

PAGE_MS = 50.0
PASSWORD = "bench-password"


def write_policy(directory: Path, count: int) -> None:
    """bob: public, protected and private (team) namespaces; alice: admin."""
    directory.mkdir(parents=True, exist_ok=True)
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    spaces = {}
    for i in range(count):
        visibility = "public" if i < count / 4 else "protected" if i < count * 3 / 4 else "private"
        spaces[f"ns{i:02d}"] = {"teams": ["devs"], "visibility": visibility}
    policy = {
        "users": {"alice": {"password": hashed, "admin": True}, "bob": {"password": hashed}},
        "teams": {"devs": {"contributors": ["bob"]}},
        "namespaces": spaces,
        "restrictions": [
            {
                "repositories": [f"ns{count - 1:02d}/**"],
                "actions": ["delete"],
                "only": ["user:alice"],
            }
        ],
    }
    (directory / "policy.yaml").write_text(json.dumps(policy, indent=1))


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def server_ms(response: Any) -> float:  # starlette's TestClient answers with httpx2's
    match = re.search(r"app;dur=([\d.]+)", response.headers.get("server-timing", ""))
    assert match, f"no Server-Timing on {response.request.url}: HTTP {response.status_code}"
    return float(match.group(1))


def time_page(client: TestClient, path: str, rounds: int, **kwargs: Any) -> dict[str, float]:
    first = client.get(path, **kwargs)
    assert first.status_code == 200, (path, first.status_code, first.text[:300])
    samples = []
    for _ in range(rounds):
        samples.append(server_ms(client.get(path, **kwargs)))
    samples.sort()
    return {
        "first": server_ms(first),
        "median": statistics.median(samples),
        "p95": samples[max(0, int(len(samples) * 0.95) - 1)],
        "max": samples[-1],
        "bytes": len(first.content),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="keep the registry storage here (reused)")
    parser.add_argument("--rounds", type=int, default=30, help="timed requests per page")
    parser.add_argument("--repositories", type=int, default=2000)
    parser.add_argument("--tags", type=int, default=50_000)
    parser.add_argument("--configs", type=int, default=CONFIGS, help="distinct image configs")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ui-"))
    storage = args.keep or work / "registry"
    storage.mkdir(parents=True, exist_ok=True)
    fill(storage, args.repositories, args.tags, args.configs)
    registry = start_registry(storage)
    index_target = 300.0 if args.repositories >= 10_000 else 200.0
    try:
        write_policy(work / "policies", namespaces(args.repositories))
        settings = load_settings(
            {
                "policies": str(work / "policies"),
                "data_dir": str(work / "data"),
                "audit_log": str(work / "audit.log"),
                "registry_url": registry.url,
                "registry_public": "registry.example.org",
                "catalog_refresh": "1h",
                "watch": "false",
                "log_level": "warning",
            },
            environ={},
        )
        gc.collect()
        before = rss_mb()
        app = create_app(settings)
        # The index's progress lines (every 5 s while it reads), not every request's.
        logging.getLogger("registry_gateway.catalog").setLevel(logging.INFO)
        with TestClient(app) as client:
            catalog = app.state.services.catalog
            deadline = time.monotonic() + 4 * 3600
            while not catalog.built:
                if catalog.last_error and time.monotonic() > deadline:
                    raise SystemExit(f"index never built: {catalog.last_error}")
                time.sleep(0.2)
            status = catalog.status()
            gc.collect()
            rss_growth = rss_mb() - before
            index_mb = (
                deep_size(catalog.repositories, catalog._manifests, catalog._unreadable) / 2**20
            )
            assert status.repositories == args.repositories and status.tags == args.tags, status
            auth = {"auth": ("bob", PASSWORD)}
            login = client.get("/-/login")
            found = re.search(r'name="csrf" value="([^"]+)"', login.text)
            assert found is not None, "no CSRF field on the sign-in page"
            csrf = found.group(1)
            signed = client.post(
                "/-/login",
                data={"username": "bob", "password": PASSWORD, "csrf": csrf},
                follow_redirects=False,
            )
            assert signed.status_code == 303
            cold = server_ms(client.get("/"))  # the first view of bob: a decision per repository
            pages = {
                "namespaces (home)": ("/", {}),
                "namespace page (100 repositories)": ("/n/ns03", {}),
                f"repository page ({BIG_TAGS} tags, newest first)": (f"/r/{BIG}", {}),
                f"repository page ({BIG_TAGS} tags, by name, page 5)": (
                    f"/r/{BIG}?sort=name&page=5",
                    {},
                ),
                "tag page": (f"/r/{BIG}:1.2.3", {}),
                "search ?q=app-01 (HTML)": ("/search?q=app-01", {}),
                "search ?q=app-01 (JSON, Basic)": ("/search?q=app-01&format=json", auth),
                "namespace page (JSON, Basic)": ("/n/ns03?format=json", auth),
            }
            results = {
                name: time_page(client, path, args.rounds, **kw)
                for name, (path, kw) in pages.items()
            }
    finally:
        registry.stop()

    print(f"registry: {status.repositories} repositories, {status.tags} tags")
    print(f"index build from cold: {status.refresh_seconds:.1f} s")
    verdict = "PASS" if index_mb < index_target else "MISS"
    print(
        f"index memory (every object the index holds): {index_mb:.0f} MB"
        f"  [{verdict} < {index_target:.0f} MB]"
    )
    print(
        f"RSS growth of the whole process while building (gateway, HTTP client): {rss_growth:.0f} MB"
    )

    print(
        f"first page for a new viewer (visibility of {status.repositories:,} repositories):"
        f" {cold:.1f} ms"
    )
    print(f"{'page (warm, server-side ms)':<52} {'median':>7} {'p95':>7} {'max':>7} {'KB':>6}")
    for name, r in results.items():
        verdict = "PASS" if r["p95"] < PAGE_MS else "MISS"
        print(
            f"{name:<52} {r['median']:7.2f} {r['p95']:7.2f} {r['max']:7.2f}"
            f" {r['bytes'] / 1024:6.0f}  [{verdict} p95 < {PAGE_MS:.0f} ms]"
        )


if __name__ == "__main__":
    main()
