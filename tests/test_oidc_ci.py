"""CI jobs' OIDC ID tokens: the verifier, workload matching, and the token endpoint answering
a job's token as a password (issuer served through an httpx transport: no process)."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.auth.oidc import OidcRefused, Verifier
from gateway.auth.workloads import Workloads
from gateway.config import load_settings
from gateway.policy.load import PolicyError, load_texts
from gateway.services import Services

from tests.support.gateway import jwt_parts
from tests.support.oidc import CiIssuer, SigningKey, github_claims, gitlab_claims

ISSUER = "http://127.0.0.1:8399"
SERVICE = "unit-registry"
Query = list[tuple[str, str | int | float | bool | None]]  # what TestClient takes as params
AUD = "registry.example.com"

POLICY = """
users:
  alice: {}
namespaces:
  acme: {visibility: private}
workloads:
  app-release:
    issuer: ci
    audience: registry.example.com
    claims:
      repository_id: "892374001"
      ref: [refs/heads/main, "refs/tags/v*"]
    only: [acme/app, acme/app/**]
  api-build:
    issuer: ci-gitlab
    audience: registry.example.com
    claims:
      project_id: 4711
      ref_protected: true
grants:
  - to: [workload:app-release]
    repositories: ["acme/**"]
    actions: [pull, push]
  - to: [workload:api-build]
    repositories: [acme/api]
    actions: [pull, push]
"""


def issuer() -> CiIssuer:
    return CiIssuer(url=ISSUER)


def verifier_for(ci: CiIssuer, **options: Any) -> Verifier:
    return Verifier([ci.url], client=httpx.AsyncClient(transport=ci.transport()), **options)


# -- the verifier --------------------------------------------------------------------------


def test_a_token_signed_by_a_published_key_verifies_with_rs256_and_es256() -> None:
    ci = issuer()
    verifier = verifier_for(ci)
    for key in ci.keys:
        token = ci.mint(github_claims(), key=key)
        found = asyncio.run(verifier.verify(token, audience=AUD))
        assert found.issuer == ISSUER
        assert found.subject == "repo:acme/app:ref:refs/heads/main"
        assert found.claims["repository_id"] == "892374001"


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda ci: ci.mint(github_claims(), lifetime=-120), "expired"),
        (lambda ci: ci.mint(github_claims(), issued=time.time() + 600), "not valid yet"),
        (lambda ci: ci.mint(github_claims(aud="someone-else")), "another audience"),
        (lambda ci: ci.unsigned(github_claims()), "algorithm 'none' is not accepted"),
        (lambda ci: ci.mint(github_claims(), key=SigningKey.make("stranger")), "no key"),
        (
            lambda ci: ci.mint(
                github_claims(), key=SigningKey("ci-rsa-1", "RS256", SigningKey.make("x").private)
            ),
            "signature does not verify",
        ),
        (lambda ci: "eyJhbGciOiJIUzI1NiJ9.e30.c2ln", "algorithm 'HS256' is not accepted"),
    ],
    ids=["expired", "future", "audience", "alg-none", "unknown-key", "forged", "hs256"],
)
def test_bad_tokens_are_refused_saying_why(make: Any, why: str) -> None:
    ci = issuer()
    verifier = verifier_for(ci)
    with pytest.raises(OidcRefused) as refused:
        asyncio.run(verifier.verify(make(ci), audience=AUD))
    assert why in refused.value.message


def test_an_hmac_token_keyed_with_the_public_key_is_refused() -> None:
    """The old confusion attack: HS256 with the issuer's public key as the secret."""
    import base64
    import hashlib
    import hmac

    ci = issuer()

    def part(value: bytes) -> str:
        return base64.urlsafe_b64encode(value).rstrip(b"=").decode()

    header = part(json.dumps({"alg": "HS256", "kid": ci.keys[0].kid}).encode())
    body = part(json.dumps({**github_claims(), "iss": ISSUER, "exp": time.time() + 60}).encode())
    secret = json.dumps(ci.keys[0].jwk()).encode()
    signature = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
    with pytest.raises(OidcRefused, match="HS256"):
        asyncio.run(verifier_for(ci).verify(f"{header}.{body}.{part(signature)}"))


def test_a_token_of_an_untrusted_issuer_is_refused_without_a_fetch() -> None:
    ci = issuer()
    other = CiIssuer(url="http://127.0.0.1:8400")
    verifier = verifier_for(ci)
    with pytest.raises(OidcRefused, match="not trusted") as refused:
        asyncio.run(verifier.verify(other.mint(github_claims())))
    assert refused.value.issuer == "http://127.0.0.1:8400"
    assert ci.jwks_fetches == 0


def test_unknown_kids_fetch_the_keys_at_most_once_per_interval() -> None:
    ci = issuer()
    now = [1000.0]
    verifier = verifier_for(ci, monotonic=lambda: now[0])
    asyncio.run(verifier.verify(ci.mint(github_claims())))
    assert ci.jwks_fetches == 1

    async def storm() -> list[BaseException | Any]:
        tokens = [ci.mint(github_claims(), key=SigningKey.make(f"k{i}")) for i in range(3)]
        return await asyncio.gather(
            *(verifier.verify(tokens[i % 3]) for i in range(200)), return_exceptions=True
        )

    now[0] += 31
    results = asyncio.run(storm())
    assert all(isinstance(r, OidcRefused) for r in results)
    assert ci.jwks_fetches == 2  # one for the whole storm
    now[0] += 10
    asyncio.run(storm())
    assert ci.jwks_fetches == 2  # not again within 30 s
    # A key rotated in at the issuer is found by the next allowed fetch.
    rotated = SigningKey.make("ci-rsa-2")
    ci.keys.append(rotated)
    now[0] += 30
    found = asyncio.run(verifier.verify(ci.mint(github_claims(), key=rotated)))
    assert found.subject.startswith("repo:acme/app")
    assert ci.jwks_fetches == 3


def test_an_insecure_issuer_url_is_refused() -> None:
    with pytest.raises(ValueError, match="https"):
        Verifier(["http://ci.example.com"])


# -- workloads ------------------------------------------------------------------------------


def engine() -> Any:
    from gateway.policy.engine import Engine

    return Engine(load_texts({"p/a.yaml": POLICY}).policy)


def workloads_for(ci: CiIssuer, gitlab: CiIssuer | None = None) -> Workloads:
    issuers = {"ci": ci.url}
    urls = [ci.url]
    if gitlab is not None:
        issuers["ci-gitlab"] = gitlab.url
        urls.append(gitlab.url)

    def handle(request: httpx.Request) -> httpx.Response:
        source = gitlab if gitlab is not None and request.url.port == 8401 else ci
        status, body = source.answer(request.url.path)
        return httpx.Response(status, content=body)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    return Workloads(Verifier(urls, client=client), issuers)


def test_a_job_signs_in_as_the_one_workload_its_claims_match() -> None:
    ci, lab = issuer(), CiIssuer(url="http://127.0.0.1:8401")
    workloads = workloads_for(ci, lab)
    found = asyncio.run(workloads.sign_in(engine(), ci.mint(github_claims(ref="refs/tags/v1.2"))))
    assert found.workload.name == "app-release"
    found = asyncio.run(workloads.sign_in(engine(), lab.mint(gitlab_claims())))
    assert found.workload.name == "api-build"


@pytest.mark.parametrize(
    ("claims", "why"),
    [
        (
            github_claims(repository_id="1"),
            "closest: app-release, whose conditions on repository_id",
        ),
        (github_claims(ref="refs/heads/feature"), "conditions on ref"),
        (github_claims(aud="other"), "audience names no workload"),
    ],
    ids=["other-repository", "other-ref", "other-audience"],
)
def test_a_job_matching_no_workload_is_refused_naming_what_differs(
    claims: dict[str, Any], why: str
) -> None:
    ci = issuer()
    with pytest.raises(OidcRefused, match=r"matches no workload|audience") as refused:
        asyncio.run(workloads_for(ci).sign_in(engine(), ci.mint(claims)))
    assert why in refused.value.message
    assert refused.value.subject == claims["sub"]


def test_policy_decides_with_only_confining_a_workload() -> None:
    from gateway.policy.model import Subject

    e = engine()
    job = Subject("workload", "app-release")
    assert e.granted(job, "repository", "acme/app", ["pull", "push"]) == ("pull", "push")
    assert e.granted(job, "repository", "acme/other", ["pull", "push"]) == ()
    decision = e.decide(job, "repository", "acme/other", ["push"])
    assert "confined to acme/app" in str(decision.actions[0].reasons[0])


# -- the token endpoint ----------------------------------------------------------------------


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    policies = tmp_path / "policies"
    shutil.copytree("policies", policies)
    (policies / "ci.yaml").write_text(POLICY.replace("users:\n  alice: {}\n", ""))
    settings = load_settings(
        {
            "policies": str(policies),
            "data_dir": str(tmp_path / "data"),
            "service": SERVICE,
            "audit_log": str(tmp_path / "audit.log"),
        },
        environ={"REGISTRY_GATEWAY_OIDC_CI_ISSUERS": f"ci={ISSUER}"},
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def services_of(client: TestClient) -> Services:
    app = client.app
    assert isinstance(app, Starlette)
    services: Services = app.state.services
    return services


def test_the_token_endpoint_takes_a_job_token_as_the_password(
    client: TestClient, tmp_path: Path
) -> None:
    ci = issuer()
    authenticator = services_of(client).authenticator
    assert authenticator.workloads is not None
    authenticator.workloads = workloads_for(ci)
    job = ci.mint(github_claims())
    query: Query = [("service", SERVICE), ("scope", "repository:acme/app:pull,push")]
    answer = client.get("/auth/token", params=query, auth=("ci", job))
    assert answer.status_code == 200, answer.text
    claims = jwt_parts(answer.json()["token"])[1]
    assert claims["sub"] == "app-release"
    assert claims["access"] == [
        {"type": "repository", "name": "acme/app", "actions": ["pull", "push"]}
    ]
    # docker login asks for a refresh token: a job's token lives minutes, none is made.
    offline: Query = [("service", SERVICE), ("offline_token", "true")]
    login = client.get("/auth/token", params=offline, auth=("x", job))
    assert login.status_code == 200 and "refresh_token" not in login.json()

    other = ci.mint(github_claims(repository="acme/evil", repository_id="666"))
    refused = client.get("/auth/token", params=query, auth=("ci", other))
    assert refused.status_code == 401
    text = refused.json()["errors"][0]["message"]
    assert "matches no workload" in text
    assert f"issuer {ISSUER}" in text and "subject repo:acme/evil:ref:refs/heads/main" in text
    lines = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    granted, denied = lines[0], lines[-1]
    assert granted["workload"] == "app-release" and granted["oidc_issuer"] == ISSUER
    assert granted["subject"] == "workload:app-release"
    assert denied["oidc_subject"] == "repo:acme/evil:ref:refs/heads/main"
    assert "workload" not in denied
    assert all(job not in line and other not in line for line in map(json.dumps, lines))


def test_policy_rejects_workloads_that_bind_nothing() -> None:
    bad = """
workloads:
  loose:
    issuer: github
    audience: r
    claims: {sub: "*"}
  numeric:
    issuer: github
    audience: r
    claims: {repository_id: acme, ref: main}
grants:
  - to: [workload:ghost]
    repositories: [x]
    actions: [pull]
"""
    with pytest.raises(PolicyError) as failed:
        load_texts({"p/w.yaml": bad})
    text = str(failed.value)
    assert "a sub pattern that matches everything" in text
    assert "repository_id' value 'acme' can never match: repository_id is a number" in text
    assert "GitHub's ref is a full reference" in text
    assert "workload:ghost refers to no defined workload" in text
