"""What a keyless CI push's token requests cost, against a robot's, and that unknown `kid`s
cannot make a JWKS fetch storm.

    .venv/bin/python -m bench.oidc [--requests 40] [--rounds 5]      # from the repository root

Starts a CI issuer (discovery and JWKS over HTTP on loopback, GitHub's claim set) and one real
gateway (`registry-gateway serve`) whose policy has a workload and a robot with the same grant.
Then, on one keep-alive connection, rounds of sequential token requests, each for another
repository (so that each is decided and signed; only the sign-in differs):

- robot: the robot's secret (the floor, measured in the same run);
- keyless push: one job token for the whole run, as `docker push` sends it (JWKS cached; the
  first request verifies the signature, later ones are remembered until the token expires);
- fresh token each request (for information): every request verifies an RS256 signature.

Verdict (issue 14): the keyless push's median latency is at most 1.2x the robot's. Then 400
requests with tokens signed by unknown keys, 32 at a time: the issuer's JWKS must be fetched
at most once (the gateway refetches at most once per issuer per 30 s).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.support.gateway import Gateway, start_gateway
from tests.support.oidc import CiIssuer, SigningKey, github_claims

TARGET = 1.2
ROBOT_SECRET = "bench-robot-secret"
AUD = "registry.example.com"


def policy(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(ROBOT_SECRET.encode()).hexdigest()
    (directory / "bench.yaml").write_text(
        f"""
robots:
  builder: {{token_sha256: {digest}}}
namespaces:
  acme: {{visibility: private}}
workloads:
  app-release:
    issuer: ci
    audience: {AUD}
    claims: {{repository_id: "892374001", ref: refs/heads/main}}
grants:
  - to: [robot:builder, workload:app-release]
    repositories: ["acme/**"]
    actions: [pull, push]
"""
    )
    return directory


def burst(
    client: httpx.Client,
    gateway: Gateway,
    auth: tuple[str, str] | None,
    tokens: list[str] | None,
    count: int,
    tag: str,
) -> list[float]:
    times = []
    for i in range(count):
        params = {"service": gateway.service, "scope": f"repository:acme/{tag}-{i}:pull,push"}
        credentials = auth if tokens is None else ("ci", tokens[i])
        started = time.perf_counter()
        answer = client.get(f"{gateway.url}/auth/token", params=params, auth=credentials)
        times.append(time.perf_counter() - started)
        if answer.status_code != 200:
            raise SystemExit(f"HTTP {answer.status_code}: {answer.text[:300]}")
    return times


async def storm(gateway: Gateway, tokens: list[str], total: int, parallel: int) -> int:
    refused = 0
    limit = asyncio.Semaphore(parallel)
    async with httpx.AsyncClient(timeout=30) as client:

        async def one(i: int) -> None:
            nonlocal refused
            async with limit:
                answer = await client.get(
                    f"{gateway.url}/auth/token",
                    params={"service": gateway.service},
                    auth=("ci", tokens[i % len(tokens)]),
                )
                refused += answer.status_code == 401

        await asyncio.gather(*(one(i) for i in range(total)))
    return refused


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    issuer = CiIssuer()
    with issuer.serve(), tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        gateway = start_gateway(
            root / "gateway",
            policies=policy(root / "policies"),
            env={"REGISTRY_GATEWAY_OIDC_CI_ISSUERS": f"ci={issuer.url}"},
        )
        try:
            job = issuer.mint(github_claims(aud=AUD), lifetime=3600)
            results: dict[str, list[float]] = {"robot": [], "keyless push": [], "fresh token": []}
            with httpx.Client(timeout=60) as client:
                client.get(f"{gateway.url}/healthz")
                burst(client, gateway, None, [job], 1, "warm")  # the first fetch of the JWKS
                for r in range(args.rounds):  # interleaved: the machine's noise hits all alike
                    n = args.requests
                    results["robot"] += burst(
                        client, gateway, ("builder", ROBOT_SECRET), None, n, f"r{r}"
                    )
                    results["keyless push"] += burst(client, gateway, None, [job] * n, n, f"k{r}")
                    fresh = [issuer.mint(github_claims(aud=AUD)) for _ in range(n)]
                    results["fresh token"] += burst(client, gateway, None, fresh, n, f"f{r}")
            floor = statistics.median(results["robot"])
            print(f"{'case':<16} {'median ms':>10} {'p90 ms':>8} {'x robot':>8}")
            for case, times in results.items():
                median = statistics.median(times)
                p90 = statistics.quantiles(times, n=10)[-1]
                print(
                    f"{case:<16} {median * 1000:>10.3f} {p90 * 1000:>8.3f} {median / floor:>8.2f}"
                )
            ratio = statistics.median(results["keyless push"]) / floor
            verdict = "PASS" if ratio <= TARGET else "MISS"
            print(f"keyless push / robot = {ratio:.2f} (target <= {TARGET}): {verdict}")

            before = issuer.jwks_fetches
            strangers = [
                issuer.mint(github_claims(aud=AUD), key=SigningKey.make(f"x{i}")) for i in range(8)
            ]
            started = time.perf_counter()
            refused = asyncio.run(storm(gateway, strangers, 400, 32))
            took = time.perf_counter() - started
            fetched = issuer.jwks_fetches - before
            storm_verdict = "PASS" if fetched <= 1 and refused == 400 else "MISS"
            print(
                f"unknown kids: 400 requests in {took:.1f} s, {refused} refused, "
                f"{fetched} JWKS fetch(es) (at most 1 per 30 s): {storm_verdict}"
            )
            return 0 if verdict == storm_verdict == "PASS" else 1
        finally:
            gateway.stop()


if __name__ == "__main__":
    sys.exit(main())
