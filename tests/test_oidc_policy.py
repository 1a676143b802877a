"""Workloads in the policy's own tests, in `check` and in `diff`."""

from __future__ import annotations

from pathlib import Path

from gateway.policy.check import check_directory
from gateway.policy.diff import diff_policies
from gateway.policy.diffrender import render_markdown
from gateway.policy.load import load_texts
from gateway.policy.workloads import trusted_issuers

POLICY = """
namespaces:
  acme: {visibility: private}
teams:
  builders:
    contributors: [workload:app-release]
    oidc_groups: [platform-devs]
  acme-owners:
    owners: []
workloads:
  app-release:
    issuer: github
    audience: registry.example.com
    claims:
      repository_id: "892374001"
      ref: [refs/heads/main, "refs/tags/v*"]
  api-build:
    issuer: lab
    audience: registry.example.com
    claims: {project_id: 4711, ref_protected: true}
grants:
  - to: [team:builders]
    repositories: ["acme/app/**"]
    actions: [pull, push]
  - to: [workload:api-build]
    repositories: [acme/api]
    actions: [pull, push]
restrictions:
  - repositories: [acme/app/prod]
    actions: [push]
    only: [workload:app-release]
"""
CASES = """
- as: workload:app-release
  scope: repository:acme/app/prod:pull,push
  granted: [pull, push]
- as: {oidc: {iss: "https://token.actions.githubusercontent.com", aud: registry.example.com,
              claims: {repository_id: "892374001", ref: refs/tags/v2.0}}}
  scope: repository:acme/app/x:pull,push
  granted: [pull, push]
- description: a fork's job (another repository_id) is no workload at all
  as: {oidc: {iss: github, claims: {repository_id: "1", ref: refs/heads/main}}}
  scope: repository:acme/app/x:pull,push
  granted: []
- as: {oidc: {iss: lab, claims: {project_id: 4711, ref_protected: "true"}}}
  scope: repository:acme/api:push
  granted: [push]
"""


def write(tmp_path: Path, policy: str = POLICY, cases: str = CASES) -> Path:
    (tmp_path / "tests").mkdir(parents=True, exist_ok=True)
    (tmp_path / "access.yaml").write_text(policy)
    (tmp_path / "tests" / "ci.yaml").write_text(cases)
    return tmp_path


def test_policy_tests_state_workloads_by_name_and_by_token_claims(tmp_path: Path) -> None:
    report = check_directory(
        write(tmp_path), issuers=trusted_issuers("lab=https://gitlab.example.com")
    )
    assert [str(p) for p in report.problems] == []
    assert report.tests_run == 4 and report.tests_failed == 0


def test_a_binding_that_matches_no_workload_fails_a_test_expecting_rights(tmp_path: Path) -> None:
    cases = """
- as: {oidc: {iss: github, claims: {repository_id: "892374001", ref: refs/heads/dev}}}
  scope: repository:acme/app/x:push
  granted: [push]
"""
    report = check_directory(
        write(tmp_path, cases=cases), issuers=trusted_issuers("lab=https://l.example")
    )
    assert report.tests_failed == 1
    assert "no workload matches this token" in str(report.problems[0])


def test_check_reports_an_issuer_the_gateway_does_not_trust(tmp_path: Path) -> None:
    report = check_directory(write(tmp_path), issuers=trusted_issuers(""))
    messages = [p.message for p in report.problems]
    assert any("workload 'api-build': unknown issuer 'lab'" in m for m in messages), messages
    assert not report.ok


def test_diff_reports_workloads_gained_and_lost_and_their_rights() -> None:
    old = load_texts({"p/a.yaml": POLICY}, revision="old").policy
    changed = POLICY.replace('repository_id: "892374001"', 'repository_id: "892374002"')
    changed = changed.replace("  api-build:\n", "  api-build-2:\n").replace(
        "workload:api-build]", "workload:api-build-2]"
    )
    new = load_texts({"p/a.yaml": changed}, revision="new").policy
    result = diff_policies(old, new)
    notices = {(n.kind, n.name, n.change) for n in result.attention}
    assert ("workload", "workload:api-build", "removed") in notices
    assert ("workload", "workload:api-build-2", "added") in notices
    assert ("workload", "workload:app-release", "changed") in notices
    subjects = {s.subject: s for s in result.subjects}
    assert "workload:api-build" in subjects and "workload:api-build-2" in subjects
    text = render_markdown(result)
    assert "workload `workload:app-release` takes other CI jobs" in text
