"""Who may open the admin pages (subscribe, status, metrics): never anyone without credentials.

The subscribe page lists every feed token, so an admin page answers only a request that
proves who it is, wherever it came from. The peer address is never a credential: behind a
reverse proxy on the same machine every request comes from 127.0.0.1, with or without
X-Forwarded-For, so no rule about "local" requests can be safe.

* **Credentials configured** (``ICSFEED_ADMIN_USER``/``ICSFEED_ADMIN_PASSWORD``, else
  ``server.admin_user``/``server.admin_password``): HTTP basic auth, compared in constant time.
* **None configured** (a fresh install): a random admin token is generated once into the data
  directory (``admin_token``, mode 0600). ``icsfeed serve`` prints a login link
  (``/login?token=…``) which sets a signed session cookie (HttpOnly, SameSite=Strict, Secure
  over https), as Jupyter does. ``Authorization: Bearer <token>`` works too (Prometheus).
* Half of a pair configured: everyone is refused until both halves are set.

``/healthz`` and the month view (protected by the feed's own token) are not admin pages.
"""

from __future__ import annotations

import functools
import hmac
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from flask import Blueprint, Request, Response, redirect, render_template, request, url_for
from itsdangerous import BadSignature, TimestampSigner

from icsfeed.config import Config

log = logging.getLogger(__name__)

USER_ENV = "ICSFEED_ADMIN_USER"
PASSWORD_ENV = "ICSFEED_ADMIN_PASSWORD"
REALM = "icsfeed admin"
TOKEN_FILE = "admin_token"
COOKIE = "icsfeed_admin"
#: how long a login by token lasts
SESSION_SECONDS = 7 * 86400
TOKEN_NOTE = ("open the login link `icsfeed serve` printed, or /login with the token from the "
              f"{TOKEN_FILE} file in icsfeed's data directory (or set {USER_ENV}/{PASSWORD_ENV})")

Mode = Literal["credentials", "token", "half-configured"]

bp = Blueprint("admin", __name__)


@dataclass(frozen=True)
class AdminAuth:
    """How admin pages are protected right now (read per request: env and config may change)."""

    mode: Mode
    user: str | None = None
    password: str | None = None
    where: str = ""


def admin_auth(config: Config) -> AdminAuth:
    """The environment wins over the config file; both halves must come from the same place."""
    env_user, env_password = os.environ.get(USER_ENV) or None, os.environ.get(PASSWORD_ENV) or None
    if env_user or env_password:
        user, password, where = env_user, env_password, f"{USER_ENV}/{PASSWORD_ENV}"
    else:
        user, password = config.server.admin_user or None, config.server.admin_password or None
        where = "server.admin_user/admin_password"
    if user and password:
        return AdminAuth("credentials", user, password, where)
    if user or password:
        return AdminAuth("half-configured", where=where)
    return AdminAuth("token")


# --- the generated token --------------------------------------------------------------------

def admin_token_path(data_dir: Path) -> Path:
    return Path(data_dir) / TOKEN_FILE


