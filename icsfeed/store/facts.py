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

import json
from collections.abc import Mapping
from dataclasses import fields
from hashlib import blake2b
from typing import Any

from icsfeed.model import Event

#: what a title or text change alone touches (every detector reading a row's counts, times or
#: attributes but not its text)
TEXT = frozenset({"title", "detail"})
#: all but when a row is, what kind and whether it counts (status, recurrence): what a count reads
COUNTED = TEXT | {"url", "severity", "attrs"}
#: the blind sets a row's ``facts`` column holds a digest for, in its order (each hides more
#: than the one before it: row_facts digests them as a chain)
FACT_SETS: tuple[frozenset[str], ...] = (TEXT, COUNTED)
#: hex digits per digest in the column
WIDTH = 32

_JSON = json.JSONEncoder(sort_keys=True, default=str, ensure_ascii=False).encode
#: what a COUNTED-blind read sees of a row (plain values: str, float or None), then what a
#: TEXT-blind read sees besides (url, severity and the attrs mapping)
_SEEN_BY_COUNTS = tuple(sorted({f.name for f in fields(Event)} - COUNTED))
_SEEN_BY_TEXT_BLIND = tuple(sorted(COUNTED - TEXT))


def row_facts(as_dict: Mapping[str, Any]) -> str:
    """The ``facts`` column of a row whose stored JSON is ``as_dict``'s (``Event.to_dict``):
    a digest per blind set of the values it does not hide. A poll writes it with every row
    (≈ 5 µs: the plain values by repr, the rest by the stored JSON's encoder)."""
    get = as_dict.get
    counted = repr([get(k) for k in _SEEN_BY_COUNTS]).encode()
    text = counted + b"\0" + _JSON([get(k) for k in _SEEN_BY_TEXT_BLIND]).encode("utf-8", "surrogatepass")
    return blake2b(text, digest_size=WIDTH // 2).hexdigest() + blake2b(counted, digest_size=WIDTH // 2).hexdigest()


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
