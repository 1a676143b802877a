"""Server logs: one JSON object per line (or plain text), separate from the audit trail."""

from __future__ import annotations

import logging
import logging.config
import re
import sys
from typing import Any

from gateway.audit import now_iso
from gateway.jsontext import ascii_json

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "color_message",
}


def json_line(level: str, logger: str, message: str, fields: dict[str, Any]) -> str:
    """One server log line: time, level, logger and message, then the record's own fields."""
    data: dict[str, Any] = {"time": now_iso(), "level": level, "logger": logger, "message": message}
    data.update(fields)
    return ascii_json(data)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = {
            key: value
            for key, value in record.__dict__.items()
            if key not in _STANDARD and not key.startswith("_")
        }
        if record.exc_info and record.exc_info[0] is not None:
            fields["exception"] = record.exc_info[0].__name__
            fields["traceback"] = self.formatException(record.exc_info)
        return json_line(record.levelname.lower(), record.name, record.getMessage(), fields)


# Control characters (C0, DEL, C1) and the Unicode line separators: what could end a line
# of a text log or fake another one.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or (
        f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"
    )


def one_line(text: str) -> str:
    """`text` with CR, LF, tab and every other control character written as an escape."""
    return _CONTROL.sub(_escaped, text) if _CONTROL.search(text) else text


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message`, one line per record whatever the message holds (a
    request path with %0A is a client's text); a traceback follows on lines indented by
    four spaces, each escaped the same way, so that nothing reads as a record of its own."""

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{self.formatTime(record)} {record.levelname} {one_line(record.name)}: "
            f"{one_line(record.getMessage())}"
        )
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        for extra in (record.exc_text, record.stack_info):
            if extra:
                line += "".join(f"\n    {one_line(part)}" for part in extra.splitlines())
        return line


def _sole_json_handler(logger: logging.Logger) -> logging.StreamHandler[Any] | None:
    """The one handler a record of `logger` would reach, if it is a plain JSON stream handler."""
    found: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        found.extend(current.handlers)
        if not current.propagate:
            break
        current = current.parent
    if len(found) != 1:
        return None
    handler = found[0]
    if (
        type(handler) is logging.StreamHandler
        and type(handler.formatter) is JsonFormatter
        and not handler.filters
        and handler.level <= logging.INFO
    ):
        return handler
    return None


def json_stream(logger: logging.Logger) -> logging.StreamHandler[Any] | None:
    """The handler to write `logger`'s INFO lines to directly, as `json_line` text, when that
    is all that logging them would do: INFO is on, and the only handler is the JSON stream
    handler `configure` installs. None otherwise: log them the ordinary way.

    For the per-request lines (the access log): a LogRecord, the handler chain and the
    formatter's walk over the record cost more than answering a cached token request. Any
    other set-up (text format, a test's capture handler, extra handlers or filters) gets the
    ordinary `logger.info`.
    """
    if not logger.isEnabledFor(logging.INFO):
        return None
    return _sole_json_handler(logger)


def write_json_line(handler: logging.StreamHandler[Any], line: str) -> None:
    """Write one line (without its terminator) to `handler`'s stream as the handler would:
    under its lock, flushed, a failure reported by its `handleError`."""
    handler.acquire()
    try:
        handler.stream.write(line + handler.terminator)
        handler.flush()
    except Exception:
        handler.handleError(logging.makeLogRecord({"msg": line}))
    finally:
        handler.release()


def configure(level: str = "info", fmt: str = "json") -> dict[str, Any]:
    """Configure the root and uvicorn loggers; returns a dictConfig for uvicorn's workers."""
    formatter = "json" if fmt == "json" else "text"
    config: dict[str, Any] = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {"()": JsonFormatter},
            "text": {"()": TextFormatter},
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": formatter,
            },
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn.error": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn.access": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
            # httpx logs every request at info: a catalog read is 200,000 of them.
            "httpx": {"level": "WARNING"},
        },
    }
    logging.config.dictConfig(config)
    return config


def fatal(message: str) -> None:
    print(f"registry-gateway: {message}", file=sys.stderr)
