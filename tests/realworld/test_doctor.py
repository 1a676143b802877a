"""`registry-gateway doctor` against Debian's real Distribution 2.8, wired right and wired
wrong in each way operators get it wrong: the FAIL line names the problem and its fix."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.doctor import DoctorRun, run_doctor, skewed_clock
from tests.support.gateway import Gateway, start_gateway
from tests.support.registry import Registry, TokenAuth, free_port, start_registry

SECRET = "doctor-test-notification-secret"

StartRegistry = Callable[..., Registry]


def endpoint(gateway: Gateway, authorization: str = f"Bearer {SECRET}") -> dict[str, Any]:
    """The registry's notification endpoint for `gateway`, as registry-config prints it."""
    return {
        "name": "registry-gateway",
        "url": f"{gateway.url}/-/notifications",
        "headers": {"Authorization": [authorization]},
        "timeout": "2s",
        "threshold": 5,
        "backoff": "5s",
    }


def token_auth(gateway: Gateway, bundle: Path, **changes: Any) -> TokenAuth:
    values: dict[str, Any] = {
        "realm": f"{gateway.url}/auth/token",
        "service": gateway.service,
        "issuer": gateway.issuer,
        "rootcertbundle": bundle,
    }
    values.update(changes)
    return TokenAuth(**values)


@pytest.fixture(scope="module")
def registry_port() -> int:
    return free_port()


def catalog_gateway(root: Path, registry_port: int, **options: Any) -> Gateway:
    """A gateway with a catalog of the registry on `registry_port` and notifications on."""
    env = {"REGISTRY_GATEWAY_NOTIFICATION_SECRET": SECRET, **options.pop("env", {})}
    args = ["--registry-url", f"http://127.0.0.1:{registry_port}"]
    return start_gateway(root, args=args, env=env, **options)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, registry_port: int) -> Iterator[Gateway]:
    gateway = catalog_gateway(tmp_path_factory.mktemp("doctor") / "gateway", registry_port)
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def bundle(gateway: Gateway) -> Path:
    return gateway.write_bundle(gateway.root / "bundle.pem")


@pytest.fixture
def start(tmp_path: Path, registry_port: int) -> Iterator[StartRegistry]:
    """Start a registry on the port the gateways' catalog reads (one per test)."""
    started: list[Registry] = []

    def start(**options: Any) -> Registry:
        registry = start_registry(tmp_path / "registry", port=registry_port, **options)
        started.append(registry)
        return registry

    yield start
    for registry in started:
        registry.stop()


def doctor(gateway: Gateway, registry: Registry, *args: str, **env: str) -> DoctorRun:
    """doctor with the gateway's settings, the notification secret and the catalog's URL."""
    settings = {
        "REGISTRY_GATEWAY_NOTIFICATION_SECRET": SECRET,
        "REGISTRY_GATEWAY_REGISTRY_URL": registry.url,
        **env,
    }
    return run_doctor(gateway, registry.url, *args, env=settings)


def assert_only_failing(run: DoctorRun, *checks: str) -> None:
    failing = {name for name, status in run.statuses().items() if status == "FAIL"}
    assert failing == set(checks), run.stdout
    assert run.returncode == 1, run.stdout + run.stderr
    assert SECRET not in run.stdout + run.stderr


# -- wired right -----------------------------------------------------------------------------


