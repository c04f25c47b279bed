"""Who may open the admin pages (subscribe, status, metrics).

HTTP basic auth with credentials from the environment (``ICSFEED_ADMIN_USER`` /
``ICSFEED_ADMIN_PASSWORD``) or, failing that, from ``server.admin_user`` /
``server.admin_password``, compared in constant time. With none set, the pages answer only
to requests from a loopback address: the socket's peer (waitress sets ``REMOTE_ADDR`` from
it), never a forwarded-for header. A request that carries proxy headers is treated as not
local, because a reverse proxy on the same machine would otherwise make everyone local.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from flask import Request, Response, request

from icsfeed.config import Config

USER_ENV = "ICSFEED_ADMIN_USER"
PASSWORD_ENV = "ICSFEED_ADMIN_PASSWORD"
REALM = "icsfeed admin"
LOCAL_ONLY_NOTE = "admin pages are open to localhost only: set ICSFEED_ADMIN_USER/PASSWORD"
#: headers a reverse proxy adds; any of them means the peer address is not the client's
_PROXY_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP", "HTTP_VIA", "HTTP_X_FORWARDED_HOST")

Mode = Literal["credentials", "localhost", "half-configured"]


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
    return AdminAuth("localhost")


def is_local(req: Request) -> bool:
    """The TCP peer is a loopback address and no proxy says it forwarded someone else."""
    if any(h in req.environ for h in _PROXY_HEADERS):
        return False
    try:
        address = ipaddress.ip_address((req.remote_addr or "").split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _same(given: str | None, expected: str) -> bool:
    return hmac.compare_digest((given or "").encode("utf-8", "replace"), expected.encode("utf-8", "replace"))


def refusal(config: Config) -> Response | None:
    """None when the current request may see admin pages, else the response that refuses it."""
    auth = admin_auth(config)
    if auth.mode == "localhost":
        if is_local(request):
            return None
        return Response(f"Forbidden: {LOCAL_ONLY_NOTE}\n", status=403, mimetype="text/plain")
    if auth.mode == "half-configured":
        return Response(f"Forbidden: admin credentials are half-configured ({auth.where}): set both\n",
                        status=403, mimetype="text/plain")
    given = request.authorization
    assert auth.user is not None and auth.password is not None
    if given is not None and given.type == "basic":
        # both comparisons always run, so the time does not tell which half was wrong
        user_ok = _same(given.username, auth.user)
        password_ok = _same(given.password, auth.password)
        if user_ok & password_ok:
            return None
    response = Response("Authentication required\n", status=401, mimetype="text/plain")
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
