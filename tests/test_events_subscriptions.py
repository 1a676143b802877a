"""The policy's `webhooks:` section: what `check` refuses (each at file:line:column), which
subscriptions get an event, and where secrets come from (never the policy)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gateway.events import model
from gateway.events.subscriptions import SecretUnavailable, Subscriptions, read_secret
from gateway.policy import yamlnodes as yn
from gateway.policy.model import Location, Policy, Settings, Webhook
from gateway.policy.webhooks import merge_webhooks, read_webhooks

GOOD = """\
webhooks:
  deploy:
    url: https://ci.example.com/hooks/registry
    events: [image.pushed, registry-gateway.tag.deleted]
    repositories: [platform/**]
    secret_env: DEPLOY_HOOK_SECRET
    format: cloudevents
    description: deploy on push
  security:
    url: https://siem.example.com/in
    events: ["*"]
    secret_file: /run/secrets/siem-hook
"""


def read(text: str, file: str = "hooks.yaml") -> tuple[dict[str, Webhook], list[str]]:
    problems: list[str] = []

    def report(where: Location, severity: str, message: str) -> None:
        problems.append(f"{where}: {severity}: {message}")

    root = yn.compose(text, file)
    assert isinstance(root, yn.MappingNode)
    [(_, node)] = [(k, v) for k, v in root.value if k.value == "webhooks"]
    return read_webhooks(node, file, report), problems


def one_problem(text: str) -> str:
    found, problems = read(text)
    assert not found
    assert len(problems) == 1, problems
    return problems[0]


def hook(body: str) -> str:
    return "webhooks:\n  h:\n" + "".join(f"    {line}\n" for line in body.splitlines())


BASE = "url: https://example.com/h\nevents: [image.pushed]\nsecret_env: H_SECRET\n"


def test_a_good_section_reads_whole() -> None:
    found, problems = read(GOOD)
    assert problems == []
    deploy, security = found["deploy"], found["security"]
    assert deploy.events == {"image.pushed", "tag.deleted"}
    assert deploy.repositories == ("platform/**",)
    assert deploy.secret_env == "DEPLOY_HOOK_SECRET" and deploy.secret_file == ""
    assert deploy.location == Location("hooks.yaml", 2, 3)
    assert len(security.events) == 8  # '*' without repositories: every type
    assert security.secret_file == "/run/secrets/siem-hook"


def test_an_unknown_event_type_is_an_error_at_its_place() -> None:
    problem = one_problem(hook(BASE.replace("[image.pushed]", "[image.pushd]")))
    assert problem.startswith("hooks.yaml:4:14: error: webhook 'h': unknown event type")
    assert "did you mean 'image.pushed'?" in problem


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://example.com/h", "must be an http:// or https:// URL"),
        ("https:///nohost", "must be an http:// or https:// URL"),
        ("https://user:pw@example.com/h", "must not carry a user name or password"),
        ("https://example.com/h?token=abc", "looks like a secret"),
        ("https://example.com/h#x", "must not have a #fragment"),
        ("https://example.com:99999/h", "is not a valid URL"),
    ],
)
def test_bad_urls_are_errors(url: str, says: str) -> None:
    problem = one_problem(hook(BASE.replace("https://example.com/h", url)))
    assert problem.startswith("hooks.yaml:3:10: error:")
    assert says in problem


def test_a_plain_http_url_elsewhere_than_loopback_is_a_warning() -> None:
    found, problems = read(hook(BASE.replace("https://", "http://")))
    assert "h" in found
    assert problems == [
        "hooks.yaml:3:10: warning: webhook 'h': url uses plain http: events are signed but "
        "anyone on the way can read them"
    ]


@pytest.mark.parametrize("key", ["secret", "token", "password", "hmac_secret"])
def test_a_secret_written_in_the_policy_is_an_error(key: str) -> None:
    found, problems = read(hook(BASE + f"{key}: hunter2\n"))
    assert not found
    assert any(
        p.startswith("hooks.yaml:6:5: error:") and "must not be written in the policy" in p
        for p in problems
    ), problems
    assert all("hunter2" not in p for p in problems)


def test_exactly_one_secret_source() -> None:
    neither = one_problem(hook(BASE.replace("secret_env: H_SECRET\n", "")))
    assert "needs exactly one of secret_env" in neither
    both = one_problem(hook(BASE + "secret_file: /run/secrets/h\n"))
    assert "needs exactly one of secret_env" in both
    relative = one_problem(hook(BASE.replace("secret_env: H_SECRET", "secret_file: secrets/h")))
    assert "secret_file must be an absolute path" in relative


def test_a_global_event_in_a_subscription_with_repositories_is_an_error() -> None:
    problem = one_problem(
        hook(BASE.replace("[image.pushed]", "[policy.changed]") + "repositories: [a/*]\n")
    )
    assert "policy.changed concerns no repository" in problem


def test_harbor_format_only_for_the_events_harbor_has() -> None:
    problem = one_problem(
        hook(BASE.replace("[image.pushed]", "[image.pushed, token.denied]") + "format: harbor\n")
    )
    assert "format harbor has no payload for token.denied" in problem


def test_unknown_keys_and_bad_patterns() -> None:
    problem = one_problem(hook(BASE + "evnts: [x]\n"))
    assert "unknown key 'evnts'" in problem and "did you mean 'events'?" in problem
    problem = one_problem(hook(BASE + "repositories: ['a/**/**']\n"))
    assert "'**/**' is redundant" in problem


def test_a_name_defined_in_two_files_is_an_error() -> None:
    first, _ = read(hook(BASE), "a.yaml")
    second, _ = read(hook(BASE), "b.yaml")
    problems: list[str] = []
    merged = merge_webhooks([first, second], lambda w, s, m: problems.append(f"{w}: {m}"))
    assert [w.location.file for w in merged] == ["a.yaml"]
    assert problems == ["b.yaml:2:3: webhook 'h' is defined twice (first at a.yaml:2:3)"]


def test_subscriptions_match_by_type_and_pattern() -> None:
    found, _ = read(GOOD)
    policy = Policy(Settings(), {}, {}, {}, {}, (), (), webhooks=tuple(found.values()))
    subscriptions = Subscriptions(policy)
    assert subscriptions.wants("image.pushed") and subscriptions.wants("key.rotated")

    def names(repository: str | None, kind: str = "image.pushed") -> list[str]:
        event = model.Event("id", kind, "t", repository, {})
        return sorted(w.name for w in subscriptions.matching(event))

    assert names("platform/api") == ["deploy", "security"]
    assert names("platform") == ["deploy", "security"]  # platform/** matches platform
    assert names("other/api") == ["security"]
    assert names(None, "key.rotated") == ["security"]
    assert not Subscriptions(None).wants("image.pushed")


def test_secrets_come_from_the_environment_or_a_file(tmp_path: Path) -> None:
    found, _ = read(GOOD)
    deploy = found["deploy"]
    assert read_secret(deploy, {"DEPLOY_HOOK_SECRET": "abc"}) == b"abc"
    with pytest.raises(SecretUnavailable, match="DEPLOY_HOOK_SECRET is not set"):
        read_secret(deploy, {})
    path = tmp_path / "secret"
    path.write_text("from-a-file\n")
    from_file = dataclasses.replace(found["security"], secret_file=str(path))
    assert read_secret(from_file, {}) == b"from-a-file"
    path.write_text("")
    with pytest.raises(SecretUnavailable, match="is empty"):
        read_secret(from_file, {})


def test_check_reports_webhook_problems_with_the_rest_of_the_policy(tmp_path: Path) -> None:
    from gateway.policy.check import check_directory

    (tmp_path / "hooks.yaml").write_text(
        GOOD.replace("secret_env: DEPLOY_HOOK_SECRET", "secret: x")
    )
    report = check_directory(tmp_path)
    assert not report.ok
    problems = [str(p) for p in report.problems]
    where = tmp_path / "hooks.yaml"
    assert any(p.startswith(f"{where}:6:5: error: webhook 'deploy': a secret") for p in problems)
    assert any(
        p.startswith(f"{where}:2:3: error: webhook 'deploy': needs exactly one") for p in problems
    )


def test_the_loaded_policy_carries_its_webhooks() -> None:
    from gateway.policy.load import load_texts

    policy = load_texts({"a.yaml": GOOD}).policy
    assert [w.name for w in policy.webhooks] == ["deploy", "security"]
