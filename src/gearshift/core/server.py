"""The server: one selector-based accept loop; the strategy decides how connections are processed.

``Server`` keeps ``socketserver.BaseServer``'s life-cycle methods, with the same names and
meanings, so stdlib request handlers and habits carry over::

    serve_forever()                 handle_request()
      -> (listener readable)          -> one connection or timeout -> handle_timeout()
         get_request()                (socket.accept() on the listener that is ready)
         verify_request()
         process_request()  -------> strategy.process_request()   (thread, child, inline, ...)
                                        finish_request()  -> RequestHandlerClass(request, addr, server)
                                        handle_error()    (if the handler raised)
                                        shutdown_request() -> close_request(), or back to the loop
      service_actions()  -> strategy.service_actions()   (every turn: reap finished workers)
    shutdown()    -> wakes the loop through a socketpair; returns once serve_forever() has stopped
    server_close() -> closes listeners and idle connections, then strategy.close() drains

What it does better than socketserver: the strategy is an object chosen by name with validated
options (no mixin order, no mutable class attributes); ``shutdown()`` wakes the selector instead
of waiting out ``poll_interval``; a handler can return an idle connection to the loop
(:meth:`Server.resume_when_readable`) so that keep-alive connections do not pin a worker.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import select
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .listeners import (
    DEFAULT_BACKLOG,
    RESOURCE_ERRNOS,
    TRANSIENT_ACCEPT_ERRORS,
    Waker,
    bind,
    check_umask,
    create_listener,
)
from .plugins import resolve_strategy
from .strategy import Address, Strategy, check_options

log = logging.getLogger("gearshift")

#: How many connections one readiness event of a listener may accept before the loop looks at
#: its other work again: enough to absorb a burst, few enough to stay fair to idle connections.
ACCEPT_BATCH = 32


class Server:
    """A socketserver-compatible server whose concurrency model is a strategy chosen by name.

    ``Server(("127.0.0.1", 8000), MyHandler, strategy="thread", daemon_threads=True)``

    ``server_address`` is ``(host, port)`` (IPv4, or IPv6 when the host is an IPv6 literal) or a
    filesystem path for a Unix stream socket. Keyword ``options`` go to the strategy; a name it
    does not accept raises ``TypeError`` listing the ones it does. ``listener`` adopts an
    already-bound listening socket instead of binding ``server_address`` (socket activation,
    ``--fd``). ``drain_timeout`` bounds how long ``server_close()`` waits for in-flight requests.
    ``umask`` sets the mode of a Unix socket the server binds to ``0o777 & ~umask``.
    """

    # socketserver's class attributes, read when the server creates its listener: override them
    # in a subclass exactly as with socketserver.TCPServer.

    #: The listener's family; None (the default) follows the address: a Unix path, an IPv6
    #: literal, else IPv4. An instance reads the family of its listener.
    address_family: int | None = None
    #: Only ``SOCK_STREAM``: anything else raises ``ValueError``.
    socket_type: int = socket.SOCK_STREAM
    allow_reuse_address: bool = True
    allow_reuse_port: bool = False
    request_queue_size: int = DEFAULT_BACKLOG
    #: Seconds ``handle_request()`` waits before calling ``handle_timeout()``; None waits forever.
    timeout: float | None = None

    def __init__(
        self,
        server_address: Any,
        RequestHandlerClass: Callable[..., Any],
        strategy: str | type[Strategy] = "sync",
        *,
        bind_and_activate: bool = True,
        listener: socket.socket | None = None,
        drain_timeout: float | None = None,
        umask: int | None = None,
        **options: Any,
    ) -> None:
        strategy_class = resolve_strategy(strategy)
        check_options(strategy_class, options)
        self.RequestHandlerClass = RequestHandlerClass
        self.drain_timeout = _check_drain_timeout(drain_timeout)
        #: Permission bits of a Unix socket this server binds: ``0o777 & ~umask`` (see bind()).
        self.umask = check_umask(umask)
        self.server_address = server_address
        self.listeners: list[socket.socket] = []
        self._unix_paths: list[tuple[str, int, int]] = []  # (path, inode, creator pid) to unlink
        # Listeners by file descriptor: the ones this server created (fd -> creating pid), which
        # server_close() stops with shutdown(), and the adopted ones, which it only closes.
        self._own_listeners: dict[int, int] = {}
        self._adopted_listeners: tuple[int, ...] = ()  # a tuple: an empty one costs a child nothing
        self._loop: _LoopState | None = None
        self._loop_thread: int | None = None
        self._serving_thread: int | None = None
        self._shutdown_requested = False
        self._is_shut_down = threading.Event()
        self._is_shut_down.set()
        #: True once this process's server has begun closing (``server_close()``, or
        #: ``begin_closing()`` in a worker process): handlers should finish the request in hand
        #: and close the connection rather than wait for another on it.
        self.closing = False
        self._closed = False  # server_close() has run (closing can also be set by begin_closing)
        # Wakes wait_readable() when closing begins; created by the first wait, per process.
        self._closing_waker: Waker | None = None
        self._closing_waker_lock = threading.Lock()
        # Connections returned to the loop by handlers (see resume_when_readable). Created on
        # first use, so that under ``fork`` (which never hands connections back) a child's
        # shutdown_request() need not touch a dict.
        self._resume_marks: dict[socket.socket, tuple[Address, float | None]] | None = None
        self._resume_lock = threading.Lock()
        self._resume_queue: deque[tuple[socket.socket, Address, float | None]] = deque()
        # The listener get_request() accepts from: the one the loop found readable.
        self._ready_listener: socket.socket | None = None
        self.strategy: Strategy = strategy_class(self, **options)
        if listener is not None:
            self.add_listener(listener)
        else:
            sock = create_listener(
                server_address,
                reuse_address=self.allow_reuse_address,
                reuse_port=self.allow_reuse_port,
                backlog=self.request_queue_size,
                bind_and_activate=False,
                family=self.address_family,
                socket_type=self.socket_type,
            )
            self.listeners.append(sock)
            self.address_family = sock.family
            self._own_listeners[sock.fileno()] = os.getpid()
            if bind_and_activate:
                try:
                    self.server_bind()
                    self.server_activate()
                except BaseException:
                    self.server_close()
                    raise

    # -- socketserver's set-up methods ----------------------------------------------------------

    @property
    def socket(self) -> socket.socket:
        """The first listening socket (socketserver's attribute)."""
        return self.listeners[0]

    def server_bind(self) -> None:
        """Bind the first listener to ``server_address`` and record the real address."""
        bind(self.socket, self.server_address, umask=self.umask)
        self.server_address = self.socket.getsockname()
        self._remember_unix_path(self.socket)

    def _remember_unix_path(self, sock: socket.socket) -> None:
        if sock.family == getattr(socket, "AF_UNIX", None):
            path = os.fsdecode(sock.getsockname())
            try:
                self._unix_paths.append((path, os.stat(path).st_ino, os.getpid()))
            except OSError:
                pass

    def server_activate(self) -> None:
        self.socket.listen(self.request_queue_size)

    def add_listener(self, sock: socket.socket, *, own: bool = False) -> None:
        """Serve connections from another already-listening socket in the same loop.

        ``own=True`` hands the socket over: ``server_close()`` then treats it like the server's
        first listener (stops listening on every copy of it and removes its Unix socket file).
        Leave it False for a socket the server merely borrows, such as one inherited from
        systemd or a supervisor that keeps listening on it after this server is closed.
        """
        if sock.type != socket.SOCK_STREAM:
            raise ValueError(f"gearshift serves stream sockets only, not {sock.type!r}")
        sock.setblocking(False)
        if own:
            self._own_listeners[sock.fileno()] = os.getpid()
            self._remember_unix_path(sock)
        else:
            self._adopted_listeners += (sock.fileno(),)
        self.listeners.append(sock)
        if len(self.listeners) == 1:
            self.server_address = sock.getsockname()
            self.address_family = sock.family
        if self._loop is not None and self._loop.pid == os.getpid():
            self._loop.selector.register(sock, selectors.EVENT_READ, _Listening(sock))

    def fileno(self) -> int:
        return self.socket.fileno()

    # -- running the loop ----------------------------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Handle connections until ``shutdown()``.

        ``poll_interval`` is now only how often ``service_actions()`` runs while idle (reaping);
        ``shutdown()`` does not wait for it.
        """
        # Recorded before anything else, so that shutdown() from a signal handler on this thread
        # never waits for itself, even outside the loop proper (a supervisor's serve()).
        self._serving_thread = threading.get_ident()
        self._is_shut_down.clear()
        try:
            self.strategy.serve(lambda: self._run_loop(poll_interval))
        finally:
            self._shutdown_requested = False
            self._serving_thread = None
            self._is_shut_down.set()

    def shutdown(self) -> None:
        """Stop ``serve_forever()`` and wait until it has returned.

        Safe from any thread and from a signal handler: called on the loop's own thread (a
        ``sync`` handler, a signal handler in the main thread) it only asks the loop to stop,
        since waiting for itself would deadlock. After it returns no connection is accepted.
        """
        self._shutdown_requested = True
        self.strategy.stop_serving()
        loop = self._loop
        if loop is not None and loop.pid == os.getpid():
            loop.waker.wake()
        if threading.get_ident() in (self._loop_thread, self._serving_thread):
            return
        self._is_shut_down.wait()

    def handle_request(self) -> None:
        """Handle one connection event (a new connection or a resumed one), or time out after
        ``self.timeout`` seconds and call ``handle_timeout()``."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        loop = self._enter_loop()
        try:
            while True:
                self._take_resumed(loop)
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                wait = loop.next_wait(remaining)
                events = loop.selector.select(wait)
                for key, _ in events:
                    if key.data is _WAKER:
                        loop.waker.drain()
                    elif key.data.__class__ is _Listening:
                        if self._accept(key.data, 1):
                            return
                    else:
                        self._resume(loop, key.data)
                        return
                self._expire_idle(loop)
                if deadline is not None and time.monotonic() >= deadline:
                    self.handle_timeout()
                    return
        finally:
            self._loop_thread = None
            self._close_loop_if_closed()

    def _run_loop(self, poll_interval: float) -> None:
        loop = self._enter_loop()
        try:
            # The guards around _take_resumed / next_wait / _expire_idle keep a turn with nothing
            # idle to a few attribute reads: under ``fork`` every object the parent touches
            # between two forks costs it a copy-on-write page fault.
            while not self._shutdown_requested:
                if self._resume_queue:
                    self._take_resumed(loop)
                events = loop.selector.select(loop.next_wait(poll_interval) if loop._deadlines else poll_interval)
                # Checked between select() and accept(): nothing is accepted after shutdown().
                if self._shutdown_requested:
                    break
                for key, _ in events:
                    data = key.data
                    if data.__class__ is _Listening:
                        self._accept(data, ACCEPT_BATCH)
                    elif data is _WAKER:
                        loop.waker.drain()
                    else:
                        self._resume(loop, data)
                    if self._shutdown_requested:
                        break
                if loop._deadlines:
                    self._expire_idle(loop)
                self.service_actions()
        finally:
            self._loop_thread = None
            self._close_loop_if_closed()

    def _enter_loop(self) -> _LoopState:
        if self.closing:
            raise ValueError("cannot serve on a closed server")
        loop = self._loop
        if loop is None or loop.pid != os.getpid():
            # First loop in this process (also a prefork worker's): its own selector and waker,
            # since an epoll set shared across fork() would mix the processes' registrations.
            loop = _LoopState(os.getpid(), selectors.DefaultSelector(), Waker())
            loop.selector.register(loop.waker, selectors.EVENT_READ, _WAKER)
            for sock in self.listeners:
                loop.selector.register(sock, selectors.EVENT_READ, _Listening(sock))
            self._loop = loop
        self._loop_thread = threading.get_ident()
        return loop

    def _accept(self, listening: _Listening, limit: int) -> int:
        self._ready_listener = listening.sock
        accepted = 0
        while accepted < limit:
            try:
                request, client_address = self.get_request()
            except TRANSIENT_ACCEPT_ERRORS:
                break
            except OSError as exc:
                if exc.errno in RESOURCE_ERRNOS:
                    # Out of descriptors: the listener stays readable, so pause instead of spinning.
                    log.error("accept() failed: %s; pausing 100 ms", exc)
                    time.sleep(0.1)
                    break
                raise
            accepted += 1
            if self.verify_request(request, client_address):
                self._process(request, client_address)
            else:
                self.shutdown_request(request)
            if self._shutdown_requested:
                break
        return accepted

    def get_request(self) -> tuple[socket.socket, Address]:
        """Accept one connection and return ``(request, client_address)``: socketserver's hook,
        which the loop always accepts through (override it to wrap accepted sockets, in TLS say).

        It accepts from the listener the loop found readable: ``self.socket`` when there is only
        one. With several (``add_listener``), an override should call ``super().get_request()``;
        ``self.socket.accept()`` would only ever reach the first listener.
        """
        listener = self._ready_listener
        return (self.socket if listener is None else listener).accept()

    def _process(self, request: socket.socket, client_address: Address) -> None:
        # socketserver's _handle_request_noblock(): process_request() may raise (sync runs the
        # handler right here): an Exception is reported and the connection closed; anything
        # else (SystemExit, KeyboardInterrupt) closes it and stops the loop.
        try:
            self.process_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
            self.shutdown_request(request)
        except BaseException:
            self.shutdown_request(request)
            raise

    # -- connections returned to the loop ------------------------------------------------------

    def resume_when_readable(
        self, request: socket.socket, client_address: Address, idle_timeout: float | None = None
    ) -> bool:
        """Ask the loop to take ``request`` back when the current handler finishes, watch it, and
        hand it to the strategy again (``process_request``) when it has bytes to read; close it
        if it stays idle ``idle_timeout`` seconds.

        Called by a handler (HTTP keep-alive between requests) so that a waiting connection costs
        a selector entry, not a thread or a turn of a ``sync`` loop. Returns False when the loop
        cannot take it back (the handler runs in a forked child, or the server is closing): the
        handler then closes the connection, or waits for it with :meth:`wait_readable`.
        """
        loop = self._loop
        if self.closing or loop is None or loop.pid != os.getpid():
            return False
        marks = self._resume_marks
        if marks is None:
            with self._resume_lock:
                if self._resume_marks is None:
                    self._resume_marks = {}
                marks = self._resume_marks
        marks[request] = (client_address, idle_timeout)
        return True

    def _hand_back(self, request: socket.socket, client_address: Address, idle_timeout: float | None) -> bool:
        loop = self._loop
        if loop is None or loop.pid != os.getpid():
            return False
        with self._resume_lock:
            if self.closing:
                return False
            was_empty = not self._resume_queue
            self._resume_queue.append((request, client_address, idle_timeout))
        if was_empty and threading.get_ident() != self._loop_thread:
            loop.waker.wake()
        return True

    def _take_resumed(self, loop: _LoopState) -> None:
        if not self._resume_queue:
            return
        with self._resume_lock:
            resumed = list(self._resume_queue)
            self._resume_queue.clear()
        now = time.monotonic()
        for request, client_address, idle_timeout in resumed:
            loop.park(request, client_address, None if idle_timeout is None else now + idle_timeout)

    def _resume(self, loop: _LoopState, idle: _Idle) -> None:
        loop.unpark(idle)
        self._process(idle.request, idle.client_address)

    def _expire_idle(self, loop: _LoopState) -> None:
        for idle in loop.expired(time.monotonic()):
            self.handle_idle_timeout(idle.request, idle.client_address)

    # -- socketserver's per-request hooks ------------------------------------------------------

    def verify_request(self, request: socket.socket, client_address: Address) -> bool:
        """Return False to refuse a new connection before any work is spent on it."""
        return True

    def process_request(self, request: socket.socket, client_address: Address) -> None:
        """Hand the connection to the strategy (override to wrap, as in socketserver)."""
        self.strategy.process_request(request, client_address)

    def finish_request(self, request: socket.socket, client_address: Address) -> None:
        """Run the handler; called by the strategy in whatever thread or process it chose."""
        self.RequestHandlerClass(request, client_address, self)

    def shutdown_request(self, request: socket.socket) -> None:
        """Done with ``request``: return it to the loop if its handler asked for that, else close."""
        marks = self._resume_marks
        if marks is not None:
            mark = marks.pop(request, None)
            if mark is not None and self._hand_back(request, *mark):
                return
        try:
            # Explicit shutdown so that the client sees EOF even if a forked child or a
            # leaked makefile() still holds the descriptor.
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.close_request(request)

    def close_request(self, request: socket.socket) -> None:
        request.close()

    def handle_error(self, request: socket.socket, client_address: Address) -> None:
        """Log the exception being handled; the server keeps serving."""
        log.exception("exception while processing a request from %s", client_address)

    def handle_idle_timeout(self, request: socket.socket, client_address: Address) -> None:
        """Called in the loop when a connection given back with ``resume_when_readable`` stays
        idle past its timeout. Closes it; a protocol may first say why (HTTP's 408), without
        blocking: the loop is waiting."""
        log.debug("closing connection from %s after its idle timeout", client_address)
        self.shutdown_request(request)

    def handle_timeout(self) -> None:
        """Called by ``handle_request()`` when ``timeout`` passes without a connection."""

    def service_actions(self) -> None:
        """Called every loop turn; lets the strategy reap finished workers."""
        self.strategy.service_actions()

    # -- closing -------------------------------------------------------------------------------

    def server_close(self) -> None:
        """Stop listening, close idle connections, then drain in-flight requests.

        The listeners close first so the port is free at once and no new connection queues up
        behind a slow drain. How the drain waits is the strategy's (``block_on_close``); it waits
        at most ``drain_timeout`` seconds when that is set.
        """
        if self._closed:
            return
        self._closed = True
        with self._resume_lock:
            self.closing = True
            resumed = list(self._resume_queue)
            self._resume_queue.clear()
        self.begin_closing()  # wakes handlers waiting in wait_readable()
        me = os.getpid()
        for sock in self.listeners:
            if self._own_listeners.get(sock.fileno()) == me:
                # Stops the listening socket itself, not just this descriptor: forked children
                # that still hold a copy (a slow request) neither keep the port nor queue
                # connections nobody will accept, and they need not close their copies.
                try:
                    sock.shutdown(socket.SHUT_RD)
                except OSError:
                    pass
            sock.close()
        for path, inode, creator in self._unix_paths:
            if creator == me:
                try:
                    if os.stat(path).st_ino == inode:
                        os.unlink(path)
                except OSError:
                    pass
        for request, _, _ in resumed:
            self.shutdown_request(request)
        loop = self._loop
        if loop is not None and loop.pid == os.getpid():
            for idle in loop.close_all():
                self.shutdown_request(idle.request)
        if self._loop_thread == threading.get_ident():
            # On the loop's own thread while it runs (a signal handler, a sync handler): the
            # loop may be inside select() on this selector, so it stops and closes it itself.
            self._shutdown_requested = True
        try:
            self.strategy.close(self.drain_timeout)
        finally:
            if self._loop_thread != threading.get_ident():
                self._close_loop_if_closed()
            # Drained: a handler still waiting (an abandoned thread) finds closing set, and
            # wait_readable() never polls a closed waker.
            with self._closing_waker_lock:
                waker, self._closing_waker = self._closing_waker, None
            if waker is not None:
                waker.close()

    def begin_closing(self) -> None:
        """Mark this process's server as closing, without closing anything: handlers finish the
        request in hand, answer it as the last on its connection, and stop waiting for another
        (:meth:`wait_readable` returns False at once).

        ``server_close()`` calls it; a strategy calls it in a worker process (a forked child)
        whose parent is closing, typically from a signal handler: it only sets a flag and writes
        a byte, so it is safe there.
        """
        self.closing = True
        waker = self._closing_waker
        if waker is not None:
            waker.wake()

    def wait_readable(self, sock: socket.socket, timeout: float | None = None) -> bool:
        """Block until ``sock`` has bytes to read (True), or ``timeout`` seconds pass or the
        server begins closing (False).

        For a handler that keeps an idle connection itself because ``resume_when_readable()``
        said False: the wait ends as soon as the server closes, so an idle connection never
        holds up a stop. Bytes that have already arrived when closing begins still count as a
        request in hand (True): closing then would reset the connection under them.
        """
        pending = getattr(sock, "pending", None)  # an SSLSocket may hold decrypted bytes
        if pending is not None and pending():
            return True
        if self.closing:
            return _readable_now(sock)
        with self._closing_waker_lock:
            waker = self._closing_waker
            if waker is None:
                waker = self._closing_waker = Waker()
        # closing is read again after the waker exists: begin_closing() in between either
        # set it already or wakes this waker.
        if self.closing:
            return _readable_now(sock)
        return _wait_readable(sock.fileno(), waker.fileno(), timeout)

    def _close_loop_if_closed(self) -> None:
        loop = self._loop
        if not self._closed or loop is None:
            return
        self._loop = None
        if loop.pid == os.getpid():
            loop.selector.close()
            loop.waker.close()

    def after_fork(self) -> None:
        """Call first thing in a child process forked to handle connections the parent accepted
        (as ``fork`` does), which will not run this server's loop itself.

        Closes the child's copies of what belongs to the parent's loop: the listeners (so that a
        child outliving the parent's ``server_close()`` keeps no port, adopted ones included),
        the selector, idle and queued connections. Nothing the parent uses is touched: no
        ``shutdown()`` of a shared socket, no unregistering from the epoll set both processes
        share, no unlinking of a Unix socket. The child gets its own closing state, so that
        ``begin_closing()`` in the child wakes only the child's waits.
        """
        for sock in self.listeners:
            sock.close()
        self._own_listeners.clear()
        self._adopted_listeners = ()
        self._unix_paths.clear()
        loop, self._loop = self._loop, None
        if loop is not None:
            for idle in loop.idle_connections():
                idle.request.close()
            # Closing copies only drops this process's descriptors: the parent's epoll set and
            # wake-up socket are unaffected.
            loop.selector.close()
            loop.waker.close()
        while self._resume_queue:
            self._resume_queue.popleft()[0].close()
        self._resume_marks = None
        self._resume_lock = threading.Lock()  # another thread of the parent may have held it
        waker, self._closing_waker = self._closing_waker, None
        if waker is not None:
            waker.close()
        self._closing_waker_lock = threading.Lock()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server_close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.server_address!r} strategy={self.strategy.name!r}>"


