"""The tables, as the code reads and writes them today.

Alembic migrations (``migrations/versions/``) build the same schema step by step; a test
compares a migrated database with these definitions, so change both together.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

#: longest account key stored (``events.account_key``, ``insights_due.account_key``); longer
#: origin values are cut to it, the same way on every backend
ACCOUNT_KEY_LENGTH = 256
#: longest origin key stored (``events.key``); a longer one is skipped with a reason
EVENT_KEY_LENGTH = 512
#: longest source id: a configured id (64) or an insight's ("insight-<detector>:<account id>")
SOURCE_ID_LENGTH = 160

#: the feed indexes' columns after their leading ones: the order's tie-break, what the feed
#: query tests, what a re-render reads (icsfeed.store.feeds.FeedsMixin.feed_versions)
FEED_INDEX_TAIL = ("id", "end_ts", "recurring", "kind", "severity_rank", "sequence", "last_modified")
#: what an insight refresh reads of an account's rows besides those (icsfeed.store.history.
#: account_versions, migration 0017): the account's index covers it, so a refresh reads one
#: contiguous run of index pages, not 1,000s of table rows scattered over the whole file
VERSION_INDEX_TAIL = ("gone", "content_hash", "source", "facts", "traits")

events_table = Table(
    "events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source", String(SOURCE_ID_LENGTH), nullable=False),
    Column("key", String(EVENT_KEY_LENGTH), nullable=False),
    Column("uid", String(128), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("account_key", String(ACCOUNT_KEY_LENGTH)),  # origin account key, lower-cased
    Column("severity_rank", Integer),
    Column("start_ts", Float, nullable=False),
    Column("end_ts", Float, nullable=False),
    Column("recurring", Boolean, nullable=False, default=False),
    Column("data", LargeBinary, nullable=False),  # the Event's JSON, encoded (icsfeed.store.codec)
    Column("content_hash", String(64), nullable=False),
    Column("sequence", Integer, nullable=False, default=0),
    Column("created", Float, nullable=False),
    Column("last_modified", Float, nullable=False),
    Column("gone", Boolean, nullable=False, default=False),
    Column("vevent", LargeBinary),  # rendered VEVENT fragment, encoded like data; cleared on change
    Column("vevent_key", String(64)),  # render settings the fragment was made with
    #: still open (a firing alert, an open ticket; icsfeed.feed_filters.is_open); NULL: not known yet
    Column("is_open", Boolean),
    #: digest of the origin record (and the source's settings) the event was mapped from
    #: (icsfeed.sources.mapping); NULL for every write that did not map one (push, absence)
    Column("record_digest", String(32)),
    #: digests of the stored event without the fields some insight detectors never read
    #: (icsfeed.store.facts, migration 0014); NULL: written before it, worked out when read
    Column("facts", String(64)),
    #: cancelled / a date / no end, as bits (icsfeed.store.facts.row_traits; migration 0014)
    Column("traits", SmallInteger),
    UniqueConstraint("source", "key", name="uq_events_source_key"),
    # covering indexes of a feed's event list (migration 0013): a re-render reads every event's
    # (id, sequence, last_modified) in feed order (start_ts, id) from the index alone; the
    # account's also covers the versions an insight refresh digests (migration 0017)
    Index("ix_events_feed_account", "account_key", "start_ts", *FEED_INDEX_TAIL, *VERSION_INDEX_TAIL),
    Index("ix_events_feed_window", "start_ts", *FEED_INDEX_TAIL, "account_key"),
)

source_state_table = Table(
    "source_state", metadata,
    Column("source", String(SOURCE_ID_LENGTH), primary_key=True),
    Column("last_attempt", Float),
    Column("last_success", Float),
    Column("last_error", Text),
    Column("last_error_at", Float),
    Column("consecutive_failures", Integer, nullable=False, default=0),
    Column("cursor", Text),
    Column("last_duration", Float),
    Column("last_result", Text),  # JSON summary of the last poll
    Column("next_poll", Float),
    Column("polls_total", Integer, nullable=False, default=0),
    Column("failures_total", Integer, nullable=False, default=0),
    #: digest of the origin's raw answer that the stored events came from (see Source.answer_unchanged);
    #: cleared by a failed poll, so that the next one is applied in full
    Column("answer_digest", String(64)),
)

feeds_table = Table(
    "feeds", metadata,
    Column("feed_id", String(160), primary_key=True),
    #: zstd-compressed (icsfeed.store.codec.pack_body); NULL once stored as segments (migration 0015)
    Column("body", LargeBinary),
    Column("body_gz", LargeBinary),
    Column("etag", String(80)),
    Column("last_modified", Float),
    Column("rendered_at", Float),
    Column("render_seconds", Float),
    Column("event_count", Integer),
    Column("dirty", Boolean, nullable=False, default=True),
    #: bumped by every mark_dirty; a render clears ``dirty`` only if no change came in meanwhile
    Column("dirty_gen", Integer, nullable=False, default=0),
    #: the dirty generation the body was rendered from: an older render never overwrites it
    Column("body_gen", Integer),
    Column("render_key", String(64)),
    Column("window_day", String(10)),
    #: the body as segments (icsfeed.store.segments): the VCALENDAR lines before and after the
    #: VEVENTs, and the ordered ``digest:length`` list of the segments between (feed_segments)
    Column("body_head", LargeBinary),
    Column("body_tail", LargeBinary),
    Column("segments", Text),
)

#: the segments of the feeds' bodies (icsfeed.store.segments), each zstd-compressed, by the
#: sha256 of its bytes; a feed's rows are the segments its body lists, no others
feed_segments_table = Table(
    "feed_segments", metadata,
    Column("feed_id", String(160), primary_key=True),
    Column("digest", String(32), primary_key=True),
    Column("blob", LargeBinary, nullable=False),
)

#: accounts whose insights a poll made out of date (see Store.mark_insights_due)
insights_due_table = Table(
    "insights_due", metadata,
    Column("account_key", String(ACCOUNT_KEY_LENGTH), primary_key=True),
    #: bumped by every mark; clear_insights_due drops a key only if nothing marked it since
    Column("gen", Integer, nullable=False, default=1),
)

#: what every process of an installation must agree on (the feed tokens' secret key)
settings_table = Table(
    "settings", metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

#: a feed's rolled-up days (icsfeed.budget): the last content and SEQUENCE of each, so that a
#: re-render without changes keeps the bytes and a change bumps SEQUENCE
rollups_table = Table(
    "rollups", metadata,
    Column("feed_id", String(160), primary_key=True),
    Column("group_key", String(64), primary_key=True),  # hash of (account, kind, day, severity, open)
    Column("day", String(10), nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("sequence", Integer, nullable=False, default=0),
    Column("created", Float, nullable=False),
    Column("last_modified", Float, nullable=False),
    Column("vevent", LargeBinary, nullable=False),
)

#: what the web layer needs to serve a feed's filtered variants from its stored body, and what
#: the status page says of its budget: both for the body with ``etag``
feed_parts_table = Table(
    "feed_parts", metadata,
    Column("feed_id", String(160), primary_key=True),
    Column("etag", String(80), nullable=False),
    Column("parts", Text, nullable=False),  # JSON: the body's VEVENTs, each with what filters read
    Column("report", Text, nullable=False),  # JSON: size, events, rollups, window (icsfeed.budget)
)

#: zstd dictionaries the rows' values are compressed with (icsfeed.store.codec): per column
#: and source group, never changed or deleted once written (rows name theirs by id)
dictionaries_table = Table(
    "dictionaries", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("field", String(16), nullable=False),  # the column: data or vevent
    Column("source_group", String(SOURCE_ID_LENGTH), nullable=False),
    Column("samples", Integer, nullable=False),  # values it was trained on
    Column("created", Float, nullable=False),
    Column("content", LargeBinary, nullable=False),
)

#: what each insight detector last read of its account (icsfeed.insights.inputs): a digest of
#: the rows' stored versions and settings, when it ran and until when ``now`` cannot change its
#: verdicts; a refresh whose digest and clock match leaves the detector's flags as they are
insight_inputs_table = Table(
    "insight_inputs", metadata,
    Column("source", String(SOURCE_ID_LENGTH), primary_key=True),  # insight-<detector>:<account id>
    Column("digest", String(64), nullable=False),
    Column("run_at", Float, nullable=False),
    Column("valid_until", Float, nullable=False),
    #: per row version, what a detector that decides row by row found (insights/verdicts.py)
    Column("memo", LargeBinary),
)
