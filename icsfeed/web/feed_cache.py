"""What a web process keeps of rendered feeds between requests, and why it stays correct.

The store holds every rendered feed; a web process only remembers, for a short while, what it
read from there: a feed's ETag and Last-Modified (for at most ``META_TTL_SECONDS``, or until
this process itself saves a new render) and recent bodies keyed by their ETag (a new render
has a new ETag, so a stale body is never served for a newer one). Several web processes over
one database therefore agree within a second, and none depends on another. While the
database is away, what is held here is what a process can still answer with (web/feeds.py).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from icsfeed.store import Store

#: how long a web process answers from a feed's ETag without asking the store again: a
#: calendar polls hourly, so a second is invisible to subscribers, but a feed that many
#: clients poll at once (a team feed, a calendar provider's fetchers) costs one lookup a second
META_TTL_SECONDS = 1.0


@dataclass(frozen=True)
class FeedMeta:
    """Enough to answer a conditional request: the render's ETag and when it changed."""

    etag: str
    last_modified: float


class FeedMetaCache:
    """Feed ETags read from the store, kept ``ttl`` seconds, forgotten when this process
    saves a render (``Store.saves`` changes), so a render here is visible at once."""

    def __init__(self, store: Store, ttl: float = META_TTL_SECONDS) -> None:
        self.store = store
        self.ttl = ttl
        self._items: dict[str, tuple[float, int, FeedMeta | None]] = {}

    def get(self, feed_id: str) -> FeedMeta | None:
        """The feed's current ETag, or None if it was never rendered. Raises StoreError."""
        now = time.monotonic()
        saves = self.store.saves
        item = self._items.get(feed_id)
        if item is not None and item[1] == saves and now - item[0] < self.ttl:
            return item[2]
        stored = self.store.get_feed(feed_id, with_body=False)
        meta = None if stored is None else FeedMeta(stored.etag, stored.last_modified)
        if len(self._items) > 10_000:  # bounded: ids come from the config, but be safe
            self._items.clear()
        self._items[feed_id] = (now, saves, meta)  # a dict assignment: safe across threads
        return meta

    def last(self, feed_id: str) -> FeedMeta | None:
        """What the store last said of the feed, however long ago (for answering while it is away)."""
        item = self._items.get(feed_id)
        return item[2] if item is not None else None


class BodyCache:
    """Feed bodies this process served lately, by (feed, ETag, gzip), at most ``max_bytes``.

    A body is only taken from here when its ETag is the feed's current one, so a re-render
    simply misses. What it saves is reading a megabyte blob out of the database per request.
    """

    def __init__(self, max_bytes: int = 128 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str, bool], bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, bool]) -> bytes | None:
        with self._lock:
            body = self._items.get(key)
            if body is not None:
                self._items.move_to_end(key)
            return body

    def held(self, feed_id: str, etag: str | None = None) -> tuple[str, bytes | None, bytes | None] | None:
        """(ETag, body, gzip body) of the render of this feed held here -- the one with
        ``etag`` if held, else the plain body's -- or None; either body may be missing."""
        with self._lock:
            keys = [k for k in self._items if k[0] == feed_id]
            if not keys:
                return None
            etags = {k[1] for k in keys}
            chosen = etag if etag in etags else next((k[1] for k in keys if not k[2]), keys[0][1])
            return chosen, self._items.get((feed_id, chosen, False)), self._items.get((feed_id, chosen, True))

    def feeds(self) -> int:
        """How many feeds this process holds a body of."""
        with self._lock:
            return len({k[0] for k in self._items})

    def put(self, key: tuple[str, str, bool], body: bytes) -> None:
        if len(body) > self.max_bytes // 4:
            return
        with self._lock:
            stale = [k for k in self._items if k[0] == key[0] and k[2] == key[2] and k != key]
            for k in stale:  # an older render of the same feed will never be asked for again
                self._size -= len(self._items.pop(k))
            if key not in self._items:
                self._items[key] = body
                self._size += len(body)
            while self._size > self.max_bytes and self._items:
                self._size -= len(self._items.popitem(last=False)[1])
