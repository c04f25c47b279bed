"""Source types, loaded by their ``type:`` name (as Radicale loads its storage and auth).

Each built-in type is one module here with one :class:`~icsfeed.sources.base.Source`
subclass. A ``type:`` that contains a dot is taken as ``package.module:Class`` (or
``package.module`` with a class named ``Source``), so a site can plug in its own type
without touching this package.
"""

from __future__ import annotations

import importlib
import importlib.util

from icsfeed.sources.base import AnswerUnchanged, Source, SourceContext, SourceError, SourceSettings

__all__ = ["BUILTIN_TYPES", "AnswerUnchanged", "Source", "SourceContext", "SourceError", "SourceSettings", "load_source_class"]

#: type name -> "module:Class"
BUILTIN_TYPES: dict[str, str] = {
    "file": "icsfeed.sources.file:FileSource",
    "http_json": "icsfeed.sources.http_json:HttpJsonSource",
    "command": "icsfeed.sources.command:CommandSource",
    "alertmanager": "icsfeed.sources.alertmanager:AlertmanagerSource",
    "restic": "icsfeed.sources.restic:ResticSource",
    "jira": "icsfeed.sources.jira:JiraSource",
    "zendesk": "icsfeed.sources.zendesk:ZendeskSource",
    "ics": "icsfeed.sources.ics:IcsSource",
    "tls": "icsfeed.sources.tls:TlsSource",
}


def known_types() -> list[str]:
    """Built-in type names whose module is present."""
    names = []
    for name, target in BUILTIN_TYPES.items():
        module = target.split(":")[0]
        if importlib.util.find_spec(module) is not None:
            names.append(name)
    return names


def load_source_class(type_name: str) -> type[Source]:
    """The Source subclass for a ``type:`` value; KeyError with a helpful message if none."""
    target = BUILTIN_TYPES.get(type_name)
    if target is None and "." in type_name:
        target = type_name if ":" in type_name else f"{type_name}:Source"
    if target is None:
        raise KeyError(f"unknown source type {type_name!r} (known: {', '.join(known_types())})")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise KeyError(f"unknown source type {type_name!r}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Source)):
        raise KeyError(f"source type {type_name!r}: {target} is not a Source subclass")
    return cls
