"""``threadpool``: a fixed set of threads behind the loop, which no slow client can exhaust.

The loop does the waiting: idle keep-alive connections sit in its selector, and a request is
dispatched only once :meth:`Server.request_ready` says the handler will not wait for the client
(HTTP reads the head and body ahead in the loop). A thread is taken only for a request in
progress; requests that find every thread busy wait in a queue, at most ``max_queue`` of them;
past that the server answers them at once (:meth:`Server.handle_overload`, HTTP's 503).

The default of 8 threads is for WSGI applications that wait on a database or another service.
In one process the GIL runs one thread's Python code at a time, so more cores do not make more
threads useful (hence no ``cpu_count()`` formula, unlike ``ThreadPoolExecutor``): threads only
overlap waits. Eight keep the interpreter busy while requests spend up to 7/8 of their time
waiting, and stay within what a database is usually given per process (Django opens a
connection per thread; SQLAlchemy's default pool is 5 + 10 overflow). waitress's 4 leaves the
interpreter idle as soon as requests wait more than they compute. CPU-bound applications gain
nothing past 2 or 3 threads; applications waiting on slow upstreams want more.

The queue is unbounded by default: a request waiting in it holds a connection, not a thread,
and how long a client is willing to wait (about ``max_queue`` x the mean request time /
``threads``) is for the operator to decide, not for a default to guess.

Workers are daemon threads, started once (by ``serve()``, or by the first request under
``handle_request()``) and joined by ``close()``; a request still running after the drain
timeout is abandoned and does not keep the process alive.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
from collections.abc import Callable, Mapping

from ..core.hookspecs import hookimpl
from ..core.strategy import Address, OverloadLog, Strategy, join_threads, limit_option, positive_int_option
from ..settings import Setting

log = logging.getLogger("gearshift")

DEFAULT_THREADS = 8

_Item = tuple[socket.socket, Address]


class ThreadPoolStrategy(Strategy):
    """A fixed pool of threads; a request holds one only while it runs (waitress, gthread)."""

    name = "threadpool"
    multithread = True
    lacks = frozenset({"terminate"})  # a thread cannot be stopped

    def __init__(  # type: ignore[no-untyped-def]
        self, server, *, threads: int = DEFAULT_THREADS, max_queue: int | None = None
    ) -> None:
        super().__init__(server)
        self.threads = positive_int_option("threads", threads)
        self.max_queue = limit_option("max_queue", max_queue, minimum=0)
        # Requests dispatched and not finished (queued or running) past which one is refused.
        self._limit = None if self.max_queue is None else self.threads + self.max_queue
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        # Guards _pending, _workers and _closed: the loop dispatches, the workers finish.
        self._lock = threading.Lock()
        self._pending = 0
        self._closed = False
        self._overload = OverloadLog(self.name)

    @property
    def pending(self) -> int:
        """Requests dispatched and not finished yet: running in a thread or queued for one."""
        return self._pending

    def stats(self) -> Mapping[str, int]:
        """``busy`` and ``queued`` split :attr:`pending` (one read, no lock): while fewer than
        ``threads`` requests are pending a thread is free for each, so none waits."""
        pending = self._pending
        busy = min(pending, self.threads)
        return {"busy": busy, "queued": pending - busy, "threads": self.threads}

    def serve(self, run_loop: Callable[[], None]) -> None:
        self._start()  # before the first request, which would otherwise pay for it
        run_loop()

    def process_request(self, request: socket.socket, client_address: Address) -> None:
        server = self.server
        if not server.request_ready(request, client_address):
            server.shutdown_request(request)  # parked until the rest of the request arrives
            return
        if not self._workers:
            self._start()  # handle_request() without serve(), or after close(): see _start
        limit = self._limit
        with self._lock:
            refused = self._closed or (limit is not None and self._pending >= limit)
            if not refused:
                self._pending += 1
                self._queue.put((request, client_address))
        if refused:
            if not self._closed:
                self._overload.refused("every thread busy (threads=%d) and the queue full (max_queue=%d)",
                                       self.threads, self.max_queue)
            server.handle_overload(request, client_address)

    def _start(self) -> None:
        with self._lock:
            if self._workers or self._closed:  # started already; or closing: nothing will start
                return
            for number in range(1, self.threads + 1):
                # Daemon threads: a request stuck past the drain timeout must not keep the
                # process alive; close() joins them itself.
                thread = threading.Thread(target=self._work, name=f"gearshift-worker-{number}", daemon=True)
                thread.start()
                self._workers.append(thread)

    def _work(self) -> None:
        get = self._queue.get
        while (item := get()) is not None:
            try:
                self.handle_connection(*item, done=self._done)
            except BaseException:
                # SystemExit from a handler: it would end this thread, and the pool would
                # shrink for good. handle_connection() has shut the connection down already.
                log.exception("a request raised a BaseException in %s; the thread serves on",
                              threading.current_thread().name)

    def _done(self) -> None:
        with self._lock:
            self._pending -= 1

    def service_actions(self) -> None:
        self._overload.check()

    def close(self, timeout: float | None = None) -> None:
        """Let the workers finish what is queued and in progress, at most ``timeout`` seconds;
        then answer what is still queued with ``handle_overload`` and abandon what runs."""
        with self._lock:
            self._closed = True
            workers = list(self._workers)
        self._overload.check(final=True)
        for _ in workers:
            self._queue.put(None)  # behind every queued request: those are served first
        if not join_threads(workers, timeout):
            return
        unserved = self._take_queued()
        for _ in workers:
            self._queue.put(None)  # for the stuck workers, should their requests ever end
        for request, client_address in unserved:
            self.server.handle_overload(request, client_address)
        with self._lock:
            self._pending -= len(unserved)
            running = self._pending
        if not running and not unserved:
            return  # late, not stuck: between their last request and their sentinel
        log.warning(
            "drain timeout (%.1f s) passed; abandoning %d request%s still running%s",
            timeout, running, "" if running == 1 else "s",
            f" and refusing {len(unserved)} still queued" if unserved else "",
        )

    def _take_queued(self) -> list[_Item]:
        taken: list[_Item] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return taken
            if item is not None:
                taken.append(item)


@hookimpl
def gearshift_strategies() -> list[type[Strategy]]:
    return [ThreadPoolStrategy]


# First, so that a third-party plugin whose option clashes with these is the one named.
@hookimpl(tryfirst=True)
def gearshift_add_options(parser: object) -> list[Setting]:
    return [
        Setting("threads", ("--threads",), f"threadpool: number of threads (default {DEFAULT_THREADS})",
                type=int, metavar="N"),
        Setting("max_queue", ("--max-queue",),
                "threadpool: most requests waiting for a free thread; more are answered 503 at once "
                "(default: no limit)", type=int, metavar="N"),
    ]
