"""The server: one selector-based accept loop; the strategy decides how connections are processed.

``Server`` keeps ``socketserver.BaseServer``'s life-cycle methods, with the same names and
meanings, so stdlib request handlers and habits carry over::

    serve_forever()                     handle_request()
      -> _run_turn() until shutdown()     -> _run_turn() until it processed one connection,
                                             or self.timeout passed -> handle_timeout()
    _run_turn(): one select() on listeners and resumed connections, then
      (listener readable)  get_request(), verify_request(), process_request()
      (resumed connection readable)                            process_request()
      process_request()  -------> strategy.process_request()   (thread, child, inline, ...)
                                    finish_request()  -> RequestHandlerClass(request, addr, server)
                                    handle_error()    (if the handler raised)
                                    shutdown_request() -> close_request(), or back to the loop
      (resumed connection idle too long)                       handle_idle_timeout()
      (output writable: bytes a handler left it, write_behind())  write them; once written,
                                                 park or close as shutdown_request() asked
    service_actions()  -> strategy.service_actions()   (serve_forever, every turn: reap workers)
    shutdown()    -> wakes the loop through a socketpair; returns once serve_forever() has stopped
    server_close() -> closes listeners and idle connections, writes what finished handlers left
                      the loop (within graceful_timeout), then strategy.close() drains

What it does better than socketserver: the strategy is an object chosen by name with validated
options (no mixin order, no mutable class attributes); ``shutdown()`` wakes the selector instead
of waiting out ``poll_interval``; a handler can return an idle connection to the loop together
with the connection's own state (:meth:`Server.resume_when_readable`), so that keep-alive
connections do not pin a worker; a handler in a thread can leave the bytes a slow client has
not taken yet to the loop (:meth:`Server.write_behind`), so that slow downloads do not either.

Ownership across ``fork()``: a process owns the listeners it created (or was handed with
``add_listener(own=True)``) and its loop. :meth:`Server.after_fork` gives a forked child a
server that owns nothing of its parent's, so the rest of this module never compares pids.
"""

from __future__ import annotations

import contextlib
import errno
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
from socket import socket as Socket  # not socket.socket: Server.socket is socketserver's attribute
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
from .outbuffer import DEFAULT_LIMIT, DEFAULT_MEMORY, Output
from .plugins import OBSERVERS, notify, observers, resolve_strategy
from .strategy import Address, Strategy, check_options

log = logging.getLogger("gearshift")

#: How many connections one readiness event of a listener may accept before the loop looks at
#: its other work again: enough to absorb a burst, few enough to stay fair to idle connections.
ACCEPT_BATCH = 32
_NOT_OPEN = object()  # close_request() of a connection this process did not accept (or closed)


