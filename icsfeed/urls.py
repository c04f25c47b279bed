"""The one sanitiser every published link goes through (feeds, insight texts, pages).

An origin's URL is untrusted text: it may be ``javascript:`` or ``data:``, relative, carry a
password, hold spaces, quotes or a Unicode host. :func:`safe_url` publishes it as a valid
RFC 3986 URI or not at all: only absolute http(s) URLs with a host, the scheme and host in
lower case, an IDN host in punycode (the ``idna`` codec), no userinfo, and every character
RFC 3986 does not allow in its component (spaces, quotes, non-ASCII, a stray ``%``)
percent-encoded as UTF-8. Control characters or a lone surrogate refuse the whole URL:
they are never part of a real link, and a CR/LF would be an injection attempt.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from urllib.parse import quote, urlsplit, urlunsplit

#: longer links are refused (the input, and the published form after encoding)
MAX_URL = 2000

_REFUSED = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_STRAY_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}\.?")
# RFC 3986 section 3.3-3.5: what each component keeps as it is ("%" only before two hex
# digits: a stray one is encoded first). "'" is a legal sub-delim but is encoded too, so
# that no published link holds a quote of either kind.
_PATH_SAFE = "%!$&()*+,;=:@/"
_QUERY_SAFE = _PATH_SAFE + "?"
#: a link that is already what :func:`_published` would make of it (lower-case http(s), an
#: ASCII host of valid labels, a short port, no "%" and nothing to encode): most origin links
_PUBLISHED = re.compile(
    r"https?://(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?::[0-9]{1,4})?"
    r"(?:/[A-Za-z0-9._~!$&()*+,;=:@/-]*)?(?:\?[A-Za-z0-9._~!$&()*+,;=:@/?-]*)?(?:#[A-Za-z0-9._~!$&()*+,;=:@/?-]*)?")


def safe_url(url: object) -> str | None:
    """``url`` as a valid absolute http(s) RFC 3986 URI, or None if it cannot be one."""
    if not isinstance(url, str) or not url:
        return None
    if len(url) <= MAX_URL and _PUBLISHED.fullmatch(url):
        return url  # the same as _published(url), at a tenth of the cost
    return _published(url)


@lru_cache(maxsize=4096)
def _published(url: str) -> str | None:
    url = url.strip()
    if not url or len(url) > MAX_URL or _REFUSED.search(url):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError when it is not a number in range
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    host = _host(parts.hostname)
    if host is None:
        return None
    netloc = host if port is None else f"{host}:{port}"
    published = urlunsplit((scheme, netloc, _quote(parts.path, _PATH_SAFE), _quote(parts.query, _QUERY_SAFE),
                            _quote(parts.fragment, _QUERY_SAFE)))
    return published if len(published) <= MAX_URL else None


def _host(hostname: str) -> str | None:
    """The host in ASCII (punycode for IDN, brackets for IPv6), or None if it is no host."""
    if ":" in hostname:  # urlsplit took it out of [...]: an IPv6 literal or nothing
        try:
            return f"[{ipaddress.IPv6Address(hostname).compressed}]"
        except ValueError:
            return None
    try:
        ascii_host = hostname.encode("idna").decode("ascii").lower()
    except UnicodeError:  # an empty or over-long label, or characters IDNA forbids
        return None
    return ascii_host if _HOST.fullmatch(ascii_host) else None


def _quote(component: str, safe: str) -> str:
    return quote(_STRAY_PERCENT.sub("%25", component), safe=safe)
