"""Sign-in for the page: one admin key, a server-side sign-in, CSRF on every form.

The admin signs in with CONTROL_API_KEY. Each sign-in is a row in SQLite (domain/signins.py); the
signed cookie holds only its random id, so sign-out revokes it for every copy of the cookie.
The row keeps a marker derived from SECRET_KEY and the key (never the key), so changing either
ends every sign-in. The JSON API keeps its X-API-Key header and is exempt from CSRF.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import tempfile
from pathlib import Path

from flask import (
    Blueprint,
    Flask,
    Request,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface, SessionMixin
from flask_wtf.csrf import CSRFError, CSRFProtect
from htmx_flask import make_response, request  # Flask's, with request.htmx and HX- headers

from ..config import MIN_SECRET_KEY_LENGTH, ConfigError
from ..domain import Panel
from ..domain.signins import SIGNIN_LIFETIME
from ..logs import install_redaction
from . import get_panel

bp = Blueprint("auth", __name__)
csrf = CSRFProtect()
log = logging.getLogger("vastpanel")

SESSION_ID = "signin"  # the only thing the cookie holds: the sign-in's id
SESSION_LIFETIME = SIGNIN_LIFETIME  # sliding: every request of an open page renews it
SECRET_KEY_FILE = "secret_key"
NO_KEY_MESSAGE = (
    "Sign-in is impossible: CONTROL_API_KEY is not set on the server. "
    "Set it in the server's environment and restart the panel."
)
CSRF_MESSAGE = (
    "This page's security token was refused (it is from an older sign-in or another "
    "server key). Nothing was done: reload the page and try again."
)


class PerRequestSecureSessions(SecureCookieSessionInterface):
    """Mark the session cookie Secure when the request came over HTTPS (SESSION_COOKIE_SECURE=auto).

    A request without the cookie (the gateway's activity posts, /v1/) gets an empty session
    without building the cookie's signer, which Flask builds first, on a hot path. The session
    is the one Flask would give, and is saved as before.
    """

    def open_session(self, app: Flask, request: Request) -> SessionMixin | None:
        if app.secret_key and not request.cookies.get(self.get_cookie_name(app)):
            return self.session_class()
        return super().open_session(app, request)

    def get_cookie_secure(self, app: Flask) -> bool:
        setting = app.config.get("SESSION_COOKIE_SECURE")
        if setting == "auto":
            return request.is_secure
        return bool(setting)


def init_app(app: Flask, panel: Panel, *, keep_secret_key: bool = True) -> None:
    """Set up the session cookie, CSRF protection and the sign-in routes.

    keep_secret_key false (a CLI command, which serves no page) uses a throwaway key rather
    than writing one beside the database.
    """
    config = panel.config
    secret_key = (
        load_secret_key(config.secret_key, config.db_path)
        if keep_secret_key
        else secrets.token_urlsafe(48)
    )
    install_redaction([secret_key])
    app.config.update(
        SECRET_KEY=secret_key,
        SESSION_COOKIE_NAME="vastpanel_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=(
            "auto" if config.session_cookie_secure is None else config.session_cookie_secure
        ),
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
        # The page stays open all day: a token that expired after an hour would make every
        # button fail. The token is still bound to the session, which ends on sign-out.
        WTF_CSRF_TIME_LIMIT=None,
    )
    app.session_interface = PerRequestSecureSessions()
    csrf.init_app(app)
    from .api import bp as api_bp

    csrf.exempt(api_bp)
    app.register_blueprint(bp)
    app.register_error_handler(CSRFError, csrf_failed)


def load_secret_key(configured: str, db_path: str) -> str:
    """Return the configured SECRET_KEY, else the one kept beside the database.

    The kept key is made once, readable by its owner only (0600), so sessions survive a
    restart and every worker process shares it.
    """
    if configured:
        return configured  # Config.from_env checked its length
    if db_path == ":memory:":
        log.warning("SECRET_KEY not set and no data folder: sessions end on restart.")
        return secrets.token_urlsafe(48)
    path = Path(db_path).resolve().parent / SECRET_KEY_FILE
    try:
        return _read_or_create_key(path)
    except OSError as exc:
        raise ConfigError(f"SECRET_KEY not set and {path} is unusable: {exc.strerror}") from None


def _read_or_create_key(path: Path) -> str:
    """Read the key file, creating it first (atomically, mode 0600) when it is missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secret_key.")  # mode 0600
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(48))
                handle.flush()
                os.fsync(handle.fileno())
            # link() fails if another process made the file first; then its key wins.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
        log.warning("%s was readable by others; it is now 0600.", path)
    key = path.read_text().strip()
    if len(key) < MIN_SECRET_KEY_LENGTH:
        raise ConfigError(f"SECRET_KEY not set and {path} holds no usable key; delete it.")
    return key