def test_a_registry_configured_from_registry_config_passes_every_check(
    gateway: Gateway, bundle: Path, start: StartRegistry
) -> None:
    """What `registry-config --data-dir` prints (signingalgorithms included) starts Debian's
    2.8, and doctor finds nothing wrong: exit 0, six ok lines, the same as JSON."""
    printed = gateway.cli(
        "registry-config",
        "--data-dir", str(gateway.data_dir),
        "--service", gateway.service,
        "--issuer", gateway.issuer,
        "--public-url", gateway.url,
        "--rootcertbundle", str(bundle),
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    token = yaml.safe_load(printed.stdout)["auth"]["token"]
    assert token["signingalgorithms"] == ["ES256"]
    registry = start(
        token=TokenAuth(token["realm"], token["service"], token["issuer"], bundle),
        token_options={"signingalgorithms": token["signingalgorithms"]},
        notifications=[endpoint(gateway)],
    )
    run = doctor(gateway, registry, "--registry-config", str(registry.config_path))
    assert run.returncode == 0, run.stdout + run.stderr
    assert set(run.statuses().values()) == {"ok"}, run.stdout
    assert "Fix:" not in run.stdout
    assert "ES256" in run.line("token") and "does not pin" not in run.line("token")
    assert SECRET not in run.stdout + run.stderr

    as_json = doctor(gateway, registry, "--registry-config", str(registry.config_path),
                     "--format", "json")  # fmt: skip
    document = as_json.document()
    assert as_json.returncode == 0
    assert document["ok"] is True
    assert [c["check"] for c in document["checks"]] == list(run.statuses())
    assert {c["status"] for c in document["checks"]} == {"ok"}


# -- the challenge ---------------------------------------------------------------------------


def test_a_wrong_realm_is_named_with_the_right_one(
    gateway: Gateway, bundle: Path, start: StartRegistry
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/auth/token"
    registry = start(token=token_auth(gateway, bundle, realm=dead))
    run = doctor(gateway, registry)
    assert_only_failing(run, "challenge")
    line = run.line("challenge")
    assert f"realm {dead}, but this gateway's token endpoint is {gateway.url}/auth/token" in line
    assert "does not answer from here" in line
    assert f"Fix: set auth.token.realm: {gateway.url}/auth/token" in line


def test_a_wrong_service_is_named_in_the_challenge_and_the_token(
    gateway: Gateway, bundle: Path, start: StartRegistry
) -> None:
    registry = start(token=token_auth(gateway, bundle, service="registry.elsewhere"))
    run = doctor(gateway, registry)  # no --registry-config: the challenge says it
    assert_only_failing(run, "challenge", "token")
    assert (
        f"the registry's service is 'registry.elsewhere', but the gateway's is "
        f"'{gateway.service}'" in run.line("challenge")
    )
    assert f"Fix: set auth.token.service: {gateway.service}" in run.line("challenge")
    token = run.line("token")
    assert "refused a token signed by this gateway (invalid_token)" in token
    assert f"its service 'registry.elsewhere' is not the token's audience '{gateway.service}'" in (
        token
    )


def test_a_registry_without_token_auth_is_open_and_says_so(
    gateway: Gateway, start: StartRegistry
) -> None:
    registry = start(notifications=[endpoint(gateway)])
    run = doctor(gateway, registry)
    assert_only_failing(run, "challenge")
    assert "lets anyone in" in run.line("challenge")
    assert "registry-config" in run.line("challenge")
    assert run.status("token") == "skip"


# -- the token -------------------------------------------------------------------------------


def test_a_wrong_issuer_is_named_from_the_registry_config(
    gateway: Gateway, bundle: Path, start: StartRegistry
) -> None:
    registry = start(
        token=token_auth(gateway, bundle, issuer="someone-else"),
        notifications=[endpoint(gateway)],
    )
    run = doctor(gateway, registry, "--registry-config", str(registry.config_path))
    assert_only_failing(run, "token")
    line = run.line("token")
    assert "refused a token signed by this gateway (invalid_token)" in line
    assert (
        f"the registry trusts issuer 'someone-else', but the gateway signs as '{gateway.issuer}'"
        in line
    )
    assert f"Fix: set auth.token.issuer: {gateway.issuer} in {registry.config_path}" in line

    # Without the registry's config doctor cannot tell issuer from bundle, and says how to.
    blind = doctor(gateway, registry)
    assert_only_failing(blind, "token")
    assert f"its auth.token.issuer is not '{gateway.issuer}', or its rootcertbundle" in (
        blind.line("token")
    )
    assert "pass --registry-config FILE" in blind.line("token")


def test_a_bundle_of_another_key_is_named_with_the_command_that_writes_the_right_one(
    gateway: Gateway, start: StartRegistry, tmp_path: Path
) -> None:
    other = tmp_path / "other-bundle.pem"
    made = gateway.cli("keys", "bundle", "--data-dir", str(tmp_path / "other"), "-o", str(other))
    assert made.returncode == 0, made.stderr
    registry = start(token=token_auth(gateway, other), notifications=[endpoint(gateway)])
    run = doctor(gateway, registry, "--registry-config", str(registry.config_path))
    assert_only_failing(run, "token")
    line = run.line("token")
    assert f"rootcertbundle {other} does not hold the certificate of the gateway's signing key" in (
        line
    )
    assert f"keys bundle --data-dir {gateway.data_dir} -o {other}" in line


def test_signingalgorithms_without_the_keys_algorithm_fail_though_2_8_ignores_them(
    gateway: Gateway, bundle: Path, start: StartRegistry
) -> None:
    """2.8 starts with the list and ignores it (the token is accepted); after an upgrade to
    3.x every token would be refused, so doctor fails it now."""
    registry = start(
        token=token_auth(gateway, bundle),
        token_options={"signingalgorithms": ["RS256"]},
        notifications=[endpoint(gateway)],
    )
    run = doctor(gateway, registry, "--registry-config", str(registry.config_path))
    assert_only_failing(run, "token")
    line = run.line("token")
    assert "the registry accepts the gateway's tokens now" in line
    assert "signingalgorithms ['RS256'] leave out ES256" in line
    assert "registry-config --data-dir" in line


# -- notifications ---------------------------------------------------------------------------


def test_a_registry_without_notifications_is_named(
    gateway: Gateway, bundle: Path, start: StartRegistry
) -> None:
    registry = start(token=token_auth(gateway, bundle))
    run = doctor(gateway, registry, "--registry-config", str(registry.config_path))
    assert_only_failing(run, "notifications")
    line = run.line("notifications")
    assert f"{registry.config_path} has no notifications endpoint for the gateway" in line
    assert "Fix: add the notifications section `registry-gateway registry-config` prints" in line


def test_a_wrong_notification_secret_is_named_and_never_shown(
    gateway: Gateway, bundle: Path, start: StartRegistry
) -> None:
    wrong = "Bearer not-the-gateway-secret"
    registry = start(token=token_auth(gateway, bundle), notifications=[endpoint(gateway, wrong)])
    run = doctor(gateway, registry, "--registry-config", str(registry.config_path))
    assert_only_failing(run, "notifications")
    line = run.line("notifications")
    assert "endpoint registry-gateway sends an Authorization header other than Bearer" in line
    assert "not-the-gateway-secret" not in run.stdout + run.stderr

    # doctor and the running gateway disagree: the gateway refuses doctor's probe.
    other = doctor(gateway, registry, REGISTRY_GATEWAY_NOTIFICATION_SECRET="doctor-has-another-one")
    assert_only_failing(other, "notifications")
    assert "refused a probe with this notification_secret (401)" in other.line("notifications")
    assert "doctor-has-another-one" not in other.stdout + other.stderr

    # And without any secret, while the catalog needs one.
    none = doctor(gateway, registry, REGISTRY_GATEWAY_NOTIFICATION_SECRET="")
    assert_only_failing(none, "notifications")
    assert "notification_secret is not set" in none.line("notifications")


# -- clock, policy, health -----------------------------------------------------------------


def test_a_gateway_clock_ahead_of_the_registry_is_measured(
    tmp_path: Path, registry_port: int, start: StartRegistry
) -> None:
    """A gateway whose wall clock is really 150 s ahead (libfaketime; the registry, in Go,
    keeps the host's): the registry refuses the tokens it signs, and doctor says why."""
    skewed = catalog_gateway(tmp_path / "skewed", registry_port, env=skewed_clock(150))
    try:
        bundle = skewed.write_bundle(tmp_path / "bundle.pem")
        registry = start(token=token_auth(skewed, bundle), notifications=[endpoint(skewed)])
        # What users would see: a token from this gateway is refused as not valid yet.
        token = skewed.token("alice", "repository:library/x:pull").json()["token"]
        refused = httpx.get(
            f"{registry.url}/v2/", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert refused.status_code == 401
        assert 'error="invalid_token"' in refused.headers["www-authenticate"]

        run = doctor(skewed, registry, "--registry-config", str(registry.config_path))
        assert_only_failing(run, "clock")
        line = run.line("clock")
        seconds = re.search(r"the registry's clock is (\d+) s behind the gateway's", line)
        assert seconds is not None, line
        assert 145 <= int(seconds.group(1)) <= 155, line
        assert "refuses it (invalid_token)" in line and "NTP" in line
    finally:
        skewed.stop()


def wait_for_status(gateway: Gateway, status: str) -> None:
    deadline = time.monotonic() + 20
    while httpx.get(f"{gateway.url}/healthz", timeout=5).json()["status"] != status:
        assert time.monotonic() < deadline, f"/healthz never said {status}"
        time.sleep(0.1)


def test_a_broken_policy_is_named_where_it_breaks(
    tmp_path: Path, registry_port: int, start: StartRegistry
) -> None:
    own = catalog_gateway(tmp_path / "gateway", registry_port)
    try:
        bundle = own.write_bundle(tmp_path / "bundle.pem")
        registry = start(token=token_auth(own, bundle), notifications=[endpoint(own)])
        # A policy test that fails: the gateway keeps its last good revision (degraded).
        case = own.policies / "tests" / "doctor.yaml"
        case.write_text(
            "- description: carol pushes to platform/api (she may not)\n"
            "  as: user:carol\n"
            "  scope: repository:platform/api:pull,push\n"
            "  granted: [pull, push]\n"
        )
        wait_for_status(own, "degraded")
        run = doctor(own, registry)
        assert_only_failing(run, "policy", "health")
        policy = run.line("policy")
        assert "1 failed" in policy and "doctor.yaml:1" in policy
        assert f"Fix: run `registry-gateway check {own.policies}`" in policy
        health = run.line("health")
        assert "the gateway is degraded (HTTP 200): policy rejected" in health
        assert "doctor.yaml:1" in health

        # A policy file that does not load at all.
        case.unlink()
        (own.policies / "people.yaml").write_text("users: [not, a, mapping\n")
        broken = doctor(own, registry)
        assert_only_failing(broken, "policy", "health")
        assert "people.yaml:" in broken.line("policy")
        assert "tests: not run (the policy is invalid)" in broken.line("policy")
    finally:
        own.stop()


def test_a_gateway_that_is_down_fails_what_needs_it(
    tmp_path: Path, registry_port: int, start: StartRegistry
) -> None:
    own = catalog_gateway(tmp_path / "gateway", registry_port)
    bundle = own.write_bundle(tmp_path / "bundle.pem")
    registry = start(token=token_auth(own, bundle), notifications=[endpoint(own)])
    own.stop()
    run = doctor(own, registry)
    # The registry still accepts what the gateway's keys sign; everything that asks the
    # gateway itself fails, each naming where it looked.
    assert_only_failing(run, "challenge", "notifications", "health")
    assert f"the realm {own.url}/auth/token does not answer from here" in run.line("challenge")
    assert "Fix: start the gateway (registry-gateway serve)" in run.line("challenge")
    assert f"the gateway does not answer at {own.url}/healthz" in run.line("health")
    assert "Fix: start it (registry-gateway serve), or pass --gateway URL" in run.line("health")
    assert f"does not answer at {own.url}/-/notifications" in run.line("notifications")
    assert run.status("token") == "ok"


def test_doctor_without_the_gateways_keys_says_where_it_looked(
    gateway: Gateway, bundle: Path, start: StartRegistry, tmp_path: Path
) -> None:
    """doctor makes no key of its own: pointed at another data dir, the token check fails."""
    registry = start(token=token_auth(gateway, bundle), notifications=[endpoint(gateway)])
    elsewhere = tmp_path / "elsewhere"
    run = doctor(gateway, registry, "--data-dir", str(elsewhere))
    assert_only_failing(run, "token")
    assert f"cannot read the gateway's signing keys: there are none in {elsewhere}/keys" in (
        run.line("token")
    )
    assert "Fix: run doctor with the gateway's data dir" in run.line("token")
    assert not elsewhere.exists()
