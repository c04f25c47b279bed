"""Forwarded headers, believed only from the reverse proxies the config names.

Behind nginx, the TCP peer is the proxy: the client's address, the scheme (https) and the
host it asked for arrive in ``X-Forwarded-For``, ``-Proto`` and ``-Host``. werkzeug's
ProxyFix applies them, but it trusts by hop count, whoever sent them. So
:class:`TrustedProxies` hands a request to ProxyFix only when its peer (``REMOTE_ADDR``,
which waitress sets from the socket) is in ``server.trusted_proxies``; from any other peer
the headers are removed, so nothing downstream can read them. Waitress itself is told to
leave them alone (see ``icsfeed serve``): trusting is decided here, once.

What this changes is what the request knows of itself (``request.scheme``, ``.host``,
``.remote_addr``): the Secure flag of the admin cookie, the "reached at" check of the
subscribe page and the client address in admin log lines. Subscription URLs never come
from a request: ``server.base_url`` is authoritative (see routing.subscription_url).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any

from werkzeug.middleware.proxy_fix import ProxyFix

from icsfeed.live import LiveConfig

#: what ProxyFix reads (the value the nearest proxy added), and RFC 7239's Forwarded: from a
#: peer that is not a trusted proxy they are removed
FORWARDED_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST",
                     "HTTP_X_FORWARDED_PORT", "HTTP_X_FORWARDED_PREFIX", "HTTP_FORWARDED")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=64)
def _networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(e, strict=False) for e in entries)


@lru_cache(maxsize=4096)
def _trusted(peer: str, entries: tuple[str, ...]) -> bool:
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in _networks(entries))


def is_trusted_proxy(peer: str | None, entries: tuple[str, ...]) -> bool:
    """Whether a TCP peer is one of ``server.trusted_proxies`` (addresses or CIDRs)."""
    return bool(entries and peer) and _trusted(peer or "", entries)


class TrustedProxies:
    """WSGI middleware: ProxyFix for requests from trusted proxies, no forwarded headers for others."""

    def __init__(self, app: Callable[..., Iterable[bytes]], live: LiveConfig) -> None:
        self.app = app
        self.live = live
        # one proxy in front: the last value of each header is the one it set
        self.fixed = ProxyFix(app, x_for=1, x_proto=1, x_host=1, x_port=1, x_prefix=1)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        entries = self.live.current().server.trusted_proxies
        if entries and is_trusted_proxy(environ.get("REMOTE_ADDR"), entries):
            return self.fixed(environ, start_response)  # type: ignore[no-any-return]
        for name in FORWARDED_HEADERS:
            environ.pop(name, None)
        return self.app(environ, start_response)
