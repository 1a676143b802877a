"""`doctor`'s verdicts without a registry: the challenge parser, the clock rule (a real skew of
the registry's own clock cannot be made here: Go ignores libfaketime, so the realworld test
skews the gateway's instead), the registry config comparisons, and `registry-config`'s
signingalgorithms. tests/realworld/test_doctor.py runs doctor against the real registry."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.auth.keys import KeyStore
from gateway.cli import main
from gateway.config import Secret, Settings, load_settings
from gateway.doctor import Reply, render_json, render_text
from gateway.doctorchecks import (
    CheckResult,
    RegistryConfig,
    RegistryConfigError,
    clock_verdict,
    notification_problems,
    parse_challenge,
    read_registry_config,
    shown_url,
    token_config_problems,
)

SECRET = "the-notification-secret"


def settings(**changes: object) -> Settings:
    base = load_settings(
        {"service": "registry.example.com", "issuer": "gw", "data_dir": "/srv/gw"}, environ={}
    )
    return base.replace(notification_secret=Secret(SECRET), **changes)


def registry_config(tmp_path: Path, text: str) -> RegistryConfig:
    path = tmp_path / "config.yml"
    path.write_text(text)
    return read_registry_config(path)


# -- the challenge -------------------------------------------------------------------------


def test_a_bearer_challenge_is_read_with_quoted_commas_and_escapes() -> None:
    found = parse_challenge(
        [
            'Basic realm="x"',
            'Bearer realm="https://gw.example/auth/token",service="reg, one",'
            'scope="repository:a/b:pull",error="invalid_token", note="say \\"hi\\""',
        ]
    )
    assert found is not None
    assert found.scheme == "Bearer"
    assert found.realm == "https://gw.example/auth/token"
    assert found.service == "reg, one"
    assert found.error == "invalid_token"
    assert found.params["note"] == 'say "hi"'


def test_a_challenge_of_another_scheme_or_none_at_all() -> None:
    basic = parse_challenge(['Basic realm="Registry Realm"'])
    assert basic is not None and basic.scheme == "Basic" and basic.service == ""
    assert parse_challenge([]) is None
    assert parse_challenge([""]) is None


# -- the clock -----------------------------------------------------------------------------


def test_clocks_within_two_seconds_agree() -> None:
    verdict = clock_verdict(1.2, 0.4, token_ttl=300)
    assert verdict.status == "ok"
    assert verdict.detail == "the registry's clock agrees with the gateway's"


def test_a_small_skew_is_ok_and_measured() -> None:
    verdict = clock_verdict(-20.0, None, token_ttl=300)
    assert verdict.status == "ok"
    assert "20 s behind this host's" in verdict.detail


def test_a_registry_more_than_the_leeway_behind_refuses_every_token() -> None:
    verdict = clock_verdict(0.0, 150.0, token_ttl=300)
    assert verdict.status == "FAIL"
    assert "the registry's clock is 150 s behind the gateway's" in verdict.detail
    assert "not valid yet for its first 90 s" in verdict.detail
    assert verdict.fix is not None and "NTP" in verdict.fix


def test_a_registry_behind_within_the_leeway_still_fails_for_its_thin_margin() -> None:
    verdict = clock_verdict(-45.0, 0.0, token_ttl=300)
    assert verdict.status == "FAIL"
    assert "within its 60 s leeway by 15 s only" in verdict.detail


def test_a_registry_ahead_expires_tokens_early_or_on_arrival() -> None:
    early = clock_verdict(100.0, 0.0, token_ttl=300)
    assert early.status == "FAIL" and "tokens expire 100 s early, after 260 s" in early.detail
    dead = clock_verdict(400.0, 0.0, token_ttl=300)
    assert dead.status == "FAIL" and "every token has expired when it arrives" in dead.detail


def test_the_date_header_gives_the_clock_offset() -> None:
    headers = httpx.Headers({"date": "Sun, 06 Nov 1994 08:49:37 GMT"})
    asked = 784111777.0  # 08:49:37 exactly
    assert Reply(200, headers, b"", asked).offset() == pytest.approx(0.5)
    assert Reply(200, headers, b"", asked - 120).offset() == pytest.approx(120.5)
    assert Reply(200, httpx.Headers(), b"", asked).offset() is None
    assert Reply(200, httpx.Headers({"date": "yesterday"}), b"", asked).offset() is None


# -- the token and the registry's config ---------------------------------------------------


def test_a_config_that_agrees_has_no_problem(tmp_path: Path) -> None:
    config = registry_config(
        tmp_path,
        "auth:\n  token:\n    realm: http://gw/auth/token\n    service: registry.example.com\n"
        "    issuer: gw\n    rootcertbundle: /b.pem\n    signingalgorithms: [ES256]\n",
    )
    problems = token_config_problems(
        settings(), config, algorithm="ES256", kid="K", bundle_holds_key=True
    )
    assert problems == []


def test_each_mismatch_of_the_config_is_named_with_its_fix(tmp_path: Path) -> None:
    config = registry_config(
        tmp_path,
        "auth:\n  token:\n    realm: http://gw/auth/token\n    service: other\n"
        "    issuer: someone\n    rootcertbundle: /b.pem\n    signingalgorithms: [RS256]\n",
    )
    problems = token_config_problems(
        settings(), config, algorithm="ES256", kid="KID", bundle_holds_key=False
    )
    whats = [p.what for p in problems]
    assert whats[0] == "the registry trusts issuer 'someone', but the gateway signs as 'gw'"
    assert "the registry's service is 'other'" in whats[1]
    assert (
        "rootcertbundle /b.pem does not hold the certificate of the gateway's signing key KID"
        in (whats[2])
    )
    assert "signingalgorithms ['RS256'] leave out ES256" in whats[3]
    assert "keys bundle --data-dir /srv/gw -o /b.pem" in problems[2].fix


def test_a_bundle_that_cannot_be_read_from_here_is_no_verdict(tmp_path: Path) -> None:
    config = registry_config(
        tmp_path,
        "auth: {token: {realm: r, service: registry.example.com, issuer: gw, "
        "rootcertbundle: /elsewhere.pem}}\n",
    )
    assert (
        token_config_problems(settings(), config, algorithm="ES256", kid="K", bundle_holds_key=None)
        == []
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("auth: [unclosed\n", "is not valid YAML"),
        ("- a list\n", "is not a registry configuration"),
    ],
)
def test_a_registry_config_that_is_not_one_is_refused(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(RegistryConfigError, match=message):
        registry_config(tmp_path, text)
    with pytest.raises(RegistryConfigError, match="cannot read"):
        read_registry_config(tmp_path / "missing.yml")


# -- notifications -------------------------------------------------------------------------


def endpoint_config(tmp_path: Path, authorization: str | None, **extra: object) -> RegistryConfig:
    endpoint: dict[str, object] = {"name": "gw", "url": "http://gw:5001/-/notifications", **extra}
    if authorization is not None:
        endpoint["headers"] = {"Authorization": [authorization]}
    return registry_config(tmp_path, yaml.safe_dump({"notifications": {"endpoints": [endpoint]}}))


def test_the_right_notification_endpoint_has_no_problem(tmp_path: Path) -> None:
    assert notification_problems(settings(), endpoint_config(tmp_path, f"Bearer {SECRET}")) == []


def test_notification_mistakes_are_named_and_the_secret_never_shown(tmp_path: Path) -> None:
    cases = {
        "sends an Authorization header other than": f"Bearer {SECRET}-but-longer",
        "sends no Authorization header": None,
        "still has the placeholder <notification_secret>": "Bearer <notification_secret>",
    }
    for message, header in cases.items():
        problems = notification_problems(settings(), endpoint_config(tmp_path, header))
        assert len(problems) == 1 and message in problems[0].what
        assert SECRET not in problems[0].what + problems[0].fix
    disabled = endpoint_config(tmp_path, f"Bearer {SECRET}", disabled=True)
    assert "is disabled" in notification_problems(settings(), disabled)[0].what
    none = registry_config(tmp_path, "version: 0.1\n")
    assert "has no notifications endpoint for the gateway" in (
        notification_problems(settings(), none)[0].what
    )


# -- the report ------------------------------------------------------------------------------


def test_a_url_is_shown_without_credentials_or_query() -> None:
    assert shown_url("https://user:pw@gw.example:8443/auth/token?x=secret") == (
        "https://gw.example:8443/auth/token"
    )


def test_each_check_is_one_line_and_json_says_the_same() -> None:
    results = [
        CheckResult("clock", "ok", "the registry's clock agrees with the gateway's"),
        CheckResult("health", "FAIL", "the gateway does not answer", "start it"),
    ]
    text = render_text(results).splitlines()
    assert text[1] == "FAIL  health         the gateway does not answer. Fix: start it"
    assert text[-1] == "doctor: 1 of 2 checks FAIL"
    document = json.loads(render_json(results, registry="http://r", gateway="http://g"))
    assert document["ok"] is False
    assert document["checks"][1] == {
        "check": "health",
        "status": "FAIL",
        "ok": False,
        "detail": "the gateway does not answer",
        "fix": "start it",
    }


# -- the command line ------------------------------------------------------------------------


@pytest.fixture
def no_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("REGISTRY_GATEWAY_"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("no_settings")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--registry URL is required"),
        (["--registry", "ftp://r"], "--registry URL is required"),
        (["--registry", "http://r", "--timeout", "0"], "--timeout takes seconds"),
        (["--registry", "http://r", "--registry-config", "/nonexistent.yml"], "cannot read"),
        (["--registry", "http://r", "--service", " "], "setting service"),
    ],
)
def test_usage_mistakes_exit_2_before_anything_is_asked(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["doctor", *args]) == 2
    assert message in capsys.readouterr().err


def test_doctor_help_explains_every_check(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["doctor", "--help"])
    text = capsys.readouterr().out
    for check in ("challenge", "token", "clock", "notifications", "policy", "health"):
        assert f"\n  {check} " in text
    assert "Exit status 0 when none fails, 1 when one does, 2 for usage" in text


@pytest.mark.usefixtures("no_settings")
def test_registry_config_pins_the_algorithms_of_the_keys_in_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def printed() -> object:
        assert main(["registry-config", "--data-dir", str(tmp_path)]) == 0
        return yaml.safe_load(capsys.readouterr().out)["auth"]["token"]["signingalgorithms"]

    assert printed() == ["ES256"]  # no keys yet: what the first key will be
    store = KeyStore(tmp_path)
    store.ensure("ES256")
    store.rotate("RS256")
    assert printed() == ["ES256", "RS256"]  # both stay in the bundle, both may sign
