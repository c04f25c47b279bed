"""icsfeed: calendar feeds (.ics) of operational events."""

__version__ = "0.1.0"
