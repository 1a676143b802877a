"""The catalog index against a real registry: a cold build beside its floor, refreshes, memory.

    .venv/bin/python -m bench.catalog                                  # 2,000 repos, 50,000 tags
    .venv/bin/python -m bench.catalog --repositories 10000 --tags 200000 --storage DIR
    .venv/bin/python -m bench.catalog --concurrency 4,8,16,32 --repositories 500 --tags 12500

Fills the storage of Debian's `docker-registry` (2.8, no auth, filesystem driver) by writing its
filesystem layout directly (tests/support/registry_storage.py: minutes instead of the hours a
push of 200,000 manifests takes), then starts the registry on it. The layout: a namespace per
100 repositories, `ns00/big` with 1,000 tags, the others sharing the rest; every tag its own
manifest (an annotation differs), over two shared layers and `--configs` image configs.
`--storage DIR` keeps the storage for the next run (it is filled again only for another layout).

Every measurement runs in a fresh interpreter (`--child`), one at a time, against the same
registry, so each starts cold and its memory is its own:

- floor: a bare httpx script that asks what a cold build asks (the repository list, each tag
  list, each tag's manifest, each distinct image config once) with the same number of requests
  in flight (a queue and that many workers sharing one `httpx.AsyncClient`), and parses the
  JSON; nothing else;
- build: `CatalogIndex.refresh()` from cold with `RegistryClient` at the same concurrency (the
  index logs its progress every 5 s to stderr). For each concurrency of `--concurrency`,
  `--rounds` pairs of floor and build run, alternating which goes first; the ratio of their
  median times is reported (with the range of the pairs' ratios, and the CPU time each
  interpreter used): target at most 1.3 (issue 16), PASS or MISS;
- then, in the build's interpreter at the setting's default concurrency: a refresh with nothing
  new (its requests must be exactly the repository pages plus the tag-list pages), a refresh
  after 100 new tags of images the index holds and 100 tags of new images were written into
  the storage (100 HEAD, 100 manifest and 100 config reads expected), and a full re-read
  (a HEAD per tag, no manifest read);
- memory: every object the index holds (reachable from its repositories, counted once) after
  the build, and the RSS growth of the build's interpreter; target under 300 MB at 10,000
  repositories / 200,000 tags.

Page times at a size are bench/ui.py's (it fills the same layout: pass it the same `--storage`).
Progress goes to stderr, figures to stdout. The machine is shared: the floor is measured in the
same run so that the ratio holds when the machine is slower.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import gzip
import hashlib
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from gateway.auth.keys import KeyStore
from gateway.auth.tokens import TokenIssuer
from gateway.catalog.index import CONCURRENCY, CatalogIndex
from gateway.catalog.registry import ACCEPT, RegistryClient

from tests.support.registry import start_registry
from tests.support.registry_storage import RegistryStorage

REPO = Path(__file__).resolve().parent.parent
BIG = "ns00/big"  # the repository with many tags
BIG_TAGS = 1000
CONFIGS = 4
RATIO_TARGET = 1.3
INDEX_MB_TARGET = 300.0
NEW = 100  # new tags of each kind written before the "changes" refresh
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
VERDICT = {True: "PASS", False: "MISS"}


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the registry's content ------------------------------------------------------------------


def namespaces(repositories: int) -> int:
    return max(1, repositories // 100)


def layout(repositories: int, tags: int) -> dict[str, list[str]]:
    """Repository -> tags: a namespace per 100 repositories, BIG with BIG_TAGS tags."""
    spaces = namespaces(repositories)
    names = [BIG] + [f"ns{i % spaces:02d}/app-{i:05d}" for i in range(1, repositories)]
    per, extra = divmod(tags - BIG_TAGS, repositories - 1)
    repos = {BIG: [f"1.{i // 100}.{i % 100}" for i in range(BIG_TAGS)]}
    for n, name in enumerate(names[1:]):
        count = per + (1 if n < extra else 0)
        repos[name] = [f"v{i}" for i in range(count - 1)] + ["latest"]
    assert sum(len(t) for t in repos.values()) == tags and len(repos) == repositories
    return repos


def manifest_bytes(config: tuple[str, int], layers: list[tuple[str, int]], note: str) -> bytes:
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config[0], "size": config[1]},
        "layers": [{"mediaType": OCI_LAYER, "digest": d, "size": s} for d, s in layers],
        "annotations": {"org.example.bench": note},
    }
    return json.dumps(manifest).encode()


def config_bytes(n: int, layers: list[tuple[str, int]], note: str = "") -> bytes:
    config = {
        "created": f"2024-{n % 12 + 1:02d}-01T12:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/bin", "APP_MODE=production"],
            "Entrypoint": ["/app"],
            "Labels": {"org.opencontainers.image.version": f"{n}{note}"},
        },
        "rootfs": {"type": "layers", "diff_ids": [d for d, _ in layers]},
        "history": [
            {"created_by": "/bin/sh -c #(nop) ADD file:0123 in / "},
            {"created_by": f"RUN make install # build {n}"},
        ],
    }
    return json.dumps(config).encode()


def shared_blobs(
    storage: RegistryStorage, configs: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """The layers and configs every image uses (written once)."""
    layers = []
    for n in range(2):
        data = gzip.compress(hashlib.sha256(bytes([n])).digest() * 64, mtime=0)
        layers.append((storage.blob(data), len(data)))
    found = []
    for n in range(configs):
        data = config_bytes(n, layers)
        found.append((storage.blob(data), len(data)))
    return layers, found


def fill(root: Path, repositories: int, tags: int, configs: int) -> None:
    """Write the layout into `root`'s registry storage, unless it holds this layout already."""
    marker = root / "bench-layout.json"
    wanted = {"repositories": repositories, "tags": tags, "configs": configs, "version": 1}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        progress(f"reusing the registry storage in {root}")
        return
    if (root / "storage").exists():
        shutil.rmtree(root / "storage")
    storage = RegistryStorage(root / "storage")
    layers, found = shared_blobs(storage, configs)
    started = time.perf_counter()
    written = 0
    for repo, repo_tags in layout(repositories, tags).items():
        for digest, _ in layers + found:
            storage.link_blob(repo, digest)
        for n, tag in enumerate(repo_tags):
            data = manifest_bytes(found[n % configs], layers, f"{repo}:{tag}")
            storage.tag(repo, tag, storage.manifest(repo, data))
            written += 1
            if written % 20_000 == 0:
                progress(f"  wrote {written:,} of {tags:,} tags")
    marker.write_text(json.dumps(wanted))
    progress(
        f"filled {repositories:,} repositories, {tags:,} tags in {time.perf_counter() - started:.0f} s"
    )


