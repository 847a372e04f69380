"""``threadpool``: a fixed set of threads behind the loop, which no slow client can exhaust.

The loop does the waiting: idle keep-alive connections sit in its selector, and a request is
dispatched only once :meth:`Server.request_ready` says the handler will not wait for the client
(HTTP reads the head and body ahead in the loop). A thread is taken only for a request in
progress.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time

from ..core.hookspecs import hookimpl
from ..core.strategy import Address, Strategy, positive_int_option

log = logging.getLogger("gearshift")

DEFAULT_THREADS = 8


class ThreadPoolStrategy(Strategy):
    """A fixed pool of threads; requests are dispatched once received in full."""

    name = "threadpool"
    multithread = True

    def __init__(self, server, *, threads: int = DEFAULT_THREADS) -> None:  # type: ignore[no-untyped-def]
        super().__init__(server)
        self.threads = positive_int_option("threads", threads)
        self._queue: queue.SimpleQueue[tuple[socket.socket, Address] | None] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._lock = threading.Lock()

    def process_request(self, request: socket.socket, client_address: Address) -> None:
        server = self.server
        if not server.request_ready(request, client_address):
            server.shutdown_request(request)  # parked until the rest of the request arrives
            return
        if not self._workers:
            self._start()
        self._queue.put((request, client_address))

    def _start(self) -> None:
        with self._lock:
            for number in range(1, self.threads + 1):
                thread = threading.Thread(target=self._work, name=f"gearshift-worker-{number}", daemon=True)
                thread.start()
                self._workers.append(thread)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            self.handle_connection(*item)

    def close(self, timeout: float | None = None) -> None:
        """Let the workers finish what is queued and in progress, at most ``timeout`` seconds."""
        with self._lock:
            workers, self._workers = self._workers, []
        for _ in workers:
            self._queue.put(None)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in workers:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        left = sum(thread.is_alive() for thread in workers)
        if left:
            log.warning("drain timeout (%.1f s) passed; abandoning %d request thread%s still running",
                        timeout, left, "" if left == 1 else "s")


@hookimpl
def gearshift_strategies() -> list[type[Strategy]]:
    return [ThreadPoolStrategy]
