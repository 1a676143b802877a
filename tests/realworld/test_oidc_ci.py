"""Keyless CI pushes, end to end: a CI issuer serving discovery and a JWKS over HTTP (GitHub's
and GitLab's claim sets), the real gateway, Debian's registry and skopeo with the job's JWT
as the password. Nothing mocked: the gateway fetches the issuer's keys as it would GitHub's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.clients import Skopeo, ok
from tests.support.fixtures import OciImage
from tests.support.gateway import Stack, refused, start_stack
from tests.support.oidc import CiIssuer, SigningKey, github_claims, gitlab_claims

AUD = "registry.example.com"
WORKLOADS = """
namespaces:
  acme: {visibility: private}
workloads:
  app-release:
    issuer: actions
    audience: registry.example.com
    claims:
      repository_id: "892374001"
      repository_owner_id: "1342004"
      ref: [refs/heads/main, "refs/tags/v*"]
    only: ["acme/app", "acme/app/**"]
  api-build:
    issuer: lab
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


@pytest.fixture(scope="module")
def issuers() -> Iterator[tuple[CiIssuer, CiIssuer]]:
    github, gitlab = CiIssuer(), CiIssuer(keys=[SigningKey.make("lab-1", "ES256")])
    with github.serve(), gitlab.serve():
        yield github, gitlab


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, issuers: tuple[CiIssuer, CiIssuer]
) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("oidc-ci")
    policies = root / "policies"
    policies.mkdir()
    (policies / "ci.yaml").write_text(WORKLOADS)
    github, gitlab = issuers
    env = {"REGISTRY_GATEWAY_OIDC_CI_ISSUERS": f"actions={github.url},lab={gitlab.url}"}
    running = start_stack(root, policies=policies, env=env)
    yield running
    running.stop()


def push(skopeo: Skopeo, image: OciImage, stack: Stack, repository: str, token: str) -> Any:
    return skopeo.copy(image.ref("v1"), stack.ref(f"{repository}:v1"), dest_creds=f"ci:{token}")


def audit_of(stack: Stack, subject: str) -> list[dict[str, Any]]:
    return [line for line in stack.gateway.audit() if line.get("oidc_subject") == subject]


def test_github_and_gitlab_jobs_push_with_their_own_token(
    stack: Stack, issuers: tuple[CiIssuer, CiIssuer], skopeo: Skopeo, oci_image: OciImage
) -> None:
    github, gitlab = issuers
    job = github.mint(github_claims(aud=AUD))
    ok(push(skopeo, oci_image, stack, "acme/app", job))
    ok(push(skopeo, oci_image, stack, "acme/api", gitlab.mint(gitlab_claims(aud=AUD))))
    # The release job's token reaches only what its workload's only: allows.
    assert refused(push(skopeo, oci_image, stack, "acme/other", job))
    lines = audit_of(stack, "repo:acme/app:ref:refs/heads/main")
    assert lines and all(line["workload"] == "app-release" for line in lines)
    assert {line["oidc_issuer"] for line in lines} == {github.url}
    assert job not in stack.gateway.audit_path.read_text()
    assert job not in stack.gateway.logs()


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("other-repository", "matches no workload (closest: app-release"),
        ("other-ref", "whose conditions on ref it does not meet"),
        ("expired", "the token has expired"),
        ("wrong-audience", "audience names no workload"),
        ("alg-none", "algorithm 'none' is not accepted"),
        ("unknown-key", "no key 'intruder'"),
    ],
)
def test_tokens_that_must_not_push_are_refused_with_a_clear_401(
    stack: Stack,
    issuers: tuple[CiIssuer, CiIssuer],
    skopeo: Skopeo,
    oci_image: OciImage,
    case: str,
    why: str,
) -> None:
    github, _ = issuers
    claims = github_claims(aud=AUD)
    tokens = {
        "other-repository": lambda: github.mint(github_claims("acme/fork", "55501", aud=AUD)),
        "other-ref": lambda: github.mint(github_claims(ref="refs/heads/feature", aud=AUD)),
        "expired": lambda: github.mint(claims, lifetime=-300),
        "wrong-audience": lambda: github.mint(github_claims(aud="https://github.com/acme")),
        "alg-none": lambda: github.unsigned(claims),
        "unknown-key": lambda: github.mint(claims, key=SigningKey.make("intruder")),
    }
    token = tokens[case]()
    assert refused(push(skopeo, oci_image, stack, "acme/app", token))
    answer = httpx.get(
        f"{stack.gateway.url}/auth/token",
        params={"service": stack.gateway.service, "scope": "repository:acme/app:pull,push"},
        auth=("ci", token),
    )
    assert answer.status_code == 401
    message = answer.json()["errors"][0]["message"]
    assert why in message
    sub = (  # the subject the refusal names is the token's own
        "repo:acme/fork:ref:refs/heads/main"
        if case == "other-repository"
        else "repo:acme/app:ref:refs/heads/feature"
        if case == "other-ref"
        else claims["sub"]
    )
    assert f"issuer {github.url}" in message and f"subject {sub}" in message
    lines = [line for line in audit_of(stack, sub) if line.get("status") == 401]
    assert lines and all("workload" not in line for line in lines)
    assert lines[-1]["oidc_issuer"] == github.url
    assert token not in stack.gateway.audit_path.read_text()


def test_unknown_kids_under_load_fetch_the_keys_once(
    stack: Stack, issuers: tuple[CiIssuer, CiIssuer], tmp_path: Path
) -> None:
    github, _ = issuers
    before = github.jwks_fetches
    tokens = [github.mint(github_claims(aud=AUD), key=SigningKey.make(f"k{i}")) for i in range(5)]
    with httpx.Client(timeout=30) as client:
        for i in range(100):
            answer = client.get(
                f"{stack.gateway.url}/auth/token",
                params={"service": stack.gateway.service},
                auth=("ci", tokens[i % 5]),
            )
            assert answer.status_code == 401
    assert github.jwks_fetches - before <= 1