def add_tags(
    root: Path, repositories: int, configs: int, count: int
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """`count` new tags of images the registry holds, and `count` tags of new images (each
    with a new config), in repositories it holds: what a refresh should ask beyond the lists,
    and the tags written (`remove_tags` takes them away again)."""
    storage = RegistryStorage(root / "storage")
    layers, found = shared_blobs(storage, configs)
    stamp = f"{time.time_ns()}"
    spaces = namespaces(repositories)
    written = []
    for i in range(1, count + 1):
        repo = f"ns{i % spaces:02d}/app-{i:05d}"
        held = manifest_bytes(found[0], layers, f"{repo}:v0")  # the image its tag v0 names
        storage.tag(repo, f"again-{stamp}", "sha256:" + hashlib.sha256(held).hexdigest())
        data = config_bytes(10_000 + i, layers, note=f" {stamp}")
        config = (storage.blob(data), len(data))
        storage.link_blob(repo, config[0])
        new = manifest_bytes(config, layers, f"{repo}:new-{stamp}")
        storage.tag(repo, f"new-{stamp}", storage.manifest(repo, new))
        written += [(repo, f"again-{stamp}"), (repo, f"new-{stamp}")]
    return {"head": 2 * count, "manifest": count, "blob": count}, written


def remove_tags(root: Path, tags: list[tuple[str, str]]) -> None:
    storage = RegistryStorage(root / "storage")
    for repo, tag in tags:
        storage.untag(repo, tag)


# -- the measurements, each in its own interpreter -------------------------------------------


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


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


async def floor(url: str, concurrency: int) -> dict[str, Any]:
    """What a cold build asks, and nothing else: see the module's docstring."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    counts = {"catalog": 0, "tags": 0, "manifest": 0, "blob": 0}
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:
        names: list[str] = []
        params: dict[str, Any] = {"n": 1000}
        while True:
            answer = await http.get("/v2/_catalog", params=params)
            counts["catalog"] += 1
            page = answer.json()["repositories"]
            names += page
            if "link" not in answer.headers:
                break
            params = {"n": 1000, "last": page[-1]}
        queue: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue()
        for name in names:
            queue.put_nowait(("tags", name, ""))
        seen: set[str] = set()

        async def worker() -> None:
            while not queue.empty():
                kind, repo, reference = queue.get_nowait()
                if kind == "tags":
                    tags = (await http.get(f"/v2/{repo}/tags/list")).json()["tags"]
                    for tag in tags:
                        queue.put_nowait(("manifest", repo, tag))
                elif kind == "manifest":
                    path = f"/v2/{repo}/manifests/{reference}"
                    body = (await http.get(path, headers={"Accept": ACCEPT})).json()
                    config = body["config"]["digest"]
                    if config not in seen:
                        seen.add(config)
                        queue.put_nowait(("blob", repo, config))
                else:
                    (await http.get(f"/v2/{repo}/blobs/{reference}")).json()
                counts[kind] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts


def issuer(directory: Path) -> TokenIssuer:
    keys = KeyStore(directory)
    keys.ensure()
    return TokenIssuer(keys, issuer="bench", service="bench")


async def build(url: str, concurrency: int, work: Path) -> tuple[CatalogIndex, dict[str, Any]]:
    client = RegistryClient(url, issuer(work / "keys"), connections=concurrency)
    catalog = CatalogIndex(client, concurrency=concurrency)
    started, cpu = time.perf_counter(), time.process_time()
    assert await catalog.refresh(), catalog.last_error
    return catalog, {
        "seconds": time.perf_counter() - started,
        "cpu": time.process_time() - cpu,
        "requests": dict(client.requests),
    }


async def timed_refresh(catalog: CatalogIndex, *, full: bool = False) -> dict[str, Any]:
    client = catalog.client
    before = dict(client.requests)
    started = time.perf_counter()
    assert await catalog.refresh(full=full), catalog.last_error
    after = dict(client.requests)
    asked = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    return {
        "seconds": time.perf_counter() - started,
        "requests": {k: v for k, v in asked.items() if v},
    }


def child(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-catalog-child-"))
    try:
        if args.child == "floor":
            started, cpu = time.perf_counter(), time.process_time()
            counts = asyncio.run(floor(args.url, args.concurrency))
            return {
                "seconds": time.perf_counter() - started,
                "cpu": time.process_time() - cpu,
                "requests": counts,
            }
        logging.basicConfig(
            level=logging.INFO, stream=sys.stderr, format="    %(name)s: %(message)s"
        )
        logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
        gc.collect()
        rss_before = rss_mb()

        async def run() -> dict[str, Any]:
            catalog, result = await build(args.url, args.concurrency, work)
            status = catalog.status()
            result.update(repositories=status.repositories, tags=status.tags)
            gc.collect()
            result["rss_growth_mb"] = rss_mb() - rss_before
            result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            result["index_mb"] = (
                deep_size(catalog.repositories, catalog._manifests, catalog._unreadable) / 2**20
            )
            if args.extras:
                result["nothing_new"] = await timed_refresh(catalog)
                tag_lists = status.repositories  # Distribution 2.8 sends a tag list whole
                result["expected_nothing_new"] = {
                    "catalog": -(-status.repositories // 1000) or 1,
                    "tags": tag_lists,
                }
                expected, written = add_tags(args.storage, args.repositories, args.configs, NEW)
                try:
                    result["expected_changes"] = expected
                    result["changes"] = await timed_refresh(catalog)
                    result["full"] = await timed_refresh(catalog, full=True)
                finally:
                    remove_tags(args.storage, written)
            await catalog.client.close()
            return result

        return asyncio.run(run())
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_child(
    kind: str, url: str, concurrency: int, args: argparse.Namespace, extras: bool
) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "bench.catalog",
        "--child",
        kind,
        "--url",
        url,
        "--concurrency",
        str(concurrency),
        "--storage",
        str(args.storage),
        "--configs",
        str(args.configs),
        "--repositories",
        str(args.repositories),
    ]
    if extras:
        command.append("--extras")
    done = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{kind} at concurrency {concurrency} failed ({done.returncode})")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# -- the report ------------------------------------------------------------------------------


def total(requests: dict[str, int]) -> int:
    return sum(requests.values())


Runs = dict[int, dict[str, list[dict[str, Any]]]]  # concurrency -> floor|build -> rounds


def median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(run[key] for run in runs))


def report(args: argparse.Namespace, runs: Runs) -> None:
    print(
        f"registry: Debian docker-registry 2.8, {args.repositories:,} repositories, "
        f"{args.tags:,} tags ({args.configs} image configs), filled on disk"
    )
    print(
        f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end;"
        f" {args.rounds} round(s) of floor and build per concurrency, medians"
    )
    print()
    print(
        f"{'concurrency':>11} {'floor s':>8} {'build s':>8} {'ratio':>6} {'(range)':>11}"
        f" {'floor CPU':>9} {'build CPU':>9} {'requests':>9}  verdict"
    )
    for concurrency, pair in sorted(runs.items()):
        floors, builds = pair["floor"], pair["build"]
        ratio = median(builds, "seconds") / median(floors, "seconds")
        ratios = [b["seconds"] / f["seconds"] for f, b in zip(floors, builds, strict=True)]
        assert all(total(b["requests"]) == total(builds[0]["requests"]) for b in builds)
        print(
            f"{concurrency:>11} {median(floors, 'seconds'):8.1f} {median(builds, 'seconds'):8.1f}"
            f" {ratio:6.2f} {f'{min(ratios):.2f}-{max(ratios):.2f}':>11}"
            f" {median(floors, 'cpu'):8.1f}s {median(builds, 'cpu'):8.1f}s"
            f" {total(builds[0]['requests']):>9,}"
            f"  [{VERDICT[ratio <= RATIO_TARGET]} build <= {RATIO_TARGET}x floor]"
        )
    best = min(runs, key=lambda c: median(runs[c]["build"], "seconds"))
    print(
        f"fastest build at concurrency {best}; the default (catalog_concurrency) is {CONCURRENCY}"
    )
    b = runs[args.extras_at]["build"][-1]
    print()
    print(
        f"cold build at concurrency {args.extras_at}: {b['seconds']:.1f} s, {b['tags']:,} tags,"
        f" requests {b['requests']} ({b['cpu']:.0f} s CPU in the gateway's process)"
    )
    verdict = VERDICT[b["index_mb"] < INDEX_MB_TARGET]
    print(
        f"index memory (every object the index holds): {b['index_mb']:.0f} MB"
        f"  [{verdict} < {INDEX_MB_TARGET:.0f} MB]; RSS growth {b['rss_growth_mb']:.0f} MB,"
        f" peak RSS {b['peak_rss_mb']:.0f} MB"
    )
    if "nothing_new" in b:
        nothing, expected = b["nothing_new"], b["expected_nothing_new"]
        ok = nothing["requests"] == expected
        print(
            f"refresh, nothing new: {nothing['seconds']:.1f} s, requests {nothing['requests']}"
            f"  [{VERDICT[ok]} = repository pages + tag-list pages {expected}]"
        )
        changes, want = b["changes"], b["expected_changes"]
        got = {k: changes["requests"].get(k, 0) for k in want}
        print(
            f"refresh after {NEW} new tags of held images and {NEW} of new images:"
            f" {changes['seconds']:.1f} s, requests {changes['requests']}"
            f"  [{VERDICT[got == want]} beyond the lists: {want}]"
        )
        full = b["full"]
        print(
            f"full re-read (every catalog_full_refresh): {full['seconds']:.1f} s,"
            f" requests {full['requests']}  [{VERDICT['manifest' not in full['requests']]}"
            f" no manifest read]"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repositories", type=int, default=2000)
    parser.add_argument("--tags", type=int, default=50_000)
    parser.add_argument("--configs", type=int, default=CONFIGS, help="distinct image configs")
    parser.add_argument(
        "--concurrency", default=str(CONCURRENCY), help="comma-separated, e.g. 4,8,16,32"
    )
    parser.add_argument("--storage", type=Path, help="the registry's storage, kept for next time")
    parser.add_argument("--rounds", type=int, default=1, help="floor and build pairs per level")
    parser.add_argument("--no-extras", action="store_true", help="only builds and floors")
    parser.add_argument("--child", choices=("floor", "build"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--extras", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.concurrency = int(args.concurrency)
        print(json.dumps(child(args)))
        return
    levels = [int(c) for c in args.concurrency.split(",")]
    args.extras_at = CONCURRENCY if CONCURRENCY in levels else levels[-1]
    # The refreshes after the build write tags (and take them away after): last, after its floor.
    levels = [c for c in levels if c != args.extras_at] + [args.extras_at]
    temporary = args.storage is None
    args.storage = args.storage or Path(tempfile.mkdtemp(prefix="bench-catalog-"))
    args.storage.mkdir(parents=True, exist_ok=True)
    try:
        fill(args.storage, args.repositories, args.tags, args.configs)
        registry = start_registry(args.storage)
        runs: Runs = {}
        try:
            for n, concurrency in enumerate(levels):
                runs[concurrency] = {"floor": [], "build": []}
                for r in range(args.rounds):
                    last = n == len(levels) - 1 and r == args.rounds - 1
                    flip = (n + r) % 2 == 1 and not last
                    for kind in ("build", "floor") if flip else ("floor", "build"):
                        extras = kind == "build" and last and not args.no_extras
                        progress(f"{kind} at concurrency {concurrency}, round {r + 1}")
                        result = run_child(kind, registry.url, concurrency, args, extras)
                        runs[concurrency][kind].append(result)
                        progress(
                            f"  {result['seconds']:.1f} s, {result['cpu']:.1f} s CPU,"
                            f" {total(result['requests']):,} requests"
                        )
        finally:
            registry.stop()
        report(args, runs)
    finally:
        if temporary:
            shutil.rmtree(args.storage, ignore_errors=True)


if __name__ == "__main__":
    main()
