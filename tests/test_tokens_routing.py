"""Feed tokens (HMAC, rotation, short URLs) and routing of events to account and team feeds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import write_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icsfeed import tokens
from icsfeed.config import load_config
from icsfeed.routing import account_feed, affected_feeds, all_feeds, subscription_url, team_feed
from icsfeed.store import Touched


def test_secret_key_is_generated_once_and_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(tokens.SECRET_ENV, raising=False)
    first = tokens.load_secret_key(tmp_path)
    assert len(first) == 32 and tokens.load_secret_key(tmp_path) == first
    assert oct((tmp_path / "secret_key").stat().st_mode & 0o777) == "0o600"
    monkeypatch.setenv(tokens.SECRET_ENV, "from-the-environment")
    assert tokens.load_secret_key(tmp_path) == b"from-the-environment"


def test_tokens_differ_per_feed_and_version_and_check_in_constant_time() -> None:
    secret = os.urandom(32)
    a1 = tokens.feed_token(secret, "account/acme", 1)
    assert a1 == tokens.feed_token(secret, "account/acme", 1)
    assert a1 != tokens.feed_token(secret, "account/acme", 2) != tokens.feed_token(secret, "account/globex", 1)
    assert len(a1) == 22
    assert tokens.check_token(secret, "account/acme", 1, a1)
    assert not tokens.check_token(secret, "account/acme", 2, a1)
    assert not tokens.check_token(secret, None, 1, a1)
    assert not tokens.check_token(secret, "account/acme", 1, None)
    assert not tokens.check_token(secret, "account/acme", 1, "é" * 22)


def test_event_uid_depends_on_source_and_key_only() -> None:
    uid = tokens.event_uid("alerts", "fp1", "feeds.example.com")
    assert uid == tokens.event_uid("alerts", "fp1", "feeds.example.com")
    assert uid != tokens.event_uid("alerts", "fp2", "feeds.example.com") != tokens.event_uid("other", "fp1", "feeds.example.com")
    assert uid.endswith("@feeds.example.com") and len(uid.split("@")[0]) == 32


CONFIG = """
server: {base_url: "https://calendar.very-long-hostname-for-a-company.example.com/icsfeed"}
accounts:
  - {id: acme, name: ACME, keys: [ACME Corp, "10042"]}
  - {id: globex, name: Globex}
teams:
  - {id: ops, name: Ops, kinds: [alert, maintenance]}
  - {id: acme-crit, name: ACME critical, accounts: [acme], kinds: [alert], min_severity: critical}
"""


def test_routing_matches_keys_kinds_and_severity(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path / "c", {"a.yaml": CONFIG}), tmp_path / "d")
    acme = account_feed(config, config.accounts["acme"])
    assert acme.account_keys == {"acme", "acme corp", "10042"}
    ops, crit = team_feed(config, config.teams["ops"]), team_feed(config, config.teams["acme-crit"])
    alert_acme = Touched("10042", "alert", 4)
    warning_acme = Touched("acme corp", "alert", 2)
    unclaimed_silence = Touched(None, "maintenance", None)
    ticket_globex = Touched("globex", "ticket", None)
    assert acme.accepts(alert_acme) and acme.accepts(warning_acme) and not acme.accepts(unclaimed_silence)
    assert ops.accepts(unclaimed_silence) and ops.accepts(warning_acme) and not ops.accepts(ticket_globex)
    assert crit.accepts(alert_acme) and not crit.accepts(warning_acme) and not crit.accepts(ticket_globex)
    assert affected_feeds(config, {ticket_globex}) == {"account/globex"}
    assert affected_feeds(config, {alert_acme}) == {"account/acme", "team/ops", "team/acme-crit"}


def test_subscription_urls_stay_under_googles_limit(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path / "c", {"a.yaml": CONFIG}), tmp_path / "d")
    for spec in all_feeds(config):
        url = subscription_url(config, os.urandom(32), spec)
        assert url.startswith("https://calendar.very-long-hostname-for-a-company.example.com/icsfeed/")
        assert len(url) < 256, url


_TOUCHED = st.builds(Touched, st.sampled_from([None, "acme", "acme corp", "10042", "globex", "initech", "ACME"]),
                     st.sampled_from(["alert", "maintenance", "ticket", "backup"]),
                     st.sampled_from([None, 1, 2, 3, 4]))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(touched=st.lists(_TOUCHED, max_size=12))
def test_affected_feeds_by_account_key_equals_every_feed_tested(tmp_path: Path, touched: list[Touched]) -> None:
    """The look-up by account key gives what testing every feed against every touched gives."""
    config = load_config(write_config(tmp_path / "c", {"a.yaml": CONFIG}), tmp_path / "d")
    naive = {spec.feed_id for spec in all_feeds(config) if any(spec.accepts(t) for t in touched)}
    assert affected_feeds(config, touched) == naive
    assert affected_feeds(config, iter(touched)) == naive
