"""The server log under hostile input: one line per record in the text format, and no secret
(an htpasswd line in plain text, a password in a Redis URL) in any line or message."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from gateway import logs, middleware
from gateway.app import create_app
from gateway.auth.htpasswd import HtpasswdFile, parse
from gateway.cli import main
from gateway.config import load_settings
from gateway.logs import TextFormatter, one_line


@pytest.fixture
def text_log() -> Iterator[io.StringIO]:
    """What the access logger writes through the text formatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter())
    logger = logging.getLogger("registry_gateway.access")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def test_a_path_with_a_newline_stays_on_its_line(tmp_path: Path, text_log: io.StringIO) -> None:
    settings = load_settings(
        {
            "policies": str(shutil.copytree("policies", tmp_path / "policies")),
            "data_dir": str(tmp_path / "data"),
            "audit_log": str(tmp_path / "audit.log"),
            "watch": "false",
        },
        environ={},
    )
    forged = "/x%0D%0A2024-01-01 00:00:00,000 INFO registry_gateway.access: POST /-/reload 200"
    with TestClient(create_app(settings)) as client:
        client.get(forged)
    lines = text_log.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].endswith(
        r"GET /x\r\n2024-01-01 00:00:00,000 INFO registry_gateway.access: POST /-/reload 200 404"
    )


def record(message: str, *args: Any, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("bad\nINFO forged: line")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("registry_gateway", logging.WARNING, "", 0, message, args, exc_info)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text, unchanged", "plain text, unchanged"),
        ("a\nb", r"a\nb"),
        ("a\r\nb", r"a\r\nb"),
        ("tab\there", r"tab\there"),
        ("\x1b[31mred\x1b[0m", r"\x1b[31mred\x1b[0m"),
        ("nul\x00del\x7fnel\x85", r"nul\x00del\x7fnel\x85"),
        ("line\u2028separator\u2029", r"line\u2028separator\u2029"),
        ("ünïcödé stays", "ünïcödé stays"),
    ],
)
def test_control_characters_are_escaped(text: str, shown: str) -> None:
    assert one_line(text) == shown
    assert TextFormatter().format(record("%s", text)).endswith(f"registry_gateway: {shown}")


def test_a_traceback_cannot_fake_a_record() -> None:
    text = TextFormatter().format(record("failed on %s", "/a\nb", exc=True))
    first, *rest = text.split("\n")
    assert first.endswith(r"WARNING registry_gateway: failed on /a\nb")
    # Every line of the traceback is indented: a line in an exception's message is one too.
    assert rest and all(line.startswith("    ") for line in rest)
    assert rest[-2:] == ["    ValueError: bad", "    INFO forged: line"]


def test_the_text_format_uses_the_escaping_formatter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging.config, "dictConfig", lambda config: None)
    config = logs.configure("info", "text")
    assert config["formatters"]["text"] == {"()": TextFormatter}
    assert config["handlers"]["stderr"]["formatter"] == "text"


# -- secrets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stored", "scheme"),
    [
        ("Zq9x-hunter2", "an unknown scheme or plain text"),
        ("$Zq9x-hunter2", "an unknown scheme or plain text"),
        ("{Zq9x}hunter2", "an unknown scheme or plain text"),
        ("$apr1$abcdefgh$0123456789abcdefghijkl", "MD5 ($apr1$)"),
        ("{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "SHA-1 ({SHA})"),
        ("$2y$05$tooshort", "a malformed bcrypt hash"),
        ("$6$salt$hash", "SHA-512-crypt ($6$)"),
        ("abJnggxhB/yWI", "DES crypt"),
    ],
)
def test_an_htpasswd_warning_names_the_line_and_scheme_only(stored: str, scheme: str) -> None:
    entries = parse(f"# users\nbob:{stored}\n", "htpasswd")
    assert entries.warnings == (
        f"htpasswd:2: only bcrypt hashes are accepted (htpasswd -B), not {scheme}; skipped",
    )
    if "hunter2" in stored:  # a password in plain text: not four characters of it shown
        for start in range(len(stored) - 3):
            assert stored[start : start + 4] not in entries.warnings[0]


def test_an_htpasswd_file_logs_no_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "htpasswd"
    path.write_text("alice:plaintext-hunter2\n")
    with caplog.at_level(logging.WARNING):
        HtpasswdFile(path).reload()
    assert "htpasswd:1" in caplog.text
    assert "plain" not in caplog.text.replace("plain text", "")
    assert "hunter2" not in caplog.text


@pytest.mark.parametrize("separator", ["/", "?", "#"])
def test_serve_refuses_a_redis_url_it_cannot_read_without_showing_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    separator: str,
) -> None:
    """A password holding an unencoded `/`, `?` or `#`: exit 2, the setting named, no
    traceback, no part of the password."""
    monkeypatch.setattr(logs, "configure", lambda level, fmt: {})  # logging left as it is
    password = f"Sup3r{separator}Secr3t"
    monkeypatch.setenv("REGISTRY_GATEWAY_REDIS_URL", f"redis://:{password}@127.0.0.1:6379/0")
    policies = shutil.copytree("policies", tmp_path / "policies")
    code = main(["serve", "--policies", str(policies), "--data-dir", str(tmp_path / "data")])
    out, err = capsys.readouterr()
    assert code == 2
    assert "redis_url" in err and "Traceback" not in err + out
    for part in ("Sup3r", "Secr3t", password):
        assert part not in err + out


# -- the access line written directly ----------------------------------------------------------


@contextlib.contextmanager
def json_access_log(*, direct: bool) -> Iterator[io.StringIO]:
    """The access logger alone on a JSON stream handler, as `configure` sets it up; with
    `direct=False` a no-op filter makes lines go through logging and its formatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    if not direct:
        handler.addFilter(lambda record: True)
    logger = logging.getLogger("registry_gateway.access")
    saved = logger.handlers[:], logger.level, logger.propagate, logger.filters[:]
    logger.handlers[:], logger.filters[:] = [handler], []
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield stream
    finally:
        logger.handlers[:], logger.filters[:] = saved[0], saved[3]
        logger.setLevel(saved[1])
        logger.propagate = saved[2]


@settings(max_examples=200, deadline=None)
@given(
    method=st.sampled_from(["GET", "POST", "HEAD", "M-SEARCH"]) | st.text(max_size=8),
    path=st.text(max_size=40),
    status=st.integers(100, 599),
    client=st.none() | st.sampled_from(["127.0.0.1", "::1"]) | st.text(max_size=10),
    request_id=st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True),
    seconds=st.floats(0, 1000),
)
def test_the_access_line_written_directly_is_the_logged_line(
    method: str, path: str, status: int, client: str | None, request_id: str, seconds: float
) -> None:
    scope: dict[str, Any] = {
        "method": method,
        "path": path,
        "client": (client, 1) if client is not None else None,
    }
    started = time.perf_counter()
    lines = []
    with (
        mock.patch("gateway.middleware.now_iso", lambda: "T"),
        mock.patch("gateway.logs.now_iso", lambda: "T"),
        mock.patch("gateway.middleware.time.perf_counter", lambda: started + seconds),
    ):
        for direct in (True, False):
            with json_access_log(direct=direct) as stream:
                middleware.access_line(scope, request_id, status, started)
            lines.append(stream.getvalue())
    assert lines[0] == lines[1]
    assert lines[0].endswith("\n") and lines[0].count("\n") == 1 and lines[0].isascii()
    assert json.loads(lines[0])["path"] == path
