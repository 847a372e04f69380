"""``thread``: one thread per request, and no memory of threads that have finished.

socketserver's ThreadingMixIn keeps every non-daemon thread in a list and prunes it only when
the next request arrives (``_Threads.reap``); here each thread removes itself from a set as it
ends, so bookkeeping is O(1) per request and nothing finished is retained even while idle.

Request threads are daemon threads for the interpreter, whatever ``daemon_threads`` says, so that
a request stuck past the drain timeout of ``server_close()`` cannot keep the process alive after
it. socketserver's meanings are kept by this module instead: with ``daemon_threads=False`` (the
default) ``server_close()`` joins the request threads (if ``block_on_close``), and at interpreter
exit :func:`_join_at_exit` joins the ones no drain timeout gave up on, as the interpreter does
with non-daemon threads. With ``daemon_threads=True`` nothing waits for them.

``max_threads`` bounds the threads running at once; a connection that finds them all busy is
answered at once (:meth:`Server.handle_overload`, HTTP's 503) rather than queued: a queue is
what ``threadpool`` is for.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import socket
import threading
import weakref
from collections.abc import Mapping

from ..core.hookspecs import hookimpl
from ..core.strategy import Address, OverloadLog, Strategy, bool_option, join_threads, limit_option
from ..settings import Setting

log = logging.getLogger("gearshift")


class ThreadStrategy(Strategy):
    """One thread per request; finished threads are dropped at once (ThreadingTCPServer)."""

    name = "thread"
    multithread = True
    lacks = frozenset({"terminate"})  # a thread cannot be stopped

    def __init__(  # type: ignore[no-untyped-def]
        self, server, *, daemon_threads: bool = False, block_on_close: bool = True, max_threads: int | None = None
    ) -> None:
        super().__init__(server)
        self.daemon_threads = bool_option("daemon_threads", daemon_threads)
        self.block_on_close = bool_option("block_on_close", block_on_close)
        self.max_threads = limit_option("max_threads", max_threads)
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._numbers = itertools.count(1)
        self._overload = OverloadLog(self.name)
        # max_threads' slots: taken in the loop, given back as soon as a request is done, before
        # its connection can return to the loop (handle_connection's ``done``), so that the
        # connection's next request never finds its own, finishing, thread counted as busy.
        self._slots = None if self.max_threads is None else threading.Semaphore(self.max_threads)
        self._slot_done = None if self._slots is None else self._slots.release
        _JOINED_AT_EXIT.add(self)

    @property
    def active_threads(self) -> int:
        """How many request threads are running now."""
        return len(self._threads)

    def process_request(self, request: socket.socket, client_address: Address) -> None:
        slots = self._slots
        if slots is not None and not slots.acquire(blocking=False):
            self._overload.refused("every thread busy (max_threads=%d)", self.max_threads)
            self.server.handle_overload(request, client_address)
            return
        thread = threading.Thread(
            target=self._run,
            args=(request, client_address),
            name=f"gearshift-request-{next(self._numbers)}",
            daemon=True,  # see the module docstring: joined here, not by the interpreter
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
            if slots is not None:
                slots.release()
            raise

    def _run(self, request: socket.socket, client_address: Address) -> None:
        try:
            self.handle_connection(request, client_address, self._slot_done)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def stats(self) -> Mapping[str, int]:
        return {"busy": len(self._threads)}

    def service_actions(self) -> None:
        self._overload.check()

    def close(self, timeout: float | None = None) -> None:
        """Join the request threads, unless ``daemon_threads`` or not ``block_on_close``, at most
        ``timeout`` seconds; those still running then are abandoned, and not waited for at exit."""
        self._overload.check(final=True)
        if self.daemon_threads or not self.block_on_close:
            return
        left = join_threads(self._started_threads(), timeout)
        if left:
            _JOINED_AT_EXIT.discard(self)
            log.warning(
                "drain timeout (%.1f s) passed; abandoning %d request thread%s still running",
                timeout, len(left), "" if len(left) == 1 else "s",
            )

    def _started_threads(self) -> list[threading.Thread]:
        with self._lock:
            # Not yet started: server_close() from another thread while process_request() runs.
            return [t for t in self._threads if t.ident is not None]


# The strategies whose request threads the interpreter waits for at exit unless their
# daemon_threads is set (read at exit: gearshift.socketserver lets it change after __init__, as
# socketserver does); a drain timeout that abandons them removes them. Weak: a strategy with
# threads running is kept alive by them, and one without has nothing to wait for.
_JOINED_AT_EXIT: weakref.WeakSet[ThreadStrategy] = weakref.WeakSet()


def _join_at_exit() -> None:
    """What the interpreter does for non-daemon threads, for request threads: wait for them.
    atexit runs after the interpreter has joined its non-daemon threads, and before it stops
    the daemon ones."""
    for strategy in list(_JOINED_AT_EXIT):
        if not strategy.daemon_threads:
            join_threads(strategy._started_threads(), None)


atexit.register(_join_at_exit)


@hookimpl
def gearshift_strategies() -> list[type[Strategy]]:
    return [ThreadStrategy]


# First, so that a third-party plugin whose option clashes with these is the one named.
@hookimpl(tryfirst=True)
def gearshift_add_options(parser: object) -> list[Setting]:
    return [
        Setting("daemon_threads", ("--daemon-threads",), "thread: do not wait for request threads on shutdown",
                kind="flag"),
        Setting("max_threads", ("--max-threads",),
                "thread: most request threads at once; more requests are answered 503 at once (default: no limit)",
                type=int, metavar="N"),
    ]
