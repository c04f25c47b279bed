"""Routing: which feeds exist, which events each shows, and which feeds a change touches.

An account feed shows the events whose origin account key is one of the account's
``keys`` (or its id), case-insensitively. A team feed selects accounts (``"*"``: every
event, including those no account claims, such as a silence with no customer label),
kinds and a minimum severity (events without a severity always pass).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone
from typing import Literal
from urllib.parse import quote

from icsfeed.config import AccountConfig, Config, TeamConfig
from icsfeed.model import severity_rank
from icsfeed.store import FeedQuery, Touched
from icsfeed.tokens import feed_token

FeedType = Literal["account", "team"]


@dataclass(frozen=True)
class FeedSpec:
    """One feed: its id in the store, who sees it, and the query of its events."""

    feed_id: str  # "account/acme", "team/ops"
    type: FeedType
    id: str
    name: str
    color: str
    token_version: int
    account_keys: frozenset[str] | None
    kinds: frozenset[str] | None
    min_severity: int | None
    window_back_days: int
    window_ahead_days: int

    def query(self, now: datetime) -> FeedQuery:
        """The window counts whole days (UTC) so a feed's bytes change at most daily."""
        today = datetime.combine(now.astimezone(timezone.utc).date(), time(0), timezone.utc)
        start = today - timedelta(days=self.window_back_days)
        end = today + timedelta(days=self.window_ahead_days + 1)
        return FeedQuery(start.timestamp(), end.timestamp(), self.account_keys, self.kinds, self.min_severity)

    @property
    def path(self) -> str:
        return f"/feeds/{self.id}.ics" if self.type == "account" else f"/teams/{self.id}.ics"

    def accepts(self, touched: Touched) -> bool:
        if self.account_keys is not None and touched.account_key not in self.account_keys:
            return False
        if self.kinds is not None and touched.kind not in self.kinds:
            return False
        if self.min_severity is not None and touched.severity_rank is not None:
            return touched.severity_rank >= self.min_severity
        return True


def account_feed(config: Config, account: AccountConfig) -> FeedSpec:
    return FeedSpec(
        feed_id=f"account/{account.id}", type="account", id=account.id, name=account.name,
        color=account.color or config.feeds.color, token_version=account.token_version,
        account_keys=frozenset(account.match_keys), kinds=None, min_severity=None,
        window_back_days=account.window_back_days if account.window_back_days is not None else config.feeds.window_back_days,
        window_ahead_days=account.window_ahead_days if account.window_ahead_days is not None else config.feeds.window_ahead_days,
    )


def team_feed(config: Config, team: TeamConfig) -> FeedSpec:
    keys: frozenset[str] | None = None
    if team.accounts != "*":
        keys = frozenset(k for acc in team.accounts for k in config.accounts[acc].match_keys)
    return FeedSpec(
        feed_id=f"team/{team.id}", type="team", id=team.id, name=team.name,
        color=team.color or config.feeds.color, token_version=team.token_version,
        account_keys=keys, kinds=frozenset(team.kinds) if team.kinds else None,
        min_severity=severity_rank(team.min_severity),
        window_back_days=config.feeds.window_back_days, window_ahead_days=config.feeds.window_ahead_days,
    )


def all_feeds(config: Config) -> list[FeedSpec]:
    return [account_feed(config, a) for a in config.accounts.values()] + \
           [team_feed(config, t) for t in config.teams.values()]


def find_feed(config: Config, feed_type: FeedType, feed_id: str) -> FeedSpec | None:
    if feed_type == "account":
        account = config.accounts.get(feed_id)
        return account_feed(config, account) if account else None
    team = config.teams.get(feed_id)
    return team_feed(config, team) if team else None


def affected_feeds(config: Config, touched: Iterable[Touched]) -> set[str]:
    """Feeds that show any of the touched events (before or after the change).

    A feed of some accounts is tested against the touched of its own account keys only
    (looked up by key): a poll that touches every one of 1,000 accounts tests each account
    feed against its own few, not against all 1,000 (1,000,000 ``accepts`` a poll before)."""
    touched = set(touched)
    by_account: dict[str | None, list[Touched]] = {}
    for t in touched:
        by_account.setdefault(t.account_key, []).append(t)
    found = set()
    for spec in all_feeds(config):
        keys = spec.account_keys
        candidates: Iterable[Touched]
        if keys is None:
            candidates = touched
        elif len(keys) <= len(by_account):
            candidates = [t for k in keys for t in by_account.get(k, ())]
        else:
            candidates = [t for k, ts in by_account.items() if k in keys for t in ts]
        if any(spec.accepts(t) for t in candidates):
            found.add(spec.feed_id)
    return found


def subscription_url(config: Config, secret: bytes, spec: FeedSpec) -> str:
    """The https URL to paste into a calendar (Google: at most 256 characters).

    Built from ``server.base_url`` alone, never from a request: the address subscribers
    reach stays the configured one whatever Host or X-Forwarded-* headers a request brought.
    """
    token = feed_token(secret, spec.feed_id, spec.token_version)
    return f"{config.server.base_url}{spec.path}?token={token}"


def view_path(spec: FeedSpec) -> str:
    """The path of a feed's month view (``/view/<account>``, ``/view/team/<team>``)."""
    return f"/view/{quote(spec.id, safe='')}" if spec.type == "account" else f"/view/team/{quote(spec.id, safe='')}"


def view_url(config: Config, secret: bytes, spec: FeedSpec) -> str:
    """The absolute URL of the feed's own month view, with the feed's own token: the only
    view link a feed may carry (a team feed never links an account's view)."""
    token = feed_token(secret, spec.feed_id, spec.token_version)
    return f"{config.server.base_url}{view_path(spec)}?token={token}"