_POLL_MAX_MS = 2**31 - 1  # poll() takes a C int of milliseconds


def _readable_now(sock: socket.socket) -> bool:
    try:
        return _wait_readable(sock.fileno(), None, 0)
    except (OSError, ValueError):  # closed meanwhile: nothing to read
        return False


def _wait_readable(fd: int, waker_fd: int | None, timeout: float | None) -> bool:
    """Whether ``fd`` became readable within ``timeout`` (None: no limit), or before ``waker_fd``
    did."""
    if hasattr(select, "poll"):  # no FD_SETSIZE limit, unlike select()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if waker_fd is not None:
            poller.register(waker_fd, select.POLLIN)
        events = poller.poll(None if timeout is None else min(max(0, math.ceil(timeout * 1000)), _POLL_MAX_MS))
        # POLLHUP/POLLERR count too: the read that follows reports what happened.
        return any(ready == fd for ready, _ in events)
    watched = [fd] if waker_fd is None else [fd, waker_fd]  # pragma: no cover - Windows
    ready, _, _ = select.select(watched, [], [], timeout)  # pragma: no cover
    return fd in ready  # pragma: no cover


def _check_drain_timeout(value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"drain_timeout must be None or a number of seconds >= 0, not {value!r}")
    return float(value)


_WAKER = "waker"


