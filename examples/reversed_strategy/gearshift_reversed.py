"""gearshift-reversed: the ``reversed`` strategy, a complete third-party gearshift plugin.

``reversed`` processes connections one at a time in the accept loop, like the built-in ``sync``,
but in reverse order: when a burst of connections is waiting, the newest is served first (LIFO).
Under overload that is kinder than first-come-first-served: the oldest clients are the likeliest
to have given up already, and serving the newest first keeps the latency of those that still
wait low (the "adaptive LIFO" that some large services use in their request queues).

It also shows the two hooks a plugin implements:

- ``gearshift_strategies()`` returns the Strategy classes the plugin provides;
- ``gearshift_add_options(parser)`` adds command-line options. ``--log-every N`` has the dest
  ``log_every``, which matches the keyword option of ``ReversedStrategy.__init__``, so the
  ``gearshift`` command passes it to the strategy when ``-s reversed`` is selected (and reads
  ``GEARSHIFT_LOG_EVERY`` from the environment, like every option).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import gearshift

log = logging.getLogger("gearshift.reversed")


class ReversedStrategy(gearshift.Strategy):
    """Like sync, but each burst of waiting connections is served newest first (LIFO)."""

    name = "reversed"
    # Handlers run in the loop, one at a time: declared, so that the conformance kit skips the
    # tests that need these (with the reason) and --list-strategies shows "no" for them.
    lacks = frozenset({"concurrent", "terminate"})

    def __init__(self, server: Any, *, log_every: int = 0) -> None:
        if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 0:
            raise ValueError(f"log_every must be a whole number >= 0, not {log_every!r}")
        super().__init__(server)
        self.log_every = log_every
        self.served = 0
        self._waiting: list[tuple[socket.socket, Any]] = []
        self._in_loop = False

    def serve(self, run_loop: Callable[[], None]) -> None:
        self._in_loop = True
        try:
            run_loop()
        finally:
            self._in_loop = False

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        # The loop accepts a whole burst (up to 32 connections per listener) before it calls
        # service_actions(); stacking them here is what reverses the order.
        if not self._in_loop:  # server.handle_request(): no loop turn will come back for it
            self._serve_one(request, client_address)
            return
        self._waiting.append((request, client_address))

    def service_actions(self) -> None:
        while self._waiting:
            self._serve_one(*self._waiting.pop())

    def close(self, timeout: float | None = None) -> None:
        """Serve the connections accepted before the listeners closed, within ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._waiting:
            request, client_address = self._waiting.pop()
            if deadline is not None and time.monotonic() >= deadline:
                self.server.shutdown_request(request)
                dropped = 1 + len(self._waiting)
                for request, _ in self._waiting:
                    self.server.shutdown_request(request)
                self._waiting.clear()
                log.warning("drain timeout passed; closed %d waiting connection(s) unserved", dropped)
                return
            self._serve_one(request, client_address)

    def _serve_one(self, request: socket.socket, client_address: Any) -> None:
        self.handle_connection(request, client_address)
        self.served += 1
        if self.log_every and self.served % self.log_every == 0:
            log.info("reversed: %d connections served", self.served)


@gearshift.hookimpl
def gearshift_strategies() -> list[type[gearshift.Strategy]]:
    return [ReversedStrategy]


@gearshift.hookimpl
def gearshift_add_options(parser: Any) -> None:
    group = parser.add_argument_group("reversed strategy (gearshift-reversed)")
    group.add_argument(
        "--log-every", type=int, metavar="N",
        help="reversed: log a line every N connections served (default 0: never)",
    )
