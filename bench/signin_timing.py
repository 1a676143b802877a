"""How long a failed sign-in takes, per kind of failure: nothing may tell them apart.

    .venv/bin/python -m bench.signin_timing [--samples 40]      # from the repository root

Starts a real gateway (`registry-gateway serve`) on loopback with the example policy plus a
few users of other hash kinds, an htpasswd file and a real slapd, then sends wrong
credentials for each case in turn (round robin, one keep-alive connection, a different
wrong password each time so that every one is really checked, the lockout limits and backoff
off so that none is refused), and prints each case's median of `--samples` and its ratio to
the slowest case's median.

Target (issue 12): every case within 10% of the slowest (ratio at least 0.90): an unknown
name, a wrong password for bcrypt of several costs and for argon2id, a password over 72
bytes, an htpasswd user, a user without a password, an LDAP user, a wrong robot secret and a
wrong personal access token.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import bcrypt
import httpx

from gateway.auth.credentials import ROBOT_PREFIX, TOKEN_PREFIX, new_secret, token_entry

from tests.support.gateway import Gateway, start_gateway
from tests.support.ldap import SERVICE_DN, SERVICE_PASSWORD, SUFFIX, Slapd, start_slapd

TARGET = 0.90  # each case's median over the slowest case's median, at least

# (case, user name, how its wrong password looks): `{i}` makes each one different.
CASES = [
    ("unknown user", "nobody-at-all", "wrong-{i}"),
    ("bcrypt-12 (policy)", "alice", "wrong-{i}"),
    ("bcrypt-12, 100-byte password", "alice", "{i:x<100}"),
    ("bcrypt-10 (policy)", "tenor", "wrong-{i}"),
    ("bcrypt-4 (policy)", "quick", "wrong-{i}"),
    ("argon2id (policy)", "bob", "wrong-{i}"),
    ("bcrypt-12 (htpasswd)", "hana", "wrong-{i}"),
    ("user without a password", "frank", "wrong-{i}"),
    ("LDAP user", "lara", "wrong-{i}"),
    ("robot, wrong secret", "ci-deploy", ROBOT_PREFIX + "{i:x<43}"),
    ("personal access token", "tina", TOKEN_PREFIX + "{i:x<43}"),
]


def _bcrypt(cost: int) -> str:
    return bcrypt.hashpw(b"the-right-password", bcrypt.gensalt(cost)).decode()


def start(root: Path) -> tuple[Gateway, Slapd]:
    """The gateway under test and the slapd it signs LDAP users in with."""
    slapd = start_slapd(root / "ldap")
    policies = root / "policies"
    gateway_root = root / "gateway"
    gateway_root.mkdir(parents=True)
    shutil.copytree(Path(__file__).resolve().parents[1] / "policies", policies)
    token = token_entry("tina", "laptop", new_secret(TOKEN_PREFIX))
    (policies / "bench-users.yaml").write_text(
        "users:\n"
        f'  tenor: {{password: "{_bcrypt(10)}"}}\n'
        f'  quick: {{password: "{_bcrypt(4)}"}}\n'
        "  frank: {}\n"
        "  tina:\n    tokens:\n" + token.split("tokens:\n", 1)[1]
    )
    htpasswd = root / "htpasswd"
    htpasswd.write_text(f"hana:{_bcrypt(12).replace('$2b$', '$2y$')}\n")
    args = [
        "--log-level", "warning",
        "--lockout-failures", "0",
        "--lockout-address-failures", "0",
        "--lockout-account-failures", "0",
        "--lockout-backoff", "0",
        "--htpasswd", str(htpasswd),
        "--ldap-url", slapd.url,
        "--ldap-bind-dn", SERVICE_DN,
        "--ldap-user-base", f"ou=people,{SUFFIX}",
        "--ldap-group-base", f"ou=groups,{SUFFIX}",
    ]  # fmt: skip
    env = {"REGISTRY_GATEWAY_LDAP_BIND_PASSWORD": SERVICE_PASSWORD}
    gateway = start_gateway(gateway_root, policies=policies, args=args, env=env)
    return gateway, slapd


def measure(gateway: Gateway, samples: int) -> dict[str, list[float]]:
    """Seconds per failed sign-in, per case, the cases taken in turn."""
    times: dict[str, list[float]] = {case: [] for case, _, _ in CASES}
    with httpx.Client(timeout=60) as client:
        client.get(f"{gateway.url}/healthz")
        for i in range(samples + 1):  # the first round warms up (and is dropped)
            for case, user, pattern in CASES:
                password = pattern.format(i=i)
                started = time.perf_counter()
                answer = client.get(
                    f"{gateway.url}/auth/token",
                    params={"service": gateway.service},
                    auth=(user, password),
                )
                elapsed = time.perf_counter() - started
                if answer.status_code != 401:
                    raise SystemExit(f"{case}: HTTP {answer.status_code}: {answer.text[:200]}")
                if i:
                    times[case].append(elapsed)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=40, help="failed sign-ins per case")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-signin-timing-"))
    gateway, slapd = start(root)
    try:
        times = measure(gateway, args.samples)
    finally:
        gateway.stop()
        slapd.stop()
    medians = {case: statistics.median(values) for case, values in times.items()}
    slowest = max(medians.values())
    print(f"failed sign-ins, median of {args.samples} per case, one connection, loopback")
    print(f"{'case':<30} {'median (ms)':>12} {'p90 (ms)':>9} {'/ slowest':>10}  verdict")
    misses = 0
    for case, median in medians.items():
        ratio = median / slowest
        p90 = statistics.quantiles(times[case], n=10)[-1]
        verdict = "PASS" if ratio >= TARGET else "MISS"
        misses += verdict == "MISS"
        print(f"{case:<30} {median * 1000:>12.1f} {p90 * 1000:>9.1f} {ratio:>10.3f}  {verdict}")
    print()
    print(
        f"every case within {1 - TARGET:.0%} of the slowest: "
        + ("PASS" if not misses else f"MISS ({misses} cases)")
    )


if __name__ == "__main__":
    main()
