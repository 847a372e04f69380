"""``gearshift.serve(app)``: the one-liner, for a script that serves its own application."""

from __future__ import annotations

import logging
from typing import Any

from . import cli
from .core.strategy import Strategy
from .http import make_server
from .http.server import WSGIApp

log = logging.getLogger("gearshift")


def serve(app: WSGIApp, host: str = "127.0.0.1", port: int = 8000, strategy: str | type[Strategy] = "threadpool",
          **options: Any) -> None:
    """Serve the WSGI ``app`` on ``host:port`` until SIGINT (Ctrl+C) or SIGTERM, then return.

    The ``gearshift`` command without the command line: the same startup line, the same signals
    (a graceful stop within ``graceful_timeout``, 30 s as for the command; a second signal exits
    at once; SIGQUIT a fast stop; no ``KeyboardInterrupt`` traceback), the same access log on
    stderr when the program has not configured :mod:`logging` itself. ``options`` are
    :func:`gearshift.make_server`'s, and a wrong one raises its error. Signal handlers can only be
    installed from the main thread; they are removed on return.
    """
    options.setdefault("graceful_timeout", cli.DEFAULT_GRACEFUL_TIMEOUT)
    server = make_server(host, port, app, strategy, **options)
    try:
        if not log.hasHandlers():
            cli.setup_logging("info", "-")
        cli.run(server)
    finally:
        server.server_close()  # already done after a graceful stop; this is for errors