class Server:
    """A socketserver-compatible server whose concurrency model is a strategy chosen by name.

    ``Server(("127.0.0.1", 8000), MyHandler, strategy="thread", daemon_threads=True)``

    ``server_address`` is ``(host, port)`` (IPv4, or IPv6 when the host is an IPv6 literal) or a
    filesystem path for a Unix stream socket. Keyword ``options`` go to the strategy; a name it
    does not accept raises ``TypeError`` listing the ones it does. ``listener`` adopts an
    already-bound listening socket instead of binding ``server_address`` (socket activation,
    ``--fd``). ``graceful_timeout`` bounds how long ``server_close()`` waits for in-flight
    requests. ``umask`` sets the mode of a Unix socket the server binds to ``0o777 & ~umask``.
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
        listener: Socket | None = None,
        graceful_timeout: float | None = None,
        umask: int | None = None,
        **options: Any,
    ) -> None:
        strategy_class = resolve_strategy(strategy)
        check_options(strategy_class, options)
        self.RequestHandlerClass = RequestHandlerClass
        self.graceful_timeout = _check_graceful_timeout(graceful_timeout)
        #: Permission bits of a Unix socket this server binds: ``0o777 & ~umask`` (see bind()).
        self.umask = check_umask(umask)
        self.server_address = server_address
        self.listeners: list[Socket] = []
        # What this process must undo when it closes: the listeners it owns, by descriptor (an
        # SSL wrapper keeps the descriptor), each with the Unix socket file it created, if any.
        # Listeners not in it are borrowed (adopted, or inherited by a forked child) and are
        # only closed. after_fork() empties it in the child.
        self._owned: dict[int, _UnixFile | None] = {}
        # This process's loop (selector, wake-up socket, idle connections), made by the first
        # serve_forever() or handle_request(); after_fork() drops the parent's in the child.
        self._loop: _LoopState | None = None
        # Connections a handler asked to resume (resume_when_readable), with their state, from
        # that call, through the wait in the loop, until the next handler on them takes the
        # state (resumed_state) or the connection closes (close_request).
        self._resuming: dict[Socket, _Resume] = {}
        # Connections whose handler writes behind (write_behind), from that call until the
        # loop has written what they kept, or they close.
        self._outputs: dict[Socket, Output] = {}
        # Connections accepted and not closed yet (close_request), wherever they are: in a
        # handler, parked, or being written, with their client's address. Single dict operations
        # are atomic: handlers close from their own threads.
        self._open: dict[Socket, Address] = {}
        # The process whose serve_forever() told the observers that the server started: the
        # one that tells them it stops (not a forked child closing its copy).
        self._started_in: int | None = None
        observers()  # the registry is built, installed observers included, before any event
        self._run = _RunState()
        # Closing: ``closing`` is set by server_close() or begin_closing(); ``_closed`` only by
        # server_close(), which runs once; ``_closing_waker`` wakes wait_readable() then.
        #: True once this process's server has begun closing (``server_close()``, or
        #: ``begin_closing()`` in a worker process): handlers should finish the request in hand
        #: and close the connection rather than wait for another on it.
        self.closing = False
        self._closed = False
        # server_close() was called on the loop's thread while the loop ran: the loop closes
        # the server as it returns (see server_close).
        self._close_when_stopped = False
        self._closing_waker: Waker | None = None
        self._closing_waker_lock = threading.Lock()
        # The listener get_request() accepts from: the one the loop found readable.
        self._ready_listener: Socket | None = None
        # False once stop_accepting() was called: the loop no longer watches the listeners.
        self._accepting = True
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
            self._owned[sock.fileno()] = None
            if bind_and_activate:
                try:
                    self.server_bind()
                    self.server_activate()
                except BaseException:
                    self.server_close()
                    raise

    # -- socketserver's set-up methods ----------------------------------------------------------

    @property
    def socket(self) -> Socket:
        """The first listening socket (socketserver's attribute)."""
        return self.listeners[0]

    def server_bind(self) -> None:
        """Bind the first listener to ``server_address`` and record the real address."""
        bind(self.socket, self.server_address, umask=self.umask)
        self.server_address = self.socket.getsockname()
        self._own(self.socket)

    def _own(self, sock: Socket) -> None:
        unix_file = None
        if sock.family == getattr(socket, "AF_UNIX", None):
            path = os.fsdecode(sock.getsockname())
            with contextlib.suppress(OSError):
                unix_file = _UnixFile(path, os.stat(path).st_ino)
        self._owned[sock.fileno()] = unix_file

    def server_activate(self) -> None:
        self.socket.listen(self.request_queue_size)

    def add_listener(self, sock: Socket, *, own: bool = False) -> None:
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
            self._own(sock)
        self.listeners.append(sock)
        if len(self.listeners) == 1:
            self.server_address = sock.getsockname()
            self.address_family = sock.family
        if self._loop is not None and self._accepting:
            self._loop.selector.register(sock, selectors.EVENT_READ, _Listening(sock))

    def fileno(self) -> int:
        return self.socket.fileno()

    # -- running the loop ----------------------------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Handle connections until ``shutdown()``.

        ``poll_interval`` is now only how often ``service_actions()`` runs while idle (reaping);
        ``shutdown()`` does not wait for it.
        """
        run = self._run
        # Recorded before anything else, so that shutdown() from a signal handler on this thread
        # never waits for itself, even outside the loop proper (a supervisor's serve()).
        run.serving_thread = threading.get_ident()
        run.stopped.clear()
        if self._started_in is None:
            self._started_in = os.getpid()
            if OBSERVERS.server_started:
                notify(OBSERVERS.server_started, server=self)
        try:
            self.strategy.serve(lambda: self._run_loop(poll_interval))
        finally:
            run.stop_requested = False
            try:
                self._close_if_asked()
            finally:
                run.serving_thread = None
                run.stopped.set()

    def shutdown(self) -> None:
        """Stop ``serve_forever()`` and wait until it has returned.

        Safe from any thread and from a signal handler: called on the loop's own thread (a
        ``sync`` handler, a signal handler in the main thread) it only asks the loop to stop,
        since waiting for itself would deadlock. After it returns no connection is accepted.
        """
        run = self._run
        run.stop_requested = True
        self.strategy.stop_serving()
        loop = self._loop
        if loop is not None:
            loop.waker.wake()
        if threading.get_ident() in (run.loop_thread, run.serving_thread):
            return
        run.stopped.wait()

    def handle_request(self) -> None:
        """Handle one connection event (a new connection or a resumed one), or time out after
        ``self.timeout`` seconds and call ``handle_timeout()``: one or more turns of the loop
        ``serve_forever()`` runs, each processing at most one connection."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        loop = self._enter_loop()
        try:
            while True:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if self._run_turn(loop, remaining, one=True):
                    return
                if deadline is not None and time.monotonic() >= deadline:
                    self.handle_timeout()
                    return
        finally:
            self._leave_loop()
            self._close_if_asked()

    def _run_loop(self, poll_interval: float) -> None:
        """The loop ``serve_forever()`` runs (through ``strategy.serve``), in this process."""
        loop = self._enter_loop()
        run = self._run
        strategy = self.strategy
        try:
            while not run.stop_requested:
                soon = strategy.service_within()
                self._run_turn(loop, poll_interval if soon is None else min(poll_interval, soon))
                self.service_actions()
        finally:
            self._leave_loop()

    def _run_turn(self, loop: _LoopState, wait: float | None, *, one: bool = False) -> bool:
        """One turn of the loop: watch the outputs handed off, wait at most ``wait`` seconds
        for readiness, accept from ready listeners and resume ready connections, then expire
        idle ones. With ``one``, at most one connection is processed (``handle_request``).
        Returns whether a connection was processed."""
        run = self._run
        loop.watch_queued()
        events = loop.selector.select(loop.next_wait(wait))
        processed = False
        for key, _ in events:
            # Checked before every accept: nothing is accepted after shutdown().
            if run.stop_requested and not one:
                break
            data = key.data
            if data.__class__ is _Listening:
                processed = self._accept(data, 1 if one else ACCEPT_BATCH) > 0 or processed
            elif data.__class__ is _Resume:
                if loop.take(data):
                    self._process(data.request, data.client_address)
                    processed = True
            elif data is _WAKER:
                loop.waker.drain()
            else:
                self._output_writable(loop, data)
            if one and processed:
                break
        self._expire_idle(loop)
        return processed

    def _enter_loop(self) -> _LoopState:
        if self.closing:
            raise ValueError("cannot serve on a closed server")
        loop = self._loop
        if loop is None:
            loop = _LoopState()
            for sock in self.listeners if self._accepting else ():
                loop.selector.register(sock, selectors.EVENT_READ, _Listening(sock))
            self._loop = loop
        self._run.loop_thread = threading.get_ident()
        loop.waker.catch_signals()
        loop.start_pumping()
        return loop

    def _leave_loop(self) -> None:
        loop = self._loop
        if loop is not None:
            loop.stop_pumping()
            loop.waker.release_signals()
        self._run.loop_thread = None
        self._close_loop_if_closed()

    def _accept(self, listening: _Listening, limit: int) -> int:
        self._ready_listener = listening.sock
        accepted = 0
        run = self._run
        # stop_accepting() may come from a signal handler during this turn, after select()
        # reported the listener readable: checked before every accept, like stop_requested.
        while accepted < limit and self._accepting:
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
                if exc.errno == errno.EINVAL and self._loop is not None:
                    # Not listening any more: shut down by another process sharing it (a
                    # supervisor's server_close() while this worker still runs its loop).
                    log.debug("listener %s was shut down; no longer accepting from it", listening.sock)
                    with contextlib.suppress(KeyError, ValueError):
                        self._loop.selector.unregister(listening.sock)
                    break
                raise
            accepted += 1
            self._open[request] = client_address
            if OBSERVERS.connection_accepted:
                notify(OBSERVERS.connection_accepted, server=self, request=request, client_address=client_address)
            if self.verify_request(request, client_address):
                self._process(request, client_address)
            else:
                self.shutdown_request(request)
            if run.stop_requested:
                break
        return accepted

    def get_request(self) -> tuple[Socket, Address]:
        """Accept one connection and return ``(request, client_address)``: socketserver's hook,
        which the loop always accepts through (override it to wrap accepted sockets, in TLS say).

        It accepts from the listener the loop found readable: ``self.socket`` when there is only
        one. With several (``add_listener``), an override should call ``super().get_request()``;
        ``self.socket.accept()`` would only ever reach the first listener.
        """
        listener = self._ready_listener
        return (self.socket if listener is None else listener).accept()

    def _process(self, request: Socket, client_address: Address) -> None:
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

    # -- connections resumed by the loop -------------------------------------------------------

    def resume_when_readable(
        self, request: Socket, client_address: Address, idle_timeout: float | None = None,
        state: object = None,
    ) -> bool:
        """Ask the loop to take ``request`` back when the current handler finishes, watch it, and
        hand it to the strategy again (``process_request``) when it has bytes to read; close it
        if it stays idle ``idle_timeout`` seconds (after ``handle_idle_timeout``).

        ``state`` travels with the connection: whatever the handler needs to carry on (HTTP
        keeps its parser and buffers there). The handler that runs when the connection is
        resumed, and ``handle_idle_timeout``, get it back with :meth:`resumed_state`.

        Called by a handler (HTTP keep-alive between requests) so that a waiting connection costs
        a selector entry, not a thread or a turn of a ``sync`` loop. Returns False when the loop
        cannot take it back (this process runs no loop, as in a forked child, or the server is
        closing): the handler then closes the connection, or waits for it with
        :meth:`wait_readable`. After ``begin_closing()`` alone (a worker process leaving
        gracefully, whose loop still runs) the loop still takes it: the handler answered with
        keep-alive before it saw ``closing``, and the connection's next request is answered
        as its last rather than the connection closed under it.
        """
        loop = self._loop
        if loop is None or loop.closed:
            return False
        resume = self._resume_of(request, client_address)
        resume.idle_timeout = idle_timeout
        resume.state = state
        resume.wanted = True
        return True

    def _resume_of(self, request: Socket, client_address: Address) -> _Resume:
        """The connection's one :class:`_Resume`, made on first use and kept until it closes:
        the selector keeps it as the key's data while the connection is registered, so handing
        the connection back changes nothing in the selector."""
        resume = self._resuming.get(request)
        if resume is None:
            resume = self._resuming[request] = _Resume(request, client_address)
        return resume

    def resumed_state(self, request: Socket) -> object:
        """The ``state`` given to :meth:`resume_when_readable` for ``request`` when the loop
        resumed it, once (later calls return None); None for a new connection.

        A handler calls it first thing; a handler that does not (a stdlib one) simply never
        gets the state, and the connection closes as usual when it returns."""
        resume = self._resuming.get(request)
        if resume is None:
            return None
        state, resume.state = resume.state, None
        return state

    def set_state(self, request: Socket, client_address: Address, state: object) -> None:
        """Give ``state`` to the next handler on ``request`` (:meth:`resumed_state` returns it)
        without asking the loop to resume the connection: how what :meth:`request_ready` read
        in the loop reaches the handler that runs in a worker."""
        resume = self._resume_of(request, client_address)
        resume.idle_timeout = None
        resume.state = state
        resume.wanted = False

    def request_ready(self, request: Socket, client_address: Address) -> bool:
        """Called in the loop by a strategy that wants a connection's request received before
        it spends a worker on it (``threadpool``), for a new connection and for a resumed one.
        It must not block.

        True: run the handler now; it will not wait for the client. False: the protocol took
        the connection back (:meth:`resume_when_readable`) to wait for the rest of the request;
        the strategy then calls :meth:`shutdown_request`, which parks it in the loop, and gets
        it again through ``process_request`` when more bytes arrive.

        The default is True: a handler that reads for itself (a stdlib one) waits in its worker.
        A protocol server (HTTP) overrides it to read ahead."""
        return True

    def handle_overload(self, request: Socket, client_address: Address) -> None:
        """Called in the loop by a strategy that has no room for a connection now (a full
        queue, a thread limit reached). Closes it; a protocol may first say why, without
        blocking (HTTP's 503). The strategy logs the overload."""
        self.shutdown_request(request)

    def _expire_idle(self, loop: _LoopState) -> None:
        # Still in _resuming: handle_idle_timeout() finds the state as a handler would.
        for resume in loop.expired(time.monotonic()):
            self.handle_idle_timeout(resume.request, resume.client_address)
        if loop.output_deadlines:
            for output in loop.expired_outputs(time.monotonic()):
                output.expire()
                self._output_done(loop, output)

    # -- writing behind the handler ------------------------------------------------------------

    def can_write_behind(self, request: Socket) -> bool:
        """Whether a handler on the calling thread can hand bytes for ``request`` to the loop
        (:meth:`write_behind`): the loop of this process runs, in another thread, and
        ``request`` is a plain socket (an ``SSLSocket`` cannot be written from two threads).

        False under ``sync`` (the handler is the loop), in a forked child (no loop), while the
        loop is stopped or the server closing, and for TLS: a handler then writes itself."""
        loop = self._loop
        return (
            loop is not None
            and loop.pumping
            and type(request) is socket.socket
            and threading.get_ident() != self._run.loop_thread
        )

    def write_behind(
        self, request: Socket, client_address: Address, *, memory: int = DEFAULT_MEMORY,
        limit: int = DEFAULT_LIMIT, timeout: float = 10.0, min_rate: float = 0.0,
    ) -> Output | None:
        """An :class:`~gearshift.core.outbuffer.Output` to write ``request``'s bytes through, so
        that the handler need not wait for a slow client: what the socket does not take at once
        is kept (up to ``memory`` bytes in memory, the rest in a temporary file) and written by
        the loop as the client reads; a write waits only while more than ``limit`` bytes are
        kept. ``timeout`` and ``min_rate`` pace the client (see ``Output``); one too slow is
        logged and its connection closed.

        When the handler's turn ends (``shutdown_request``) with bytes still kept, the loop
        writes them first, then parks the connection (``resume_when_readable``) or closes it.
        The same Output is returned for the rest of the turn. None when the loop cannot write
        for this thread (:meth:`can_write_behind`): the handler writes to the socket itself."""
        output = self._outputs.get(request)
        if output is not None and not output.closed:
            return output
        memory, limit = _check_size("memory", memory), _check_size("limit", limit)
        timeout, min_rate = _check_timeout(timeout), _check_seconds("min_rate", min_rate)
        loop = self._loop
        if loop is None or not self.can_write_behind(request):
            return None
        output = Output(request, client_address, loop, memory=memory, limit=limit, timeout=timeout,
                        min_rate=min_rate)
        self._outputs[request] = output
        return output

    def stop_accepting(self) -> None:
        """Accept no more connections in this process and go on serving those its loop holds:
        a keep-alive connection's next request is served (as its last, once ``closing`` is
        set) instead of the connection being closed under a request on its way. For a worker
        process leaving gracefully while its siblings accept from the listeners they share.
        Called on the loop's thread (a signal handler there too); for good: a server that
        stopped accepting is closed, not restarted."""
        self._accepting = False
        loop = self._loop
        if loop is not None:
            for sock in self.listeners:
                with contextlib.suppress(KeyError, ValueError):
                    loop.selector.unregister(sock)

    @property
    def held_connections(self) -> int:
        """How many connections this process accepted and has not closed yet: in a handler,
        parked until their next bytes, or being written. What a worker that stopped accepting
        waits to see fall to 0 before it stops its loop: a connection still in a handler when
        the loop stopped would have its keep-alive response followed by a close the client
        cannot tell from a reset."""
        return len(self._open)

    @property
    def pending_writes(self) -> int:
        """How many connections have bytes kept for the loop to write (:meth:`write_behind`)."""
        return sum(1 for output in list(self._outputs.values()) if output.buffered or output.unsent)

    def _output_writable(self, loop: _LoopState, output: Output) -> None:
        """In the loop: ``output``'s socket can take bytes."""
        if not output.writable(time.monotonic()):
            loop.push_deadline(output)
            return
        self._output_done(loop, output)

    def _output_done(self, loop: _LoopState, output: Output) -> None:
        """In the loop: nothing is left to write on ``output`` (or it failed): stop watching it,
        then do what its handler asked at the end of its turn."""
        loop.unwatch(output)
        request = output.sock
        if output.error is not None and not output.closed:
            if isinstance(output.error, TimeoutError):
                log.info("closing connection from %s: the client did not take the response in time",
                         output.client_address)
            else:
                log.debug("connection from %s lost while writing: %s", output.client_address, output.error)
        if not output.finished:
            return  # the handler is still writing: it sees the error, or writes afresh
        if self._outputs.get(request) is output:
            del self._outputs[request]
        after, failed = output.after, output.error is not None
        output.close()
        if failed or not isinstance(after, _Resume) or not loop.hand_back(after, self):
            self._close_connection(request)

    def _drain_outputs(self, outputs: list[Output], deadline: float | None) -> None:
        """For server_close(): write what finished handlers left, until ``deadline``; then close
        their connections (what is left unwritten is dropped, and logged)."""
        poller = select.poll()
        by_fd: dict[int, Output] = {}
        now = time.monotonic()
        for output in outputs:
            output.start_wait(now)
            by_fd[output.sock.fileno()] = output
            poller.register(output.sock, select.POLLOUT)

        def done(output: Output) -> None:
            fd = output.sock.fileno()
            poller.unregister(fd)
            del by_fd[fd]
            if self._outputs.get(output.sock) is output:
                del self._outputs[output.sock]
            output.close()
            self._close_connection(output.sock)

        while by_fd:
            now = time.monotonic()
            until = [o.deadline for o in by_fd.values() if o.deadline is not None]
            if deadline is not None:
                until.append(deadline)
            wait = max(0.0, min(until) - now) if until else None
            for fd, _ in poller.poll(None if wait is None else math.ceil(wait * 1000)):
                output = by_fd[fd]
                if output.writable(time.monotonic()):
                    done(output)
            now = time.monotonic()
            for output in [o for o in by_fd.values() if o.deadline is not None and o.deadline <= now]:
                output.expire()
                log.info("closing connection from %s: the client did not take the response in time",
                         output.client_address)
                done(output)
            if by_fd and deadline is not None and now >= deadline:
                log.warning("drain timeout passed; dropping the unwritten responses of %d connection%s",
                            len(by_fd), "" if len(by_fd) == 1 else "s")
                for output in list(by_fd.values()):
                    done(output)

    def notify(self, hook: str, **arguments: object) -> None:
        """Call the observers of ``gearshift_<hook>`` (see :mod:`gearshift.core.hookspecs`) with
        this server and ``arguments``: how a strategy reports what only it knows, such as
        ``server.notify("worker_started", pid=pid, number=number)``."""
        implementations = getattr(OBSERVERS, hook)
        if implementations:
            notify(implementations, server=self, **arguments)

    # -- socketserver's per-request hooks ------------------------------------------------------

    def verify_request(self, request: Socket, client_address: Address) -> bool:
        """Return False to refuse a new connection before any work is spent on it."""
        return True

    def process_request(self, request: Socket, client_address: Address) -> None:
        """Hand the connection to the strategy (override to wrap, as in socketserver)."""
        self.strategy.process_request(request, client_address)

    def finish_request(self, request: Socket, client_address: Address) -> None:
        """Run the handler; called by the strategy in whatever thread or process it chose."""
        self.RequestHandlerClass(request, client_address, self)

    def shutdown_request(self, request: Socket) -> None:
        """Done with ``request``: return it to the loop if its handler asked for that, else close.
        Bytes its handler left to the loop (:meth:`write_behind`) are written first."""
        resume = self._resuming.get(request)
        if self._outputs:
            output = self._outputs.get(request)
            if output is not None:
                wanted = resume is not None and resume.wanted
                if output.finish(resume if wanted else None):
                    if resume is not None:
                        resume.wanted = False
                    return  # the loop writes, then parks or closes (_output_done)
                self._outputs.pop(request, None)
                failed = output.error is not None and not output.closed
                output.close()
                if failed:
                    self._close_connection(request)
                    return
        if resume is not None and resume.wanted:
            resume.wanted = False  # the next handler asks again if it wants to
            loop = self._loop
            if loop is not None and loop.hand_back(resume, self):
                return
        self._close_connection(request)

    def _close_connection(self, request: Socket) -> None:
        try:
            # Explicit shutdown so that the client sees EOF even if a forked child or a
            # leaked makefile() still holds the descriptor.
            request.shutdown(socket.SHUT_WR)
        except OSError:  # the client is gone already
            pass
        self.close_request(request)

    def close_request(self, request: Socket) -> None:
        client_address = self._open.pop(request, _NOT_OPEN)
        if client_address is not _NOT_OPEN and OBSERVERS.connection_closed:
            notify(OBSERVERS.connection_closed, server=self, request=request, client_address=client_address)
        loop = self._loop
        if loop is not None:
            loop.forget(request)
        if self._resuming:
            self._resuming.pop(request, None)  # its state goes with it
        if self._outputs:
            output = self._outputs.pop(request, None)
            if output is not None:
                output.close()
        request.close()

    def handle_error(self, request: Socket, client_address: Address) -> None:
        """Log the exception being handled; the server keeps serving."""
        log.exception("exception while processing a request from %s", client_address)

    def handle_idle_timeout(self, request: Socket, client_address: Address) -> None:
        """Called in the loop when a connection given back with ``resume_when_readable`` stays
        idle past its timeout. Closes it; a protocol may first say why (HTTP's 408), without
        blocking: the loop is waiting. The connection's state is there for
        :meth:`resumed_state`."""
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
        at most ``graceful_timeout`` seconds when that is set.

        Called on the loop's own thread while the loop runs (a ``SIGTERM`` handler after
        ``shutdown()``, a ``sync`` handler), it sets ``closing``, stops the loop and returns;
        the close itself happens as the loop returns, before ``serve_forever()`` or
        ``handle_request()`` does.
        """
        if self._closed:
            return
        run = self._run
        if run.loop_thread == threading.get_ident():
            # On the loop's own thread while the loop runs: in a signal handler, or in a handler
            # of a strategy that runs them in the loop (sync). A signal handler may have
            # interrupted the loop inside a lock this close takes (the loop's, a strategy's):
            # taking it here would wait for ever. So only what is safe anywhere happens now
            # (handlers see `closing`, the loop stops); the loop closes the server as it
            # returns, before serve_forever() or handle_request() does.
            self._close_when_stopped = True
            run.stop_requested = True
            self.begin_closing()
            loop = self._loop
            if loop is not None:
                loop.waker.wake()
            return
        self._closed = True
        if self._started_in == os.getpid() and OBSERVERS.server_stopping:
            notify(OBSERVERS.server_stopping, server=self)
        loop = self._loop
        idle: list[_Resume] = []
        unwritten: list[Output] = []
        started = time.monotonic()
        if loop is not None:
            idle = loop.close_all(self)  # sets closing under the queue lock: nothing is queued after
            # From here handlers write for themselves; what finished ones left is written below.
            unwritten = loop.stop_pumping()
        self.begin_closing()  # wakes handlers waiting in wait_readable()
        for sock in self.listeners:
            if sock.fileno() in self._owned:
                # Stops the listening socket itself, not just this descriptor: forked children
                # that still hold a copy (a slow request) neither keep the port nor queue
                # connections nobody will accept, and they need not close their copies.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RD)
            sock.close()
        for unix_file in self._owned.values():
            if unix_file is not None:
                unix_file.remove()
        self._owned = {}
        for resume in idle:
            self.shutdown_request(resume.request)
        timeout = self.graceful_timeout
        if unwritten:
            # Before the strategy's drain, which handlers run through meanwhile: a response
            # already complete should not wait for a slow request to end.
            self._drain_outputs(unwritten, None if timeout is None else started + timeout)
            if timeout is not None:
                timeout = max(0.0, started + timeout - time.monotonic())
        try:
            self.strategy.close(timeout)
        finally:
            self._close_loop_if_closed()
            # Drained: a handler still waiting (an abandoned thread) finds closing set, and
            # wait_readable() never polls a closed waker.
            with self._closing_waker_lock:
                waker, self._closing_waker = self._closing_waker, None
            if waker is not None:
                waker.close()

    def _close_if_asked(self) -> None:
        """As the loop returns: the close that server_close() left to it (see there)."""
        if self._close_when_stopped:
            self._close_when_stopped = False
            self.server_close()

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

    def wait_readable(self, sock: Socket, timeout: float | None = None) -> bool:
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
        if self._closed and loop is not None:
            self._loop = None
            loop.close()

    def after_fork(self, *, keep_listeners: bool = False) -> None:
        """Call first thing in a child process forked by a strategy: afterwards the child's
        server owns nothing of its parent's (no listener to shut down, no socket file to
        remove, no loop), and has its own closing state, so that ``begin_closing()`` in the
        child wakes only the child's waits.

        Nothing the parent uses is touched: no ``shutdown()`` of a shared socket, no
        unregistering from the epoll set both processes share, no unlinking of a Unix socket.
        The child's copies of the parent's loop (selector, wake-up socket) and of the idle
        connections parked in it are closed.

        ``keep_listeners=False`` (``fork``): a child that serves the connection it was given
        and never runs the loop. Its copies of the listeners are closed, so that a child
        outliving the parent's ``server_close()`` keeps no port.

        ``keep_listeners=True`` (a ``prefork`` worker): a child that runs the loop itself
        (``serve_forever()``'s ``run_loop``) on the inherited listeners. It makes its own
        selector on first use; the listeners stay borrowed, so the child's ``server_close()``
        only closes its copies and the parent's stay open and listening.
        """
        if not keep_listeners:
            for sock in self.listeners:
                sock.close()
        self._owned = {}
        for output in self._outputs.values():
            output.abandon()
        self._outputs = {}
        self._open = {}
        self._started_in = None
        loop, self._loop = self._loop, None
        if loop is not None:
            for resume in loop.abandon():
                self._resuming.pop(resume.request, None)
                resume.request.close()
            for resume in self._resuming.values():
                resume.queued = None  # its entry was in the parent's loop
        self._run = _RunState()
        waker, self._closing_waker = self._closing_waker, None
        if waker is not None:
            waker.close()
        self._closing_waker_lock = threading.Lock()  # another thread of the parent may have held it

    def setup_worker(self) -> None:
        """Called by a strategy in each long-lived worker process it starts (``prefork``), after
        :meth:`after_fork` and before the worker's loop runs. The default does nothing; a layer
        above overrides it to load what each worker needs for itself (the ``gearshift`` command
        imports the application here, so that a reload imports it afresh). An exception is a
        failed start: the strategy's supervisor stops serving with its message."""

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server_close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.server_address!r} strategy={self.strategy.name!r}>"


