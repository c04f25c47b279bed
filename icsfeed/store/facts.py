"""A row's *facts*: digests of its stored event without the fields some detectors never read.

A detector that reads a range of rows but not their text (backups: not a run's title) or
only when and what they are (bursts and the summary count alerts) declares its reads
``blind`` to those fields (icsfeed/insights/facts.py). Whether such a detector must run
again after a poll is then a question of these digests, not of the rows' content hashes:
a title change leaves them as they were. They are worked out from the very dict whose JSON
is stored (one per blind set, in :data:`FACT_SETS` order) and kept in ``events.facts`` with
the content hash, so the insight refresh digests an account's rows without decoding any.
Beside them, ``events.traits`` keeps the few things a count reads of a row that no other
column says (:func:`row_traits`). A row written before migration 0014 has NULL in both: they
are worked out from the decoded event by the same functions and written back.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

#: what a title or text change alone touches (every detector reading a row's counts, times or
#: attributes but not its text)
TEXT = frozenset({"title", "detail"})
#: all but when a row is, what kind and whether it counts (status, recurrence): what a count reads
COUNTED = TEXT | {"url", "severity", "attrs"}
#: the blind sets a row's ``facts`` column holds a digest for, in its order
FACT_SETS: tuple[frozenset[str], ...] = (TEXT, COUNTED)
#: hex digits per digest in the column
WIDTH = 32

_JSON = json.JSONEncoder(sort_keys=True, default=str, ensure_ascii=False).encode


def _digest(as_dict: Mapping[str, Any], blind: frozenset[str]) -> str:
    text = _JSON({k: v for k, v in as_dict.items() if k not in blind})
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:WIDTH]


def row_facts(as_dict: Mapping[str, Any]) -> str:
    """The ``facts`` column of a row whose stored JSON is ``as_dict``'s (``Event.to_dict``)."""
    return "".join(_digest(as_dict, blind) for blind in FACT_SETS)


#: ``events.traits`` bits: what a count of rows reads of each besides its columns (when it
#: starts, ends, recurs, what kind): so the summary counts weeks from the versions, no row decoded
CANCELLED, ALL_DAY, OPEN_ENDED = 1, 2, 4


def row_traits(status: str, all_day: bool, open_ended: bool) -> int:
    """The ``traits`` column of a row: cancelled at the origin, a date (not a time), no end."""
    return (CANCELLED if status == "cancelled" else 0) | (ALL_DAY if all_day else 0) | (OPEN_ENDED if open_ended else 0)


def facts_part(facts: str, blind: frozenset[str]) -> str | None:
    """The digest for ``blind`` out of a ``facts`` column, None for a set it holds none of."""
    try:
        i = FACT_SETS.index(blind)
    except ValueError:
        return None
    return facts[i * WIDTH:(i + 1) * WIDTH]