def load_admin_token(data_dir: Path) -> str:
    """The admin token: read from the data directory, or generated there once (mode 0600).

    Several processes sharing the directory agree: a token another one wrote meanwhile is
    never overwritten. Delete the file (and restart) to revoke it and every session made with it.
    """
    path = admin_token_path(data_dir)
    try:
        token = path.read_text(encoding="ascii").strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{TOKEN_FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(secrets.token_urlsafe(24) + "\n")
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text(encoding="ascii").strip()


def login_link(base: str, token: str) -> str:
    """The link that logs a browser in (``base``: scheme, host and port it reaches icsfeed at)."""
    return f"{base.rstrip('/')}/login?token={token}"


def _signer(token: str) -> TimestampSigner:
    return TimestampSigner(token, salt="icsfeed admin session")


def session_value(token: str) -> str:
    """A session cookie's value: signed (and dated) with the admin token itself."""
    return _signer(token).sign(b"admin").decode("ascii")


def _valid_session(token: str, value: str | None) -> bool:
    if not value:
        return False
    try:  # itsdangerous compares signatures in constant time
        payload = _signer(token).unsign(value, max_age=SESSION_SECONDS)
    except BadSignature:  # also SignatureExpired
        return False
    return payload == b"admin"


def _same(given: str | None, expected: str) -> bool:
    return hmac.compare_digest((given or "").encode("utf-8", "replace"), expected.encode("utf-8", "replace"))


def client_address(req: Request) -> str:
    """The client's address for log lines: the peer, or what a trusted proxy forwarded."""
    return req.remote_addr or "?"


# --- the check -------------------------------------------------------------------------------

def _plain(text: str, status: int) -> Response:
    return Response(text, status=status, mimetype="text/plain")


def refusal(config: Config) -> Response | None:
    """None when the current request may see admin pages, else the response that refuses it."""
    auth = admin_auth(config)
    if auth.mode == "half-configured":
        return _plain(f"Forbidden: admin credentials are half-configured ({auth.where}): set both\n", 403)
    if auth.mode == "credentials":
        return _basic_refusal(auth)
    try:
        token = load_admin_token(config.data_dir)
    except OSError as exc:
        log.error("cannot read or create the admin token in %s: %s", config.data_dir, exc)
        return _plain(f"Forbidden: no admin token can be read or made; set {USER_ENV}/{PASSWORD_ENV}\n", 403)
    given = request.authorization
    bearer = given.token if given is not None and given.type == "bearer" else None
    cookie = request.cookies.get(COOKIE)
    if (bearer is not None and _same(bearer, token)) or _valid_session(token, cookie):
        return None
    if bearer is not None or cookie:
        log.warning("admin request with a wrong token or session from %s", client_address(request))
    response = _plain(f"Authentication required: {TOKEN_NOTE}\n", 401)
    response.headers["WWW-Authenticate"] = f'Bearer realm="{REALM}"'
    return response


def _basic_refusal(auth: AdminAuth) -> Response | None:
    assert auth.user is not None and auth.password is not None
    given = request.authorization
    if given is not None and given.type == "basic":
        # both comparisons always run, so the time does not tell which half was wrong
        user_ok = _same(given.username, auth.user)
        password_ok = _same(given.password, auth.password)
        if user_ok & password_ok:
            return None
        log.warning("admin request with wrong credentials from %s", client_address(request))
    response = _plain("Authentication required\n", 401)
    response.headers["WWW-Authenticate"] = f'Basic realm="{REALM}", charset="UTF-8"'
    return response


def admin_required(current_config: Callable[[], Config]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator for admin views; ``current_config`` gives the running config per request."""
    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            refused = refusal(current_config())
            if refused is not None:
                refused.headers["Cache-Control"] = "no-store"
                return refused
            return view(*args, **kwargs)
        return wrapped
    return decorate


# --- logging in with the token -------------------------------------------------------------------

def _current_config() -> Config:
    from icsfeed.web import context

    return context().live.current()


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response | tuple[str, int]:
    """``/login?token=…`` (the printed link) or the form: a session cookie, then the subscribe page."""
    config = _current_config()
    auth = admin_auth(config)
    if auth.mode != "token":  # basic auth: the browser asks for the password on the page itself
        return _no_store(redirect(url_for("pages.subscribe"), 303))
    given = request.form.get("token") if request.method == "POST" else request.args.get("token")
    if given is None:
        return render_template("login.html", wrong=False), 200
    try:
        token = load_admin_token(config.data_dir)
    except OSError as exc:
        log.error("cannot read or create the admin token in %s: %s", config.data_dir, exc)
        return _plain(f"Forbidden: no admin token can be read or made; set {USER_ENV}/{PASSWORD_ENV}\n", 403)
    if not _same(given.strip(), token):
        log.warning("admin login with a wrong token from %s", client_address(request))
        return render_template("login.html", wrong=True), 403
    log.info("admin login from %s", client_address(request))
    response = _no_store(redirect(url_for("pages.subscribe"), 303))
    response.set_cookie(COOKIE, session_value(token), max_age=SESSION_SECONDS, path="/", httponly=True,
                        samesite="Strict", secure=request.is_secure)
    return response


@bp.route("/logout", methods=["POST"])
def logout() -> Response:
    response = _no_store(redirect(url_for("admin.login"), 303))
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="Strict", secure=request.is_secure)
    return response


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response
