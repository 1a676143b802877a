"""Sign in with the credentials of `docker login`, and sign out; both forms carry a CSRF token."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from gateway import metrics
from gateway.auth.identity import AuthenticationFailed
from ui.session import Session, csrf_matches, new_session
from ui.site import Site, Viewer, local_path, retry_after

MAX_FIELD = 1024
CSRF_REFUSED = (
    "This form expired or was not sent from this site, so nothing was done. "
    "Reload the page and try again."
)


async def login(site: Site, request: Request, viewer: Viewer) -> Response:
    """GET: the sign-in form. POST: check the credentials and start a session."""
    next_path = local_path(request.query_params.get("next"))
    if request.method == "GET":
        if getattr(request.state, "ui_session", None) is None:
            request.state.ui_session = new_session()  # carries the form's CSRF token
        return _form(site, request, viewer, next_path)

    form = await request.form(max_files=0, max_fields=8)
    next_path = local_path(_text(form.get("next")), next_path)
    if not csrf_matches(getattr(request.state, "ui_session", None), form.get("csrf")):
        return site.error(request, viewer, 403, "csrf", CSRF_REFUSED)
    username = _text(form.get("username")).strip()
    password = _text(form.get("password"))
    engine = viewer.engine
    try:
        if not username or not password:
            raise AuthenticationFailed("empty username or password", username)
        identity = await site.sign_in(request, engine, username, password)
    except AuthenticationFailed as exc:
        wait = retry_after(exc)
        status = 401 if wait is None else 429
        if wait is not None:
            metrics.LOCKOUTS.inc()
        site.services.audit.write(
            {
                "event": "ui_login",
                "status": status,
                "username": username[:200],
                "reason": exc.reason,
            }
        )
        message = (
            "Wrong username or password."
            if wait is None
            else f"Too many failed attempts: try again in {wait} seconds."
        )
        return _form(
            site, request, viewer, next_path, username=username, status=status, error=message
        )
    # A new session and a new CSRF token: nothing from before sign-in carries over.
    via = getattr(identity, "via", None)
    request.state.ui_session = new_session(identity.subject, identity.fingerprint, via)
    site.services.audit.write(
        {"event": "ui_login", "status": 200, "username": username, "subject": str(identity.subject)}
    )
    return RedirectResponse(next_path, status_code=303)


async def logout(site: Site, request: Request, viewer: Viewer) -> Response:
    """POST only: end the session (the form carries the CSRF token). Its id is revoked, so a
    copy of the cookie kept from before is refused too (on every replica, with Redis)."""
    form = await request.form(max_files=0, max_fields=4)
    session: Session | None = getattr(request.state, "ui_session", None)
    if not csrf_matches(session, form.get("csrf")):
        return site.error(request, viewer, 403, "csrf", CSRF_REFUSED)
    if session is not None and session.signed_in and session.sid is not None:
        await site.revocations.revoke(session.sid, session.remaining())
        site.services.audit.write(
            {"event": "ui_logout", "status": 200, "subject": str(session.subject)}
        )
    request.state.ui_session = None
    request.state.ui_session_cleared = True
    return RedirectResponse(site.path(request, "ui_home"), status_code=303)


def _form(
    site: Site,
    request: Request,
    viewer: Viewer,
    next_path: str,
    *,
    username: str = "",
    error: str | None = None,
    status: int = 200,
) -> Response:
    data: dict[str, object] = {"next": next_path, "username": username, "error": error}
    data["oidc"] = None
    settings = site.settings
    if site.services.authenticator.people is not None:  # the provider's button (docs/oidc.md)
        data["oidc"] = {
            "provider": settings.oidc_provider_name,
            "hide_password_form": settings.oidc_hide_password_form,
        }
    return site.render(request, viewer, "login.html", data, status=status, sign_in_next=False)


def _text(value: object) -> str:
    return value[:MAX_FIELD] if isinstance(value, str) else ""
