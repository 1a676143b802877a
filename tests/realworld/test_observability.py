"""Metrics, structured logs with a shared request id, and draining on SIGTERM, as operators see them."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import httpx

from tests.support.gateway import start_gateway


def metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name + (f"{{{labels}}}" if labels else "")) + r" ([0-9.e+]+)"
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


def test_request_id_is_shared_by_access_log_audit_and_response(tmp_path: Path) -> None:
    gateway = start_gateway(tmp_path / "gw")
    try:
        answer = httpx.get(
            f"{gateway.url}/auth/token",
            params={"service": gateway.service, "scope": "repository:library/x:pull"},
            headers={"X-Request-ID": "trace-42"},
        )
        assert answer.headers["x-request-id"] == "trace-42"
        audit = [r for r in gateway.audit() if r.get("request_id") == "trace-42"]
        assert len(audit) == 1 and audit[0]["log"] == "audit"
        time.sleep(0.2)
        access = [json.loads(line) for line in gateway.logs().splitlines() if '"trace-42"' in line]
        assert [line["log"] for line in access] == ["access"]
        assert access[0]["status"] == 200 and access[0]["path"] == "/auth/token"
        every = [json.loads(line) for line in gateway.logs().splitlines() if line.startswith("{")]
        assert all("time" in line and "level" in line for line in every)
        generated = httpx.get(f"{gateway.url}/healthz").headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", generated)
    finally:
        gateway.stop()


def test_access_log_off_keeps_the_audit(tmp_path: Path) -> None:
    gateway = start_gateway(tmp_path / "gw", args=["--access-log", "false"])
    try:
        for _ in range(3):  # fresh, fresh, replayed
            httpx.get(
                f"{gateway.url}/auth/token",
                params={"service": gateway.service, "scope": "repository:library/x:pull"},
                headers={"X-Request-ID": "quiet-1"},
            )
        httpx.get(f"{gateway.url}/healthz", headers={"X-Request-ID": "quiet-2"})
        assert len([r for r in gateway.audit() if r.get("request_id") == "quiet-1"]) == 3
        time.sleep(0.2)
        assert "quiet-" not in gateway.logs()
        assert "serving policy revision" in gateway.logs()  # other server lines stay
    finally:
        gateway.stop()


def test_metrics_count_outcomes_decisions_and_reloads(tmp_path: Path) -> None:
    gateway = start_gateway(tmp_path / "gw")
    try:
        gateway.token("bob", "repository:platform/api:pull,push,delete")
        gateway.token(None, "repository:library/a:pull")
        httpx.get(
            f"{gateway.url}/auth/token", params={"service": gateway.service}, auth=("bob", "wrong")
        )
        text = httpx.get(f"{gateway.url}/metrics").text
        assert (
            metric(text, "registry_gateway_token_requests_total", 'outcome="issued",status="200"')
            == 2
        )
        assert (
            metric(text, "registry_gateway_token_requests_total", 'outcome="denied",status="401"')
            == 1
        )
        assert metric(text, "registry_gateway_decisions_total", 'result="partial"') == 1
        assert metric(text, "registry_gateway_decisions_total", 'result="granted"') == 1
        assert metric(text, "registry_gateway_signin_failures_total", 'method="password"') == 1
        assert metric(text, "registry_gateway_policy_reloads_total", 'result="ok"') == 1
        assert "registry_gateway_policy_revision_info{revision=" in text
        assert metric(text, "registry_gateway_token_request_seconds_count") == 3
    finally:
        gateway.stop()


def test_metrics_add_up_across_workers(tmp_path: Path) -> None:
    gateway = start_gateway(tmp_path / "gw", args=["--workers", "2"])
    try:
        for _ in range(20):  # a new connection each time: requests spread over the workers
            httpx.get(f"{gateway.url}/auth/token", params={"service": gateway.service})
        issued = 'outcome="issued",status="200"'
        totals = {
            metric(
                httpx.get(f"{gateway.url}/metrics").text,
                "registry_gateway_token_requests_total",
                issued,
            )
            for _ in range(6)
        }
        assert totals == {20.0}
    finally:
        gateway.stop()


def test_sigterm_drains_before_exiting(tmp_path: Path) -> None:
    gateway = start_gateway(tmp_path / "gw", args=["--drain-seconds", "1.5"])
    assert gateway.process is not None
    gateway.process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    ready = httpx.get(f"{gateway.url}/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    assert (
        httpx.get(f"{gateway.url}/auth/token", params={"service": gateway.service}).status_code
        == 200
    )
    # uvicorn re-raises the signal once it has shut down cleanly, as supervisors expect.
    assert gateway.process.wait(15) in (0, -signal.SIGTERM)
    assert time.monotonic() - started >= 1.0
    assert "draining for 1.5 s" in gateway.logs()
