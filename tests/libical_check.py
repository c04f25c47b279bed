"""Check .ics files with libical (ICalGLib via GObject introspection).

Run with Debian's system interpreter, ``/usr/bin/python3 tests/libical_check.py
FILE [FILE...]``: ``gi`` comes from the python3-gi package and is not importable
from the project's own Python, so tests/parsers.py calls this as a subprocess.
It prints a JSON array with one object per file, in argument order:
``{"file", "kind", "vevents", "uids", "restrictions_ok", "errors"}``.

libical never raises on bad input: it drops what it cannot parse and records
an X-LIC-ERROR property in the component instead, and its restriction check
(``Component.check_restrictions``, i.e. ``icalrestriction_check``) adds more
X-LIC-ERRORs. So the check is: parse, run the restriction check, then collect
every X-LIC-ERROR in the whole tree. Only the standard library and gi are used
here so the script runs on any Debian python3.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import gi

gi.require_version("ICalGLib", "3.0")
from gi.repository import ICalGLib  # noqa: E402 - needs require_version first


def _walk(comp: ICalGLib.Component) -> list[ICalGLib.Component]:
    """Return comp and all its descendants, depth first."""
    out = [comp]
    # Collect children first: the first/next iterator is per component, and
    # recursing while it is live is safe but harder to reason about.
    children = []
    child = comp.get_first_component(ICalGLib.ComponentKind.ANY_COMPONENT)
    while child is not None:
        children.append(child)
        child = comp.get_next_component(ICalGLib.ComponentKind.ANY_COMPONENT)
    for child in children:
        out.extend(_walk(child))
    return out


def _props(comp: ICalGLib.Component, kind: ICalGLib.PropertyKind) -> list[ICalGLib.Property]:
    """Return comp's own properties of one kind."""
    props = []
    prop = comp.get_first_property(kind)
    while prop is not None:
        props.append(prop)
        prop = comp.get_next_property(kind)
    return props


def check_text(text: str) -> dict[str, Any]:
    """Parse one calendar text and report libical's errors about it."""
    result: dict[str, Any] = {
        "kind": None,
        "vevents": 0,
        "uids": [],
        "restrictions_ok": None,
        "errors": [],
    }
    try:
        root = ICalGLib.Component.new_from_string(text)
    except TypeError:  # gi raises "constructor returned NULL" on no component
        root = None
    if root is None:
        result["errors"].append("libical parsed no component (unterminated BEGIN, or not iCalendar at all)")
        return result
    kind = ICalGLib.Component.kind_to_string(root.isa())
    result["kind"] = kind
    if root.isa() != ICalGLib.ComponentKind.VCALENDAR_COMPONENT:
        # Several top-level components come back wrapped in an XROOT; a
        # feed is exactly one VCALENDAR.
        result["errors"].append(f"top-level component is {kind}, expected one VCALENDAR")
    # Returns 1 when all restrictions pass, 0 otherwise (also 0 for XROOT).
    result["restrictions_ok"] = bool(root.check_restrictions())
    for comp in _walk(root):
        comp_kind = ICalGLib.Component.kind_to_string(comp.isa())
        is_event = comp.isa() == ICalGLib.ComponentKind.VEVENT_COMPONENT
        uid = comp.get_uid() if is_event else None
        if is_event:
            result["vevents"] += 1
            result["uids"].append(uid)
        where = f"{comp_kind} {uid}" if uid else comp_kind
        seen: set[str] = set()
        for prop in _props(comp, ICalGLib.PropertyKind.XLICERROR_PROPERTY):
            text = prop.get_xlicerror() or ""
            # libical 3.0.16 adds some restriction errors dozens of times
            # (e.g. DTEND+DURATION): report each distinct one once per component.
            if text not in seen:
                seen.add(text)
                result["errors"].append(f"{where}: {text}")
    if result["restrictions_ok"] is False and not result["errors"]:
        result["errors"].append("check_restrictions failed without an X-LIC-ERROR")
    return result


def check_file(path: str) -> dict[str, Any]:
    """Read one file as UTF-8 (RFC 5545's charset) and check it."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        return {"file": path, "errors": [f"read: {exc}"]}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return {"file": path, "errors": [f"not valid UTF-8: {exc}"]}
    return {"file": path, **check_text(text)}


def main(argv: list[str]) -> int:
    """Check every file named on the command line, print a JSON array."""
    if not argv:
        print("usage: libical_check.py FILE [FILE...]", file=sys.stderr)
        return 2
    json.dump([check_file(p) for p in argv], sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
