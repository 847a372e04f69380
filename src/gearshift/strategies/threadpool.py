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

A thread is woken for a queued request only when the interpreter has room for it. In one
process the GIL runs one thread's Python at a time, so a second thread woken while the first
keeps the interpreter busy only queues for the GIL, and at every system call one of them makes
the GIL passes to the other (a futex wake-up and a context switch each): four CPU-bound threads
serve fewer requests than one. So the loop wakes an idle thread when no thread is running, or when the
process has used less than :data:`BUSY` of a core over the last :data:`WINDOW` seconds (the
running requests are waiting, on a database or an upstream: the reason for a pool), or when the
oldest queued request has waited the interpreter's switch interval (``sys.getswitchinterval()``,
5 ms): had it had a thread, it would have waited that long for the GIL anyway, and a long
CPU-bound request cannot hold the others up for longer. While requests wait for a thread, the
loop turns at least every :data:`WINDOW` to judge again, so a request queued behind one that
then waits on I/O waits about that long for a thread of its own. A thread that finishes a
request takes the next queued one itself. Idle threads are woken most recently idle first (a
stack), so that a light load keeps using the same few.

Workers are daemon threads, started once (by ``serve()``, or by the first request under
``handle_request()``) and joined by ``close()``; a request still running after the drain
timeout is abandoned and does not keep the process alive.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping

from ..core.hookspecs import hookimpl
from ..core.strategy import Address, OverloadLog, Strategy, join_threads, limit_option, positive_int_option
from ..settings import Setting

log = logging.getLogger("gearshift")

DEFAULT_THREADS = 8
#: Seconds of the process's CPU time the loop looks back over to judge whether the running
#: requests keep the interpreter busy; also how often it judges while requests wait.
WINDOW = 0.002
#: The share of one core past which the interpreter counts as busy: a thread woken then would
#: only wait for the GIL.
BUSY = 0.8

_Item = tuple[socket.socket, Address]
_Queued = tuple[socket.socket, Address, float]  # and time.monotonic() when it was queued


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
        self._workers: list[threading.Thread] = []
        # Guards everything below: the loop dispatches, the workers take and finish.
        self._lock = threading.Lock()
        self._pending = 0
        self._closed = False
        # Requests waiting for a thread; None tells the thread that takes it to exit.
        self._queue: deque[_Queued | None] = deque()
        # Idle threads, by the lock each waits on, most recently idle last; and how many are not idle.
        self._idle: list[threading.Lock] = []
        self._running = 0
        # Where the current WINDOW began: time.monotonic() and time.process_time(); and what
        # the last full window showed, which stands until the next one ends.
        self._window = (0.0, 0.0)
        self._busy = True
        # Set by serve(): the loop turns, so it can judge a queued request again later. Without
        # it (handle_request() alone) nothing would: every queued request gets a thread at once.
        self._judging = False
        self._overload = OverloadLog(self.name)

    @property
    def pending(self) -> int:
        """Requests dispatched and not finished yet: running in a thread or queued for one."""
        return self._pending

    def stats(self) -> Mapping[str, int]:
        """``busy`` and ``queued`` split :attr:`pending` (unlocked reads: a moment's figures)."""
        pending, queued = self._pending, len(self._queue)
        queued = min(queued, pending)  # close()'s exit markers are not requests
        return {"busy": pending - queued, "queued": queued, "threads": self.threads}

    def serve(self, run_loop: Callable[[], None]) -> None:
        self._start()  # before the first request, which would otherwise pay for it
        self._judging = True
        try:
            run_loop()
        finally:
            self._judging = False

    def process_request(self, request: socket.socket, client_address: Address) -> None:
        server = self.server
        if not server.request_ready(request, client_address):
            server.shutdown_request(request)  # parked until the rest of the request arrives
            return
        if not self._workers:
            self._start()  # handle_request() without serve(), or after close(): see _start
        limit = self._limit
        woken: list[threading.Lock] = []
        with self._lock:
            refused = self._closed or (limit is not None and self._pending >= limit)
            if not refused:
                self._pending += 1
                self._queue.append((request, client_address, time.monotonic()))
                woken = self._wake_for_queued()
        for wake in woken:
            wake.release()
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
                self._running += 1  # until it finds the queue empty

    def _wake_for_queued(self) -> list[threading.Lock]:
        """The idle threads to wake for what is queued (see the module docstring), counted as
        running; the caller holds ``_lock`` and releases them after it."""
        idle = self._idle
        if not idle or not self._queue:  # service_actions() looked without the lock
            return []
        if not self._judging:
            return self._wake(len(self._queue))
        now = time.monotonic()
        if not self._running:
            self._window = (now, time.process_time())  # the interpreter's load starts now
            count = 1
        else:
            started, cpu = self._window
            if now - started >= WINDOW:
                used = time.process_time()
                self._window = (now, used)
                self._busy = used - cpu >= BUSY * (now - started)
            if not self._busy:
                count = len(self._queue)  # the running requests wait: give every queued one a thread
            else:
                oldest = self._queue[0]
                if oldest is None or now - oldest[2] < sys.getswitchinterval():
                    return []  # service_actions() judges again within WINDOW
                count = 1
        return self._wake(count)

    def _wake(self, count: int) -> list[threading.Lock]:
        """Up to ``count`` idle threads, most recently idle first, counted as running; the
        caller holds ``_lock`` and releases them after it."""
        idle = self._idle
        woken = [idle.pop() for _ in range(min(count, len(idle)))]
        self._running += len(woken)
        return woken

    def _next(self, wake: threading.Lock) -> _Item | None:
        """The next queued request for this thread (None: exit), waiting idle for one."""
        while True:
            with self._lock:
                if self._queue:
                    queued = self._queue.popleft()
                    return None if queued is None else queued[:2]
                self._running -= 1
                self._idle.append(wake)
            wake.acquire()  # released by whoever woke this thread and counted it running again

    def _work(self) -> None:
        wake = threading.Lock()
        wake.acquire()
        while (item := self._next(wake)) is not None:
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
        if self._queue and self._idle:  # unlocked reads: a guess, made exact under the lock
            with self._lock:
                woken = self._wake_for_queued()
            for wake in woken:
                wake.release()

    def service_within(self) -> float | None:
        return WINDOW if self._queue and self._idle else None

    def close(self, timeout: float | None = None) -> None:
        """Let the workers finish what is queued and in progress, at most ``timeout`` seconds;
        then answer what is still queued with ``handle_overload`` and abandon what runs."""
        self._overload.check(final=True)
        with self._lock:
            self._closed = True
            workers = list(self._workers)
            self._queue.extend([None] * len(workers))  # behind every queued request: those are served first
            woken = self._wake(len(self._idle))
        for wake in woken:
            wake.release()
        if not join_threads(workers, timeout):
            return
        with self._lock:
            unserved = [queued[:2] for queued in self._queue if queued is not None]
            self._queue.clear()
            self._queue.extend([None] * len(workers))  # for the stuck workers, should their requests ever end
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
