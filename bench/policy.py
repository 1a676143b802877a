"""Benchmark the policy engine: load, compile and decide on a large and a small policy.

Both policies come from tests/support/policygen.py (realistic: teams with roles, namespaces of
mixed visibility, grants with literal, `*` and `**` patterns, a few restrictions), written as
YAML files to temp directories. For each it measures:

- load: `load_directory` wall time, median of 3;
- compile: `Engine(policy)` wall time, median of 3;
- memory: the tracemalloc peak during one load + compile, and the RSS a fresh interpreter
  grows by to hold the loaded policy and its engine;
- decisions/s: `Engine.decide` over a fixed mix of six scopes (a team member pulling from
  their namespace, a push a grant allows, a denied push, an anonymous pull of a public
  repository, an admin, the catalog), and each scope on its own, in CPU microseconds.

Targets: the large policy loads in under 2 s, and decides at least half as fast as the small
one. Each is printed PASS or MISS, on wall time and on CPU time (the steadier figure on a
shared machine, where a WARNING line says so); the exit status is 0 either way.

`--wildcards 0.03` makes about 3% of patterns start with a wildcard (`**/cache`, `api-*`):
such patterns cannot be indexed by namespace, so this shows how decisions scale with them.

    .venv/bin/python -m bench.policy                # from the repository root
    .venv/bin/python -m bench.policy --users 2000 --grants 5000 --seconds 1
    .venv/bin/python -m bench.policy --profile      # where the large load and compile spend time

Progress goes to stderr, figures to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import random
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.policy.engine import Engine
from gateway.policy.load import load_directory
from gateway.policy.model import ANONYMOUS_SUBJECT, Policy, Subject, Visibility

from tests.support.policygen import generate_spec, render

REPO = Path(__file__).resolve().parent.parent
LOAD_TARGET_S = 2.0
RATIO_TARGET = 0.5
SMALL = {"users": 6, "teams": 3, "namespaces": 4, "grants": 10, "robots": 2, "restrictions": 2}


def progress(message: str) -> None:
    print(f"bench/policy: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Scope:
    label: str
    subject: Subject
    type: str
    name: str
    actions: tuple[str, ...]


@dataclass
class Figures:
    label: str
    sizes: dict[str, Any]
    files: int
    yaml_mb: float
    load_s: float
    load_cpu_s: float
    compile_s: float
    compile_cpu_s: float
    peak_mb: float
    rss_mb: float
    per_second: float
    per_cpu_second: float
    per_scope_us: dict[str, float]
    scopes: list[tuple[Scope, tuple[str, ...]]]


# -- the policies ----------------------------------------------------------------------------


def write_policy(directory: Path, sizes: dict[str, Any], seed: int) -> tuple[int, float]:
    """Generate a policy into `directory`; the number of files and their total size in MB."""
    texts = render(generate_spec(random.Random(seed), **sizes))
    for name, text in texts.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return len(texts), sum(len(t.encode()) for t in texts.values()) / 1e6


def instance(pattern: str) -> str:
    """One repository name a pattern matches."""
    return "/".join("x" if part == "**" else part.replace("*", "x") for part in pattern.split("/"))


def pick_scopes(engine: Engine, rng: random.Random) -> list[Scope]:
    """The fixed mix, chosen in this policy so that each scope gets the answer it stands for."""
    policy = engine.policy
    users = sorted(name for name, user in policy.users.items() if not user.admin)
    admin = next(name for name, user in sorted(policy.users.items()) if user.admin)
    namespaces = sorted(n for n, ns in policy.namespaces.items() if not ns.personal)

    def first(label: str, candidates: list[Scope], ok: Callable[[tuple[str, ...]], bool]) -> Scope:
        rng.shuffle(candidates)
        for scope in candidates[:2000]:
            granted = engine.decide(scope.subject, scope.type, scope.name, scope.actions).granted
            if ok(granted):
                return scope
        raise SystemExit(f"bench/policy: no scope of kind {label!r} in this policy; try --seed")

    team_pull = [
        Scope("team pull", Subject("user", member.name), "repository", f"{ns}/api", ("pull",))
        for ns in namespaces
        for team in policy.namespaces[ns].teams
        for member, _ in policy.teams[team].members
        if member.kind == "user"
    ]
    granted_push = [
        Scope("granted push", Subject("user", to.name), "repository", instance(p), ("pull", "push"))
        for grant in policy.grants
        if "push" in grant.actions
        for to in grant.to
        if to.kind == "user"
        for p in grant.repositories
        if "*" not in p.partition("/")[0]
    ]
    private = [n for n in namespaces if policy.namespaces[n].visibility is Visibility.PRIVATE]
    denied = [
        Scope("denied", Subject("user", rng.choice(users)), "repository", f"{ns}/secret", ("push",))
        for ns in private
    ]
    public = [n for n in namespaces if policy.namespaces[n].visibility is Visibility.PUBLIC]
    anonymous = [
        Scope("anonymous public pull", ANONYMOUS_SUBJECT, "repository", f"{ns}/base", ("pull",))
        for ns in public
    ]
    everything = ("pull", "push", "delete")
    admins = [
        Scope("admin", Subject("user", admin), "repository", f"{ns}/api", everything)
        for ns in namespaces
    ]
    return [
        first("team pull", team_pull, lambda g: g == ("pull",) or "pull" in g),
        first("granted push", granted_push, lambda g: "push" in g),
        first("denied", denied, lambda g: g == ()),
        first("anonymous public pull", anonymous, lambda g: g == ("pull",)),
        first("admin", admins, lambda g: g == everything),
        Scope("catalog", Subject("user", admin), "registry", "catalog", ("*",)),
    ]


# -- measurements ----------------------------------------------------------------------------


def timed(function: Callable[[], Any]) -> tuple[float, float, Any]:
    """Wall and CPU seconds of one call, and its result."""
    start, cpu = time.perf_counter(), time.process_time()
    result = function()
    return time.perf_counter() - start, time.process_time() - cpu, result


def rate(engine: Engine, scopes: list[Scope], seconds: float) -> tuple[float, float]:
    """Decisions per wall second and per CPU second, cycling through `scopes` for `seconds`."""
    decide = engine.decide
    calls = [(s.subject, s.type, s.name, s.actions) for s in scopes]
    rounds = max(1, 200 // len(calls))
    done = 0
    start, cpu = time.perf_counter(), time.process_time()
    while True:
        for _ in range(rounds):
            for subject, type_, name, actions in calls:
                decide(subject, type_, name, actions)
        done += rounds * len(calls)
        now = time.perf_counter()
        if now - start >= seconds:
            return done / (now - start), done / (time.process_time() - cpu)


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def rss_growth(directory: Path) -> float:
    """MB of RSS a fresh interpreter grows by to load and compile the policy in `directory`."""
    command = [sys.executable, "-m", "bench.policy", "--rss-child", str(directory)]
    out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO).stdout
    return json.loads(out.strip().splitlines()[-1])["rss_mb"]


def rss_child(directory: Path) -> None:
    gc.collect()
    before = rss_kib()
    engine = Engine(load_directory(directory).policy)
    after = rss_kib()
    print(json.dumps({"rss_mb": (after - before) / 1024, "users": len(engine.policy.users)}))


def measure(
    label: str, directory: Path, sizes: dict[str, Any], files: int, mb: float, seconds: float
) -> Figures:
    progress(f"{label}: load and compile, 3 times each")
    loads, compiles, load_cpu, compile_cpu = [], [], [], []
    engine: Engine | None = None
    for _ in range(3):
        engine = None
        gc.collect()
        wall, cpu, result = timed(lambda: load_directory(directory))
        loads.append(wall)
        load_cpu.append(cpu)
        wall, cpu, engine = timed(lambda: Engine(result.policy))  # noqa: B023
        compiles.append(wall)
        compile_cpu.append(cpu)
    assert engine is not None
    progress(f"{label}: memory (tracemalloc, then a fresh interpreter for RSS)")
    policy: Policy | None = None
    gc.collect()
    tracemalloc.start()
    policy = load_directory(directory).policy
    Engine(policy)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del policy
    rss = rss_growth(directory)
    scopes = pick_scopes(engine, random.Random(7))
    answers = [(s, engine.decide(s.subject, s.type, s.name, s.actions).granted) for s in scopes]
    progress(f"{label}: deciding the mix for {seconds:g} s, then each scope alone")
    rate(engine, scopes, min(0.2, seconds))  # warm up
    per_second, per_cpu_second = rate(engine, scopes, seconds)
    per_scope = {s.label: 1e6 / rate(engine, [s], seconds / len(scopes))[1] for s in scopes}
    return Figures(
        label,
        sizes,
        files,
        mb,
        statistics.median(loads),
        statistics.median(load_cpu),
        statistics.median(compiles),
        statistics.median(compile_cpu),
        peak / 1e6,
        rss,
        per_second,
        per_cpu_second,
        per_scope,
        answers,
    )


def profile(directory: Path, top: int) -> str:
    """cProfile of one load + compile: the functions with the most own time."""
    profiler = cProfile.Profile()
    profiler.enable()
    Engine(load_directory(directory).policy)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


# -- output ----------------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "unknown CPU"


def report(small: Figures, large: Figures) -> None:
    rows = [
        (
            "users / teams / namespaces",
            lambda f: "{users} / {teams} / {namespaces}".format(**f.sizes),
        ),
        ("grants / restrictions", lambda f: "{grants} / {restrictions}".format(**f.sizes)),
        ("files, MB of YAML", lambda f: f"{f.files}, {f.yaml_mb:.2f}"),
        ("load s (median of 3)", lambda f: f"{f.load_s:.3f}"),
        ("  CPU s", lambda f: f"{f.load_cpu_s:.3f}"),
        ("compile s (median of 3)", lambda f: f"{f.compile_s:.3f}"),
        ("  CPU s", lambda f: f"{f.compile_cpu_s:.3f}"),
        ("tracemalloc peak MB", lambda f: f"{f.peak_mb:.1f}"),
        ("RSS growth MB", lambda f: f"{f.rss_mb:.1f}"),
        ("decisions/s (mix)", lambda f: f"{f.per_second:,.0f}"),
        ("decisions per CPU s (mix)", lambda f: f"{f.per_cpu_second:,.0f}"),
    ]
    rows += [
        (f"  CPU us/decision: {label}", lambda f, label=label: f"{f.per_scope_us[label]:.1f}")
        for label in small.per_scope_us
    ]
    print(f"python {platform.python_version()}, {cpu_model()}, {os.cpu_count()} CPUs")
    busy = os.getloadavg()[0]
    if busy > 1.5:  # this benchmark itself accounts for about 1
        print(
            f"WARNING: load average {busy:.1f} on {os.cpu_count()} CPUs: other processes share "
            "the machine, so wall times are inflated; the CPU seconds are steadier"
        )
    print()
    print(f"{'':40}{'small':>20}{'large':>20}")
    for title, cell in rows:
        print(f"{title:40}{cell(small):>20}{cell(large):>20}")
    print()
    for figures in (small, large):
        print(f"{figures.label} policy, the mix:")
        for scope, granted in figures.scopes:
            asked = ",".join(scope.actions)
            print(
                f"  {scope.label:22} {scope.subject!s:18} {scope.type}:{scope.name}:{asked}"
                f" -> {','.join(granted) or '(nothing)'}"
            )
    print()
    verdict = {True: "PASS", False: "MISS"}
    targets = [
        ("large load time, wall s", large.load_s, large.load_s < LOAD_TARGET_S),
        ("large load time, CPU s", large.load_cpu_s, large.load_cpu_s < LOAD_TARGET_S),
    ]
    for what, small_rate, large_rate in (
        ("wall", small.per_second, large.per_second),
        ("CPU", small.per_cpu_second, large.per_cpu_second),
    ):
        ratio = large_rate / small_rate
        targets.append((f"large/small decisions per {what} s", ratio, ratio >= RATIO_TARGET))
    for what, value, ok in targets:
        goal = f"< {LOAD_TARGET_S:g} s" if "load" in what else f">= {RATIO_TARGET:g}"
        print(f"{what:36}{value:9.3f}   target {goal:8} {verdict[ok]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Load, compile and decide on a large and a small generated policy.",
        epilog="Progress goes to stderr, figures to stdout. Exit status 0 whether targets "
        "are met or not.",
    )
    parser.add_argument("--users", type=int, default=10_000, help="large policy (10000)")
    parser.add_argument("--teams", type=int, default=2_000, help="large policy (2000)")
    parser.add_argument("--namespaces", type=int, default=5_000, help="large policy (5000)")
    parser.add_argument("--grants", type=int, default=20_000, help="large policy (20000)")
    parser.add_argument("--robots", type=int, default=None, help="large policy (users/10)")
    parser.add_argument(
        "--restrictions", type=int, default=None, help="large policy (namespaces/50)"
    )
    parser.add_argument(
        "--wildcards",
        type=float,
        default=None,
        metavar="P",
        help="large policy: the chance a pattern starts with a wildcard, such as '**/cache' "
        "(default: about ten such patterns in all, as in a real policy; 0.03 is a stress test)",
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="deciding time per policy")
    parser.add_argument("--seed", type=int, default=1, help="generator seed (1)")
    parser.add_argument(
        "--profile",
        type=int,
        nargs="?",
        const=25,
        default=0,
        metavar="N",
        help="also print the N functions taking most time in the large load + compile",
    )
    parser.add_argument("--rss-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child:
        rss_child(args.rss_child)
        return 0
    large_sizes = {
        "users": args.users,
        "teams": args.teams,
        "namespaces": args.namespaces,
        "grants": args.grants,
        "robots": max(1, args.users // 10) if args.robots is None else args.robots,
        "restrictions": (
            max(1, args.namespaces // 50) if args.restrictions is None else args.restrictions
        ),
        "wildcards": args.wildcards,
    }
    with tempfile.TemporaryDirectory(prefix="bench-policy-") as temp:
        figures = []
        for label, sizes in (("small", SMALL), ("large", large_sizes)):
            directory = Path(temp) / label
            directory.mkdir()
            progress(f"{label}: generating {sizes}")
            files, mb = write_policy(directory, sizes, args.seed)
            gc.collect()
            figures.append(measure(label, directory, sizes, files, mb, args.seconds))
        report(*figures)
        if args.profile:
            progress("large: profiling one load + compile")
            print()
            print(profile(Path(temp) / "large", args.profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
