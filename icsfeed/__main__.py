"""``python -m icsfeed``: the same as the ``icsfeed`` command."""

from icsfeed.cli import main

main()
