"""The audit trail: one JSON object per line for every token decision, apart from server logs."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from logging.handlers import WatchedFileHandler
from typing import Any

AUDIT_LOGGER = "registry_gateway.audit"


class AuditLog:
    """Writes audit records to standard output (`-`) or a file (reopened after rotation)."""

    def __init__(self, target: str = "-") -> None:
        self.logger = logging.getLogger(f"{AUDIT_LOGGER}.{id(self)}")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)
        handler: logging.Handler
        handler = logging.StreamHandler(sys.stdout) if target == "-" else WatchedFileHandler(target)
        handler.setFormatter(logging.Formatter("%(message)s"))
        self.logger.handlers = [handler]

    def write(self, record: dict[str, Any]) -> None:
        record = {"time": now_iso(), "log": "audit", **record}
        self.logger.info(json.dumps(record, separators=(",", ":"), default=str))

    def close(self) -> None:
        for handler in self.logger.handlers:
            handler.close()
        self.logger.handlers = []


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
