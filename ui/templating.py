"""Jinja templates with autoescaping, display filters, and content-hashed static URLs."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from markupsafe import Markup, escape
from starlette.requests import Request
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import Scope

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"


def filesize(value: int | None) -> str:
    """1536 -> '1.5 KiB': binary units (powers of 1024), labelled as such."""
    if value is None:
        return "\u2013"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover


ATTACHMENT_TAG = re.compile(r"(sha256-)([0-9a-f]{64})(\.[a-z]+)?")


def short_attachment(tag: str) -> str:
    """'sha256-0123…(64 hex).sig' -> 'sha256-0123456789ab….sig'; other tags as they are."""
    found = ATTACHMENT_TAG.fullmatch(tag)
    if found is None:
        return tag
    return f"{found[1]}{found[2][:12]}\u2026{found[3] or ''}"


BREAK_AFTER = re.compile(r"([/.+:@-])")
WBR = Markup("<wbr>")


def breakable(value: str | None) -> Markup:
    """Text that may wrap after `/ . + : @ -` but never inside a word (media types, names):
    `application/vnd.oci.image.layer.v1.tar+gzip` wraps at its dots, not letter by letter."""
    if not value:
        return Markup("")
    return Markup("").join(
        escape(part) + WBR if BREAK_AFTER.fullmatch(part) else escape(part)
        for part in BREAK_AFTER.split(value)
    )


def when(value: str | None) -> str:
    """'2024-01-01T00:00:00Z' -> '2024-01-01 00:00 UTC'."""
    if not value:
        return "\u2013"
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    return parsed.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def short_digest(digest: str | None) -> str:
    """'sha256:0123456789abcdef…' -> 'sha256:0123456789ab'."""
    if not digest:
        return ""
    algorithm, _, hexpart = digest.partition(":")
    return f"{algorithm}:{hexpart[:12]}" if hexpart else digest[:19]


def static_hashes() -> dict[str, str]:
    """A short content hash of every static file, for cache-busting URLs."""
    return {
        path.relative_to(STATIC).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        for path in sorted(STATIC.rglob("*"))
        if path.is_file()
    }


class HashedStaticFiles(StaticFiles):
    """Static files; a URL carrying the content hash (`?v=`) may be cached for a year."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if b"v=" in scope.get("query_string", b""):
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        else:
            response.headers["Cache-Control"] = "no-cache"
        return response


def make_templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(
        filesize=filesize,
        when=when,
        short_digest=short_digest,
        short_attachment=short_attachment,
        breakable=breakable,
    )
    hashes = static_hashes()

    @jinja2.pass_context
    def path_for(context: dict[str, Any], name: str, /, **params: Any) -> str:
        """A route's path (relative to the host), with its query string if given any."""
        request: Request = context["request"]
        query = params.pop("query", None)
        root: str = request.scope.get("root_path", "")
        path = root + str(request.app.url_path_for(name, **params))
        if query:
            path += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        return path

    @jinja2.pass_context
    def static(context: dict[str, Any], name: str) -> str:
        return path_for(context, "ui_static", path=name) + f"?v={hashes.get(name, '0')}"

    env.globals.update(path_for=path_for, static=static)
    return Jinja2Templates(env=env)
