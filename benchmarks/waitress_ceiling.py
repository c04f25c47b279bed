"""The ceiling of the production server itself: waitress with a WSGI app that does nothing.

``python benchmarks/waitress_ceiling.py PORT THREADS BODY_FILE`` answers ``/304`` with a bare
304 and anything else with the bytes of BODY_FILE. No Flask, no database, no token: what
icsfeed serve could reach at best on this machine, next to nginx.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from typing import Any

import waitress


def main() -> None:
    port, threads, body_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    body = open(body_file, "rb").read()
    length = str(len(body))

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/304":
            start_response("304 Not Modified", [("ETag", '"x"')])
            return [b""]
        start_response("200 OK", [("Content-Type", "text/calendar"), ("Content-Length", length)])
        return [body]

    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    waitress.serve(app, host="127.0.0.1", port=port, threads=threads, _quiet=True)


if __name__ == "__main__":
    main()