class _Listening:
    """Selector data of a listening socket (a class of its own, to tell it from an idle one)."""

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock


class _Idle:
    """A connection waiting in the selector for its next bytes."""

    __slots__ = ("request", "client_address", "deadline", "parked")

    def __init__(self, request: socket.socket, client_address: Address, deadline: float | None) -> None:
        self.request = request
        self.client_address = client_address
        self.deadline = deadline
        self.parked = True


class _LoopState:
    """What one process's loop owns: its selector, its wake-up socket, its idle connections."""

    def __init__(self, pid: int, selector: selectors.BaseSelector, waker: Waker) -> None:
        self.pid = pid
        self.selector = selector
        self.waker = waker
        self._deadlines: list[tuple[float, int, _Idle]] = []
        self._order = itertools.count()
        self._idle: set[_Idle] = set()

    def park(self, request: socket.socket, client_address: Address, deadline: float | None) -> None:
        idle = _Idle(request, client_address, deadline)
        try:
            self.selector.register(request, selectors.EVENT_READ, idle)
        except (ValueError, OSError):  # closed by the handler after all: nothing to watch
            request.close()
            return
        self._idle.add(idle)
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, next(self._order), idle))

    def unpark(self, idle: _Idle) -> None:
        idle.parked = False
        self._idle.discard(idle)
        self.selector.unregister(idle.request)

    def next_wait(self, limit: float | None) -> float | None:
        """How long select() may block: ``limit``, or less if an idle deadline comes sooner."""
        heap = self._deadlines
        while heap and not heap[0][2].parked:
            heapq.heappop(heap)
        if not heap:
            return limit
        until = max(0.0, heap[0][0] - time.monotonic())
        return until if limit is None else min(limit, until)

    def expired(self, now: float) -> list[_Idle]:
        heap = self._deadlines
        expired = []
        while heap and (heap[0][0] <= now or not heap[0][2].parked):
            _, _, idle = heapq.heappop(heap)
            if idle.parked:
                self.unpark(idle)
                expired.append(idle)
        return expired

    def idle_connections(self) -> list[_Idle]:
        return list(self._idle)

    def close_all(self) -> list[_Idle]:
        idle = list(self._idle)
        for entry in idle:
            self.unpark(entry)
        self._deadlines.clear()
        return idle
