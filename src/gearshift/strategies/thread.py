"""``thread``: one thread per request, and no memory of threads that have finished.

socketserver's ThreadingMixIn keeps every non-daemon thread in a list and prunes it only when
the next request arrives (``_Threads.reap``); here each thread removes itself from a set as it
ends, so bookkeeping is O(1) per request and nothing finished is retained even while idle.
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time

from ..core.hookspecs import hookimpl
from ..core.strategy import Address, Strategy, bool_option
from ..settings import Setting

log = logging.getLogger("gearshift")


class ThreadStrategy(Strategy):
    """One thread per request; finished threads are dropped at once (ThreadingTCPServer)."""

    name = "thread"
    multithread = True

    def __init__(self, server, *, daemon_threads: bool = False, block_on_close: bool = True) -> None:  # type: ignore[no-untyped-def]
        super().__init__(server)
        self.daemon_threads = bool_option("daemon_threads", daemon_threads)
        self.block_on_close = bool_option("block_on_close", block_on_close)
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._numbers = itertools.count(1)

    @property
    def active_threads(self) -> int:
        """How many request threads are running now."""
        return len(self._threads)

    def process_request(self, request: socket.socket, client_address: Address) -> None:
        thread = threading.Thread(
            target=self._run,
            args=(request, client_address),
            name=f"gearshift-request-{next(self._numbers)}",
            daemon=self.daemon_threads,
        )
        try:
            with self._lock:
                self._threads.add(thread)
            thread.start()
        except BaseException:
            # "can't start new thread" (the loop logs it and closes the request), or a signal
            # handler's exception landing between the two lines above: either way the thread
            # never ran, and close() must not wait for it.
            with self._lock:
                self._threads.discard(thread)
            raise

    def _run(self, request: socket.socket, client_address: Address) -> None:
        try:
            self.handle_connection(request, client_address)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def close(self, timeout: float | None = None) -> None:
        """Join the non-daemon request threads (if ``block_on_close``), at most ``timeout`` s."""
        if not self.block_on_close:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            # Not yet started: server_close() from another thread while process_request() runs.
            pending = [t for t in self._threads if not t.daemon and t.ident is not None]
        for thread in pending:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        left = [t for t in pending if t.is_alive()]
        if left:
            log.warning(
                "drain timeout (%.1f s) passed; abandoning %d request thread%s still running",
                timeout, len(left), "" if len(left) == 1 else "s",
            )


@hookimpl
def gearshift_strategies() -> list[type[Strategy]]:
    return [ThreadStrategy]


# First, so that a third-party plugin whose option clashes with these is the one named.
@hookimpl(tryfirst=True)
def gearshift_add_options(parser: object) -> list[Setting]:
    return [Setting("daemon_threads", ("--daemon-threads",), "thread: do not wait for request threads on shutdown",
                    kind="flag")]
