"""Sign in through the organisation's OpenID provider, and the CLI secrets a person who signed
in that way gives `docker login` (docs/oidc.md).

`start` sends the browser to the provider with a fresh state, nonce and PKCE verifier, kept
encrypted in a short-lived cookie only the callback reads; `callback` checks the state, has
the code exchanged and the ID token verified (gateway/auth/people.py), and starts a session
that ends when the ID token does. `cli_secrets` lists, makes (shown once) and revokes the
viewer's own CLI secrets (gateway/auth/clisecrets.py).
"""

from __future__ import annotations

import hmac
import json
import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from gateway.auth.clisecrets import CliSecretError
from gateway.auth.oidc import OidcRefused
from gateway.policy.model import Subject
from ui.session import Session, csrf_matches, new_session
from ui.site import Site, Viewer, iso, local_path
from ui.views.auth import CSRF_REFUSED

FLOW_COOKIE = "rg_oidc"
FLOW_SECONDS = 600  # a sign-in at the provider must come back within this long
MAX_FIELD = 200
DEFAULT_DAYS = 30


async def start(site: Site, request: Request, viewer: Viewer) -> Response:
    """Send the browser to the provider's sign-in page."""
    people = site.services.authenticator.people
    if people is None:
        return site.not_found(request, viewer)
    state_text, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    verifier = secrets.token_urlsafe(48)  # PKCE: 64 characters of the code verifier's alphabet
    try:
        url = await people.authorization_url(state_text, nonce, verifier)
    except OidcRefused:
        return site.error(
            request, viewer, 502, "oidc_unavailable", "The identity provider cannot be reached."
        )
    flow = {
        "s": state_text,
        "n": nonce,
        "v": verifier,
        "next": local_path(request.query_params.get("next")),
    }
    response = RedirectResponse(url, status_code=303)
    response.set_cookie(
        FLOW_COOKIE,
        site.codec.seal(json.dumps(flow)),
        max_age=FLOW_SECONDS,
        path=site.settings.oidc_redirect_path,
        secure=site.codec.secure,
        httponly=True,
        samesite="lax",  # the provider's redirect back is a top-level GET: the cookie comes
    )
    return response


async def callback(site: Site, request: Request, viewer: Viewer) -> Response:
    """The provider's answer: check it, verify the person, start a session."""
    people = site.services.authenticator.people
    if people is None:
        return site.not_found(request, viewer)
    flow = _flow(site, request.cookies.get(FLOW_COOKIE))
    params = request.query_params
    given = params.get("state", "")
    if flow is None or not hmac.compare_digest(given.encode(), str(flow["s"]).encode()):
        return _refuse(
            site, request, viewer, 400, "state", "This sign-in expired or did not start here."
        )
    if params.get("error"):
        why = params.get("error", "")[:MAX_FIELD]
        return _refuse(
            site, request, viewer, 401, why, "The identity provider did not sign you in."
        )
    code = params.get("code", "")
    if not code or len(code) > 4096:
        return _refuse(site, request, viewer, 400, "no code", "The provider sent no code.")
    try:
        person = await people.sign_in(code, str(flow["v"]), str(flow["n"]))
    except OidcRefused as exc:
        return _refuse(
            site, request, viewer, 401, exc.message, "The sign-in could not be verified."
        )
    policy = viewer.engine.policy
    if person.name in policy.robots:
        return _refuse(
            site, request, viewer, 403, "a robot's name", f"{person.name} is a robot's name here."
        )
    subject = Subject(
        "user", person.name, directory=person.name not in policy.users, oidc_groups=person.groups
    )
    sealed = site.codec.seal(person.refresh_token) if person.refresh_token else None
    request.state.ui_session = new_session(
        subject, None, "oidc", expires=person.expires, refresh=sealed, oidc_admin=person.admin
    )
    site.services.audit.write(
        {
            "event": "ui_login",
            "status": 200,
            "auth": "oidc",
            "username": person.name,
            "subject": str(subject),
            "oidc_issuer": people.issuer,
            "oidc_subject": person.subject,
            "oidc_groups": sorted(person.groups),
        }
    )
    response = RedirectResponse(str(flow["next"]), status_code=303)
    response.delete_cookie(FLOW_COOKIE, path=site.settings.oidc_redirect_path)
    return response


def _flow(site: Site, cookie: str | None) -> dict[str, Any] | None:
    text = site.codec.unseal(cookie, ttl=FLOW_SECONDS)
    try:
        flow = json.loads(text) if text else None
    except ValueError:
        return None
    return flow if isinstance(flow, dict) and {"s", "n", "v", "next"} <= flow.keys() else None


def _refuse(
    site: Site, request: Request, viewer: Viewer, status: int, reason: str, message: str
) -> Response:
    site.services.audit.write(
        {"event": "ui_login", "status": status, "auth": "oidc", "reason": reason[:300]}
    )
    return site.error(request, viewer, status, "oidc", f"{message} Try signing in again.")


# -- CLI secrets --------------------------------------------------------------------------


async def cli_secrets(site: Site, request: Request, viewer: Viewer) -> Response:
    """GET: the viewer's CLI secrets. POST: make one (shown once) or revoke one."""
    store = site.services.authenticator.cli_secrets
    session: Session | None = getattr(request.state, "ui_session", None)
    if store is None or session is None or session.via != "oidc":
        return site.error(
            request,
            viewer,
            403,
            "oidc_only",
            "CLI secrets are for people who sign in with the identity provider; others use "
            "their password or a personal access token.",
        )
    user = viewer.subject.name
    made: str | None = None
    error: str | None = None
    status = 200
    if request.method == "POST":
        form = await request.form(max_files=0, max_fields=6)
        if not csrf_matches(session, form.get("csrf")):
            return site.error(request, viewer, 403, "csrf", CSRF_REFUSED)
        action = form.get("action")
        if action == "revoke":
            ident = _text(form.get("id"))
            if await store.revoke(user, ident):
                _audit(site, "cli_secret_revoked", user, ident)
            else:
                error, status = "No such CLI secret of yours.", 404
        else:
            label = _text(form.get("label")).strip() or "docker login"
            try:
                days = int(_text(form.get("days")) or DEFAULT_DAYS)
                refresh = site.codec.unseal(session.refresh)
                made, record = await store.create(
                    user, label, days * 86400.0, viewer.subject.oidc_groups, refresh
                )
                _audit(site, "cli_secret_created", user, record.id)
            except ValueError:
                error, status = "Days must be a whole number.", 400
            except CliSecretError as exc:
                error, status = str(exc), 400
    records = await store.of(user)
    data = {
        "user": user,
        "secret": made,
        "error": error,
        "host": site.pull_host(),
        "max_days": int(store.max_ttl // 86400),
        "default_days": min(DEFAULT_DAYS, int(store.max_ttl // 86400)),
        "secrets": [
            {**r.data(), "created": iso(r.created), "expires": iso(r.expires)} for r in records
        ],
    }
    return site.render(request, viewer, "cli_secrets.html", data, status=status)


def _audit(site: Site, event: str, user: str, ident: str) -> None:
    site.services.audit.write(
        {"event": event, "status": 200, "username": user, "cli_secret": ident}
    )


def _text(value: object) -> str:
    return value[:MAX_FIELD] if isinstance(value, str) else ""
