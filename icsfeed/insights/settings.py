"""The ``insights:`` config section: one switchable, tunable sub-model per detector.

Every field has a default, so a config without an ``insights:`` section gets working
detectors; unknown keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from icsfeed.config import parse_duration


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BurstSettings(_Model):
    """Alert bursts: a stretch of days far more unlikely than the account's own rate allows."""

    enabled: bool = True
    #: event kinds counted as alerts
    kinds: list[str] = Field(default_factory=lambda: ["alert"])
    #: the longest stretch judged at once (days); the baseline is made of windows this long
    window_days: int = Field(default=7, ge=1, le=31)
    #: how many windows make the baseline (before the day; after it while the account is young)
    baseline_weeks: int = Field(default=8, ge=2, le=52)
    #: fewer baseline windows than this (a new account) and nothing is flagged
    min_history_weeks: int = Field(default=3, ge=1, le=52)
    #: a stretch whose count has at most this probability at the usual rate is a burst
    #: (the upper tail of a negative binomial with the account's own dispersion)
    p: float = Field(default=1e-4, gt=0, lt=0.5)
    #: and holds at least this many times the usual count for its length
    min_ratio: float = Field(default=2.0, ge=1, le=100)
    #: and at least this many alerts, whatever the baseline
    min_alerts: int = Field(default=8, ge=1)
    #: flags cover this many days back; null: the account feed's window (window_back_days)
    report_days: int | None = Field(default=None, ge=1, le=3660)
    #: alert groups listed in the flag's description
    top_alerts: int = Field(default=8, ge=1, le=50)


class BackupSettings(_Model):
    """Backup rhythm: learned weekday pattern per host, missed runs and irregular hosts."""

    enabled: bool = True
    kinds: list[str] = Field(default_factory=lambda: ["backup"])
    #: tags (case-insensitive) that mark a full backup (besides attrs.full = true)
    full_tags: list[str] = Field(default_factory=lambda: ["full"])
    #: the rhythm is learned from this many weeks before each day
    history_weeks: int = Field(default=8, ge=2, le=52)
    #: a series seen for fewer days than this is still being learned: no flags
    min_history_days: int = Field(default=14, ge=7, le=366)
    #: fewer backups than this in the learning window: too few to say anything
    min_backups: int = Field(default=3, ge=2)
    #: a weekday with backups in at least this share of weeks is part of the rhythm; the
    #: other weekdays may have extras in at most 1 - this share of weeks on average
    regular_share: float = Field(default=0.75, gt=0.5, le=1.0)
    #: a weekday already in the rhythm stays in it while its share is at least this
    keep_share: float = Field(default=0.5, gt=0.0, le=1.0)
    #: a rhythm of fewer than seven weekdays is claimed only once each of its weekdays had
    #: runs in at least this many weeks (a young host's random runs must not look weekly)
    min_weeks: int = Field(default=4, ge=1, le=52)
    #: flag a missing run this long after its usual time
    raise_after: timedelta = timedelta(hours=6)
    #: a run this late (after its usual time) still counts, and cancels the flag
    grace: timedelta = timedelta(hours=24)
    #: a run this early still counts
    early: timedelta = timedelta(hours=12)
    #: after this many days of consecutive misses (and at least four missed runs) the
    #: host counts as retired: no more flags
    give_up_after_days: int = Field(default=21, ge=1, le=366)
    #: flag hosts without a regular rhythm (weekly, on Mondays)
    irregular: bool = True
    #: flags cover this many days back; null: the account feed's window (window_back_days)
    report_days: int | None = Field(default=None, ge=1, le=3660)

    @field_validator("raise_after", "grace", "early", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> timedelta:
        return parse_duration(value)

    @model_validator(mode="after")
    def _bounds(self) -> BackupSettings:
        if self.early < timedelta(0) or self.grace < timedelta(0) or self.raise_after < timedelta(0):
            raise ValueError("raise_after, grace and early must not be negative")
        if self.keep_share > self.regular_share:
            raise ValueError("keep_share must not be above regular_share")
        if self.min_weeks > self.history_weeks:
            raise ValueError("min_weeks must not be above history_weeks")
        return self


class StaleTicketSettings(_Model):
    """Tickets open for days without an update."""

    enabled: bool = True
    kinds: list[str] = Field(default_factory=lambda: ["ticket"])
    #: open and not updated for this many days
    after_days: int = Field(default=7, ge=1, le=366)
    #: state words (attrs.state / attrs.status / attrs.status_category) that mean closed
    closed_states: list[str] = Field(default_factory=lambda: [
        "closed", "solved", "resolved", "done", "cancelled", "canceled", "rejected", "completed",
        "fixed", "won't fix", "wontfix", "duplicate", "deleted", "archived",
    ])
    #: tickets created longer ago than this are not looked at
    lookback_days: int = Field(default=365, ge=7, le=3660)

    @field_validator("closed_states")
    @classmethod
    def _lower(cls, value: list[str]) -> list[str]:
        return [v.strip().lower() for v in value]


class SummarySettings(_Model):
    """The Monday summary of the week before."""

    enabled: bool = True
    #: weeks of history the "usually" figures are medians of
    baseline_weeks: int = Field(default=8, ge=1, le=52)
    #: summaries of earlier Mondays created when missing (e.g. on the first run)
    backfill_weeks: int = Field(default=4, ge=0, le=52)


class InsightsSettings(_Model):
    """Everything under ``insights:``; ``enabled: false`` switches every detector off."""

    enabled: bool = True
    bursts: BurstSettings = Field(default_factory=BurstSettings)
    backups: BackupSettings = Field(default_factory=BackupSettings)
    stale_tickets: StaleTicketSettings = Field(default_factory=StaleTicketSettings)
    summary: SummarySettings = Field(default_factory=SummarySettings)