def _marker(control_key: str) -> str:
    """Derive what the session holds to show it was signed in with this key."""
    secret = current_app.config["SECRET_KEY"].encode()
    return hmac.new(secret, b"vastpanel-admin:" + control_key.encode(), hashlib.sha256).hexdigest()


def is_signed_in() -> bool:
    """Tell whether this request carries an open sign-in made with the current key."""
    if "signed_in" not in g:
        control_key = get_panel().config.control_api_key
        signin_id = session.get(SESSION_ID)
        g.signed_in = bool(
            control_key and isinstance(signin_id, str)
        ) and get_panel().signins.valid(signin_id, _marker(control_key))
    return g.signed_in


def open_signins():
    """List the open sign-ins, marking this browser's (for the page)."""
    panel = get_panel()
    return panel.signins.list_open(_marker(panel.config.control_api_key), session.get(SESSION_ID))


def sign_in_required():
    """Send the browser to sign-in: by HX-Redirect for htmx requests, else by a 302."""
    target = url_for("auth.signin")
    if request.htmx:
        return make_response("Sign-in required.", 401, redirect=target)
    return redirect(target, 302)


@bp.route("/signin", methods=["GET", "POST"])
def signin():
    """Show the sign-in form; sign in with CONTROL_API_KEY."""
    panel = get_panel()
    expected = panel.config.control_api_key
    if request.method == "GET":
        if is_signed_in():
            return redirect(url_for("pages.index"), 303)
        return render_signin(None, 200 if expected else 503)
    if not expected:
        return render_signin(NO_KEY_MESSAGE, 503)
    given = request.form.get("key", "")
    check = panel.keys.check(given.strip(), request.remote_addr, "signin")
    if check.retry_after_s is not None:
        message = (
            "Too many wrong keys from this address. Sign-in is refused for "
            f"{check.retry_after_header} s more; nothing was checked."
        )
        page, status = render_signin(message, 429)
        return page, status, {"Retry-After": check.retry_after_header}
    if not check.accepted:
        # Answered at once: the brute-force limit is the lockout (lockout.py), not a sleep.
        log.warning("Wrong key at sign-in from %s", request.remote_addr)
        return render_signin("Wrong key. Sign in with the server's CONTROL_API_KEY.", 401)
    session.clear()
    session.permanent = True
    session[SESSION_ID] = panel.signins.open(
        _marker(expected), request.remote_addr, request.user_agent.string
    )
    panel.audit.record("admin_signed_in", "admin", remote_addr=request.remote_addr)
    return redirect(url_for("pages.index"), 303)


@bp.post("/signout")
def signout():
    """End this browser's sign-in, on the server too: a copy of the cookie stops working."""
    if is_signed_in():
        get_panel().signins.revoke(session[SESSION_ID])
        get_panel().audit.record("admin_signed_out", "admin", remote_addr=request.remote_addr)
    session.clear()
    flash("Signed out.")
    return redirect(url_for("auth.signin"), 303)


@bp.post("/signout/everywhere")
def signout_everywhere():
    """End every sign-in of the page, in every browser."""
    if not is_signed_in():
        return sign_in_required()
    ended = get_panel().signins.revoke_all()
    get_panel().audit.record(
        "admin_signed_out_everywhere", "admin", remote_addr=request.remote_addr, signins_ended=ended
    )
    session.clear()
    flash(f"Signed out everywhere ({ended} sign-in{'s' if ended != 1 else ''} ended).")
    return redirect(url_for("auth.signin"), 303)


def render_signin(error: str | None, status: int):
    """Render the sign-in page with an optional error."""
    configured = bool(get_panel().config.control_api_key)
    page = render_template(
        "signin.html",
        error=error or (None if configured else NO_KEY_MESSAGE),
        configured=configured,
    )
    return page, status


def csrf_failed(exc: CSRFError):
    """Refuse a POST without a valid token, saying why; nothing was done."""
    log.info("CSRF refused on %s %s: %s", request.method, request.path, exc.description)
    if request.endpoint == "auth.signin":
        return render_signin("The sign-in form had expired; please try again.", 400)
    if not is_signed_in():
        return sign_in_required()
    if request.htmx:
        # htmx does not swap a 400: the page's script shows this text in its error banner.
        return CSRF_MESSAGE, 400, {"Content-Type": "text/plain; charset=utf-8"}
    return render_template("message.html", title="Not done", message=CSRF_MESSAGE), 400