_POLL_MAX_MS = 2**31 - 1  # poll() takes a C int of milliseconds


def _readable_now(sock: Socket) -> bool:
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


def _check_size(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a whole number of bytes >= 0, not {value!r}")
    return value


def _check_timeout(value: float) -> float:
    if _check_seconds("timeout", value) == 0:
        raise ValueError("timeout must be > 0")
    return float(value)


def _check_seconds(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
    return float(value)


def _check_graceful_timeout(value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:  # NaN too
        raise ValueError(f"graceful_timeout must be None or a number of seconds >= 0, not {value!r}")
    return float(value)


class _RunState:
    """Whether ``serve_forever()`` runs and whether it was asked to stop (socketserver's
    ``__shutdown_request`` and ``__is_shut_down``), and the threads shutdown() must not wait on."""

    __slots__ = ("loop_thread", "serving_thread", "stop_requested", "stopped")

    def __init__(self) -> None:
        #: shutdown() was called; serve_forever() clears it when it returns.
        self.stop_requested = False
        #: Set while serve_forever() is not running.
        self.stopped = threading.Event()
        self.stopped.set()
        #: The thread in serve_forever() (also outside the loop proper, in a strategy's serve()).
        self.serving_thread: int | None = None
        #: The thread running the loop (serve_forever() or handle_request()).
        self.loop_thread: int | None = None


class _UnixFile:
    """A Unix socket file a server created, removed at close unless another replaced it."""

    __slots__ = ("inode", "path")

    def __init__(self, path: str, inode: int) -> None:
        self.path = path
        self.inode = inode

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self.inode:
                os.unlink(self.path)


_WAKER = "waker"


class _Listening:
    """Selector data of a listening socket (a class of its own, to tell it from an idle one)."""

    __slots__ = ("sock",)

    def __init__(self, sock: Socket) -> None:
        self.sock = sock


class _Resume:
    """A connection that a handler asks the loop to resume, with its state: the selector data
    while it waits for its next bytes. One per connection, from its first hand-back until it
    closes (see Server._resume_of)."""

    __slots__ = (
        "client_address", "deadline", "idle_timeout", "parked", "queued", "request", "state", "turn", "wanted",
    )

    def __init__(self, request: Socket, client_address: Address) -> None:
        self.request = request
        self.client_address = client_address
        self.idle_timeout: float | None = None
        #: Given by resume_when_readable() or set_state(), taken by resumed_state().
        self.state: object = None
        #: Set by resume_when_readable(); shutdown_request() hands the connection back if set.
        self.wanted = False
        self.deadline: float | None = None
        #: The deadline of its entry in the loop's heap (None: it has none). Entries are not
        #: removed when the connection is handed back with a later deadline: the loop finds
        #: them when due and pushes the later one then, so a busy keep-alive connection costs
        #: the heap one entry per idle timeout, not one per request.
        self.queued: float | None = None
        self.parked = False
        #: The loop's turn when it was handed back (see _LoopState.take).
        self.turn = 0


#: Selectors whose wait sees what other threads register while it waits (the kernel keeps the
#: interest list), so that a connection handed back from a handler's thread needs no wake-up.
_SHARED_INTEREST = tuple(
    getattr(selectors, name) for name in ("EpollSelector", "KqueueSelector", "DevpollSelector")
    if hasattr(selectors, name)
)


class _LoopState:
    """What one process's loop owns: its selector, its wake-up socket, the connections handed
    back to it (from any thread) and those parked in it until readable or idle too long, and
    the outputs it writes for handlers (write-behind) until written."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.waker = Waker()
        self.selector.register(self.waker, selectors.EVENT_READ, _WAKER)
        self.sees_new_interest = isinstance(self.selector, _SHARED_INTEREST)
        #: When the loop's current (or next) wait ends at the latest; set by next_wait().
        self.wakes_at = math.inf
        #: Counts the loop's waits; set by next_wait(), just before each.
        self.turn = 0
        # Outputs handed off by handlers in other threads, watched by the loop on its next turn.
        self._queued: deque[Output] = deque()
        # Connections registered for reading: parked, or held by a handler since the loop
        # resumed them (see take()). Kept here because the selector's own look-up of a socket
        # it does not hold formats the socket's repr (two system calls) for its KeyError.
        self._reading: set[Socket] = set()
        # Guards what handlers' threads change as well as the loop: _queued, pumping, and the
        # connections' registrations (the selector's keys, _parked, _deadlines).
        self._lock = threading.Lock()
        self._deadlines: list[tuple[float, int, _Resume]] = []
        self._order = itertools.count()
        self._parked: set[_Resume] = set()
        #: True while the loop runs and writes for handlers (hand_off accepts outputs).
        self.pumping = False
        self._watched: set[Output] = set()
        #: When each watched output's client runs out of time (lazily pruned).
        self.output_deadlines: list[tuple[float, int, Output]] = []
        # Outputs of finished handlers the loop stopped writing (it was stopped): written
        # when it runs again, or by server_close().
        self._orphans: list[Output] = []
        #: Set by close_all(): no connection is handed back to the loop after it.
        self.closed = False

    # -- write-behind --------------------------------------------------------------------------

    def hand_off(self, output: Output) -> bool:
        """From a handler's thread: have the loop write ``output``; False if it is not writing."""
        with self._lock:
            if not self.pumping:
                return False
            was_empty = not self._queued
            self._queued.append(output)
        if was_empty:
            self.waker.wake()
        return True

    def start_pumping(self) -> None:
        with self._lock:
            self.pumping = True
            orphans, self._orphans = self._orphans, []
        for output in orphans:
            self.watch(output)

    def stop_pumping(self) -> list[Output]:
        """The loop stops writing for handlers: those still running write for themselves from
        now on. Returns (and keeps, for the next start) the outputs whose handler finished."""
        with self._lock:
            self.pumping = False
            if not self._queued and not self._watched and not self._orphans:
                return []  # the usual case, and handle_request() stops the loop every call
            outputs = list(self._queued)
            self._queued.clear()
        outputs += self._watched
        for output in list(self._watched):
            self.unwatch(output)
        orphans = [output for output in outputs if output.stop_watching()]
        self._orphans += orphans
        return list(self._orphans)

    def watch(self, output: Output) -> None:
        if output.closed:
            return
        sock = output.sock
        with self._lock:
            try:
                if sock in self._reading:  # still registered while its handler ran (see take())
                    self._reading.discard(sock)
                    self.selector.modify(sock, selectors.EVENT_WRITE, output)
                else:
                    self.selector.register(sock, selectors.EVENT_WRITE, output)
            except (KeyError, ValueError, OSError):  # closed meanwhile
                return
        self._watched.add(output)
        output.start_wait(time.monotonic())
        self.push_deadline(output)

    def unwatch(self, output: Output) -> None:
        if output in self._watched:
            self._watched.discard(output)
            with self._lock, contextlib.suppress(KeyError, ValueError, OSError):
                self.selector.unregister(output.sock)

    def push_deadline(self, output: Output) -> None:
        if output.deadline is not None:
            heapq.heappush(self.output_deadlines, (output.deadline, next(self._order), output))

    def expired_outputs(self, now: float) -> list[Output]:
        heap = self.output_deadlines
        expired = []
        while heap and heap[0][0] <= now:
            deadline, _, output = heapq.heappop(heap)
            if output in self._watched and output.deadline == deadline:
                expired.append(output)
        return expired

    # -- connections waiting for their next bytes --------------------------------------------
    #
    # A connection the loop resumes stays registered in the selector while its handler runs,
    # and a handler that hands it back only updates its key (no system call, no wake-up): a
    # keep-alive request costs the selector nothing, whichever thread served it. Should bytes
    # arrive while the handler still holds it (a pipelined request, the client closing), the
    # loop stops watching it (take()), so level-triggered readiness does not spin the loop,
    # and hand_back() registers it again. A connection that closes is unregistered first
    # (forget()): the selector must not keep a key for a descriptor that may be reused.

    def hand_back(self, resume: _Resume, server: Server) -> bool:
        """From any thread: watch ``resume``'s connection until readable or idle too long;
        False once ``server_close()`` has taken the loop's connections (the caller closes it).
        Not before: a handler that decided to keep the connection before ``begin_closing()``
        (a worker leaving gracefully) has answered with keep-alive, so the loop keeps it and
        its next request is answered as its last."""
        deadline = None if resume.idle_timeout is None else time.monotonic() + resume.idle_timeout
        with self._lock:
            if self.closed:
                return False
            sock = resume.request
            try:
                if sock in self._reading:
                    # Registered all along, for reading, with this resume as its data (a
                    # connection has one): nothing to change, and any wait sees it.
                    seen = True
                else:
                    self.selector.register(sock, selectors.EVENT_READ, resume)
                    self._reading.add(sock)
                    seen = self.sees_new_interest
            except (KeyError, ValueError, OSError):  # closed by the handler after all
                self._reading.discard(sock)
                sock.close()
                return True
            resume.deadline = deadline
            resume.parked = True
            resume.turn = self.turn
            self._parked.add(resume)
            if deadline is not None and (resume.queued is None or deadline < resume.queued):
                heapq.heappush(self._deadlines, (deadline, next(self._order), resume))
                resume.queued = deadline
            # The loop's wait would miss it: a selector reading its interest list once per
            # wait, or an idle deadline before the wait ends.
            wake = threading.get_ident() != server._run.loop_thread and (
                not seen or (deadline is not None and deadline < self.wakes_at)
            )
        if wake:
            self.waker.wake()
        return True

    def take(self, resume: _Resume) -> bool:
        """In the loop: the connection of ``resume`` (a selector key's data) is readable.
        Returns whether the loop is to process it: if it is parked. Not if a handler holds it
        (then stop watching it), if it was unregistered after the selector reported it, or if
        it was handed back during this turn's wait. Then the readiness may be older than the
        hand-back: bytes that arrived while the handler held the connection, which the handler
        may have read since (a handler thread that has not started reading yet, a worker that
        read a pipelined request). The connection stays registered, so the next wait, which
        does not block if it is readable still, reports it afresh."""
        with self._lock:
            sock = resume.request
            if sock not in self._reading:
                # Unregistered since the wait: closed (its descriptor maybe another
                # connection's now), or being written for its handler.
                return False
            if not resume.parked:
                self._reading.discard(sock)
                self.selector.unregister(sock)
                return False
            if resume.turn == self.turn:
                return False
            resume.parked = False
            self._parked.discard(resume)
            return True

    def forget(self, sock: Socket) -> None:
        """Before ``sock`` closes, from the thread that holds it: stop watching it."""
        if sock not in self._reading:  # the usual case; no other thread adds it
            return
        with self._lock:
            if sock in self._reading:
                self._reading.discard(sock)
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self.selector.unregister(sock)

    def watch_queued(self) -> None:
        """In the loop: watch the outputs handed off since its last turn."""
        if not self._queued:
            return
        with self._lock:
            queued = list(self._queued)
            self._queued.clear()
        for output in queued:
            self.watch(output)

    def _unpark(self, resume: _Resume) -> None:
        """Stop watching a parked connection; the caller holds ``_lock``."""
        resume.parked = False
        self._parked.discard(resume)
        self._reading.discard(resume.request)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.selector.unregister(resume.request)

    def next_wait(self, limit: float | None) -> float | None:
        """How long select() may block: ``limit``, or less if an idle deadline comes sooner."""
        now = time.monotonic()
        with self._lock:
            heap = self._deadlines
            self._settle_deadlines()
            outputs = self.output_deadlines
            first = min(heap[0][0] if heap else math.inf, outputs[0][0] if outputs else math.inf)
            if limit is not None:
                first = min(first, now + limit)
            self.wakes_at = first
            self.turn += 1
        return None if first == math.inf else max(0.0, first - now)

    def expired(self, now: float) -> list[_Resume]:
        expired = []
        with self._lock:
            heap = self._deadlines
            self._settle_deadlines()
            while heap and heap[0][0] <= now:
                _, _, resume = heapq.heappop(heap)
                resume.queued = None
                self._unpark(resume)
                expired.append(resume)
                self._settle_deadlines()
        return expired

    def _settle_deadlines(self) -> None:
        """Bring the heap's first entry up to date (see _Resume.queued): drop or push back
        entries until it is a parked connection's own deadline. The caller holds ``_lock``."""
        heap = self._deadlines
        while heap:
            deadline, _, resume = heap[0]
            if deadline != resume.queued:  # its connection has an earlier entry since
                heapq.heappop(heap)
            elif not resume.parked or resume.deadline is None:  # held by a handler, or no timeout
                heapq.heappop(heap)
                resume.queued = None
            elif resume.deadline != deadline:  # handed back since, with a later deadline
                heapq.heapreplace(heap, (resume.deadline, next(self._order), resume))
                resume.queued = resume.deadline
            else:
                return

    def close_all(self, server: Server) -> list[_Resume]:
        """For server_close(): set ``server.closing`` (no hand-back is queued after it), and
        take every connection queued or parked, for the server to close."""
        with self._lock:
            server.closing = True
            self.closed = True
            idle = list(self._parked)
            for resume in idle:
                self._unpark(resume)
            for _, _, resume in self._deadlines:
                resume.queued = None
            self._deadlines.clear()
        return idle

    def abandon(self) -> list[_Resume]:
        """For after_fork(): close this copy of the loop without touching what the parent's
        shares (no unregistering from the epoll set, which the parent's is too), and return
        the connections it held, whose copies the child must close."""
        idle = list(self._parked)
        self.selector.close()
        self.waker.close()
        return idle

    def close(self) -> None:
        self.selector.close()
        self.waker.close()
