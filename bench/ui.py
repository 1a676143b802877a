"""How fast the catalog UI answers with 2,000 repositories and 50,000 tags, and the index's size.

    .venv/bin/python -m bench.ui [--keep DIR] [--rounds 30]     # from the repository root

Starts a real registry (Debian's `docker-registry`, no auth) and fills it by script: a few
blobs uploaded once, mounted into every repository, then one small manifest PUT per tag
(each manifest is distinct through an annotation; layers and configs are shared). Then the
gateway app runs in-process against it: the index is built from cold through the registry
API, and pages are timed warm through the ASGI app, server-side (its Server-Timing header).
With --keep DIR the registry's storage stays in DIR and a second run skips the pushing.

Targets (issue 5): every page under 50 ms server-side, the index under 200 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import gzip
import hashlib
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bcrypt
import httpx
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import load_settings

from tests.support.registry import start_registry

NAMESPACES = 20
REPOSITORIES = 2000
TAGS = 50_000
BIG = "ns00/big"  # the repository with 1,000 tags
BIG_TAGS = 1000
CONFIGS = 4
PAGE_MS = 50.0
INDEX_MB = 200.0
PASSWORD = "bench-password"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def layout() -> dict[str, list[str]]:
    """Repository -> tags: 20 namespaces of 100 repositories, 50,000 tags in all."""
    names = [BIG] + [f"ns{i % NAMESPACES:02d}/app-{i:04d}" for i in range(1, REPOSITORIES)]
    rest = TAGS - BIG_TAGS
    per, extra = divmod(rest, REPOSITORIES - 1)
    repos = {BIG: [f"1.{i // 100}.{i % 100}" for i in range(BIG_TAGS)]}
    for n, name in enumerate(names[1:]):
        count = per + (1 if n < extra else 0)
        repos[name] = [f"v{i}" for i in range(count - 1)] + ["latest"]
    assert sum(len(t) for t in repos.values()) == TAGS and len(repos) == REPOSITORIES
    return repos


def blobs() -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """Two shared layers and a few image configs, as (digest, bytes)."""

    def blob(data: bytes) -> tuple[str, bytes]:
        return "sha256:" + hashlib.sha256(data).hexdigest(), data

    layers = [blob(gzip.compress(os.urandom(2048) + bytes(n), mtime=0)) for n in range(2)]
    configs = []
    for n in range(CONFIGS):
        config = {
            "created": f"2024-0{n + 1}-01T12:00:00Z",
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/bin", "APP_MODE=production"],
                "Entrypoint": ["/app"],
                "Labels": {"org.opencontainers.image.version": f"{n}"},
            },
            "rootfs": {"type": "layers", "diff_ids": [layers[0][0], layers[1][0]]},
        }
        configs.append(blob(json.dumps(config).encode()))
    return layers, configs


async def push(url: str, repos: dict[str, list[str]]) -> None:
    layers, configs = blobs()
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        seed = "seed/blobs"
        for digest, data in layers + configs:
            start = await http.post(f"/v2/{seed}/blobs/uploads/")
            start.raise_for_status()
            location = start.headers["location"]  # keeps its own query (_state=...)
            target = location + ("&" if "?" in location else "?") + f"digest={digest}"
            done = await http.put(target, content=data)
            done.raise_for_status()
        gate = asyncio.Semaphore(64)

        async def mount(repo: str) -> None:
            for digest, _ in layers + configs:
                async with gate:
                    answer = await http.post(
                        f"/v2/{repo}/blobs/uploads/", params={"mount": digest, "from": seed}
                    )
                if answer.status_code != 201:
                    raise SystemExit(f"mounting {digest} into {repo}: HTTP {answer.status_code}")

        async def put(repo: str, n: int, tag: str) -> None:
            config_digest, config = configs[n % CONFIGS]
            manifest = {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config_digest,
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": digest,
                        "size": len(data),
                    }
                    for digest, data in layers
                ],
                "annotations": {"org.example.bench": f"{repo}:{tag}"},
            }
            async with gate:
                answer = await http.put(
                    f"/v2/{repo}/manifests/{tag}",
                    content=json.dumps(manifest).encode(),
                    headers={"Content-Type": OCI_MANIFEST},
                )
            if answer.status_code != 201:
                raise SystemExit(f"PUT {repo}:{tag}: HTTP {answer.status_code} {answer.text[:200]}")

        started = time.perf_counter()
        await asyncio.gather(*(mount(repo) for repo in repos))
        jobs = [put(repo, n, tag) for repo, tags in repos.items() for n, tag in enumerate(tags)]
        for i in range(0, len(jobs), 5000):
            await asyncio.gather(*jobs[i : i + 5000])
            print(f"  pushed {min(i + 5000, len(jobs))} manifests", file=sys.stderr)
        print(f"  pushing took {time.perf_counter() - started:.0f} s", file=sys.stderr)


def write_policy(directory: Path) -> None:
    """bob: public, protected and private (team) namespaces; alice: admin."""
    directory.mkdir(parents=True, exist_ok=True)
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    namespaces = {}
    for i in range(NAMESPACES):
        visibility = "public" if i < 5 else "protected" if i < 15 else "private"
        namespaces[f"ns{i:02d}"] = {"teams": ["devs"], "visibility": visibility}
    policy = {
        "users": {"alice": {"password": hashed, "admin": True}, "bob": {"password": hashed}},
        "teams": {"devs": {"contributors": ["bob"]}},
        "namespaces": namespaces,
        "restrictions": [
            {"repositories": ["ns19/**"], "actions": ["delete"], "only": ["user:alice"]}
        ],
    }
    (directory / "policy.yaml").write_text(json.dumps(policy, indent=1))


def deep_size(*roots: object) -> int:
    """Bytes of every object reachable from `roots`, each counted once."""
    seen: set[int] = set()
    stack = list(roots)
    total = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, type):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        stack.extend(gc.get_referents(obj))
    return total


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def server_ms(response: httpx.Response) -> float:
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
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ui-"))
    storage = args.keep or work / "registry"
    repos = layout()
    registry = start_registry(storage)
    try:
        marker = storage / "bench-filled"
        if not marker.exists():
            print(
                f"filling the registry: {REPOSITORIES} repositories, {TAGS} tags", file=sys.stderr
            )
            asyncio.run(push(registry.url, repos))
            marker.write_text("done\n")
        write_policy(work / "policies")
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
        with TestClient(app) as client:
            catalog = app.state.services.catalog
            deadline = time.monotonic() + 1800
            while not catalog.built:
                if catalog.last_error and time.monotonic() > deadline:
                    raise SystemExit(f"index never built: {catalog.last_error}")
                time.sleep(0.2)
            status = catalog.status()
            gc.collect()
            rss_growth = rss_mb() - before
            index_mb = (
                deep_size(
                    catalog.repositories,
                    catalog._manifests,
                    catalog._configs,
                    catalog._layer_lists,
                )
                / 2**20
            )
            assert status.repositories == REPOSITORIES and status.tags == TAGS, status
            auth = {"auth": ("bob", PASSWORD)}
            login = client.get("/-/login")
            csrf = re.search(r'name="csrf" value="([^"]+)"', login.text).group(1)
            signed = client.post(
                "/-/login",
                data={"username": "bob", "password": PASSWORD, "csrf": csrf},
                follow_redirects=False,
            )
            assert signed.status_code == 303
            cold = server_ms(client.get("/"))  # the first view of bob: 2,000 decisions
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
    verdict = "PASS" if index_mb < INDEX_MB else "MISS"
    print(
        f"index memory (every object the index holds): {index_mb:.0f} MB"
        f"  [{verdict} < {INDEX_MB:.0f} MB]"
    )
    print(
        f"RSS growth of the whole process while building (gateway, HTTP client): {rss_growth:.0f} MB"
    )

    print(f"first page for a new viewer (visibility of 2,000 repositories): {cold:.1f} ms")
    print(f"{'page (warm, server-side ms)':<52} {'median':>7} {'p95':>7} {'max':>7} {'KB':>6}")
    for name, r in results.items():
        verdict = "PASS" if r["p95"] < PAGE_MS else "MISS"
        print(
            f"{name:<52} {r['median']:7.2f} {r['p95']:7.2f} {r['max']:7.2f}"
            f" {r['bytes'] / 1024:6.0f}  [{verdict} p95 < {PAGE_MS:.0f} ms]"
        )


if __name__ == "__main__":
    main()
