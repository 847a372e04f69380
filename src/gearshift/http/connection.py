"""One HTTP/1.1 connection: read requests, run the WSGI application, write responses.

:class:`WSGIRequestHandler` is an ordinary socketserver-style handler, so any strategy runs it.
Each time a strategy runs it is one *turn* on the connection: it serves every request that is
already readable (pipelining), and when the connection falls idle it hands the socket back to the
core loop with :meth:`gearshift.Server.resume_when_readable`, the :class:`Connection` (parser,
buffers, deadlines) as its state, and returns. The loop hands the socket to the strategy again
when the next request's bytes arrive, and the handler takes its Connection back with
``server.resumed_state()``; so an idle keep-alive connection holds a selector entry, not a
thread, and a ``sync`` server interleaves many keep-alive clients. Where the
loop cannot take it back (a ``fork`` child), the turn keeps the connection and waits for the next
request itself with ``server.wait_readable()``, up to the keep-alive timeout or until the server
starts closing.

A strategy that asks :meth:`gearshift.Server.request_ready` before it spends a worker
(``threadpool``) gets a :class:`ReadAheadConnection` instead: the loop itself reads each request
(head, and by default body) without blocking, and the worker runs only once it is all there.

Nothing here knows which strategy runs it: the only strategy facts it uses are the
``multithread``/``multiprocess`` flags, copied into the environ by the server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import socketserver
import sys
import tempfile
import time
from http import HTTPStatus
from typing import IO, TYPE_CHECKING, Any

from ..core.outbuffer import Output
from ..core.plugins import OBSERVERS, notify
from .accesslog import AccessRecord
from .errors import ClientGone, HTTPError, RequestTimeout
from .parser import Request, RequestParser
from .wsgi import FileWrapper, InputStream, SpooledInput, build_environ, response_head

if TYPE_CHECKING:
    from .proxy import ProxyHeaders
    from .server import WSGIServer

log = logging.getLogger("gearshift")
access_log = logging.getLogger("gearshift.access")

READ_SIZE = 65536
#: Unread request body bytes we are willing to read and discard to keep a connection alive;
#: past this, closing is cheaper than reading.
DISCARD_LIMIT = 65536
#: Closing on a client still sending its body: how long to keep reading (and discarding) while
#: nothing arrives, before giving up on the client. See Connection.linger.
LINGER_IDLE = 2.0
#: Reads one read-ahead turn makes in the loop before it lets the other connections have theirs
#: (the connection stays readable, so its next turn comes at once).
READ_AHEAD_READS = 16
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# ssl is imported only by servers that use TLS: it adds megabytes to every process, and the
# fork strategy pays for each of them on every request. enable_tls() adds its errors.
_WOULD_BLOCK: tuple[type[BaseException], ...] = (BlockingIOError, InterruptedError)
_CLIENT_GONE: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)


def enable_tls() -> None:
    """Treat ssl's want-read/want-write as "would block" and its errors as a client gone."""
    global _WOULD_BLOCK, _CLIENT_GONE
    import ssl

    _WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
    _CLIENT_GONE = (ConnectionError, TimeoutError, ssl.SSLError)


if "ssl" in sys.modules:
    enable_tls()
_BODYLESS_STATUS = frozenset({204, 304})


class _PeerClosed(Exception):
    """The client closed the connection between requests."""


class _Timeout(Exception):
    """A read timed out; ``partial`` says whether a request had started arriving."""

    def __init__(self, partial: bool) -> None:
        self.partial = partial


class _Pace:
    """The waits of one transfer (a request body, or a response): each at most ``each`` seconds,
    and all of them together at most ``each + done / rate`` seconds, ``done`` being the bytes
    moved so far (no total when ``rate`` is 0).

    Only time spent blocked on the client counts: an application that thinks before reading the
    body, or between two writes, uses none of it. So a client moving at least ``rate`` bytes a
    second (after a grace of ``each``) is never cut off, however big the transfer, while one
    that trickles a byte just before each wait would time out is, once its credit runs out.
    """

    __slots__ = ("done", "each", "rate", "waited")

    def __init__(self, each: float, rate: float) -> None:
        self.each = each
        self.rate = rate
        self.waited = 0.0
        self.done = 0

    def reset(self) -> None:
        self.waited = 0.0
        self.done = 0

    def next_wait(self) -> float:
        """Seconds the next wait may take; 0.0 when the total is used up."""
        if not self.rate:
            return self.each
        left = self.each + self.done / self.rate - self.waited
        if left >= self.each:
            return self.each
        return max(left, 0.0)


class WSGIRequestHandler(socketserver.BaseRequestHandler):
    """Serve one turn of an HTTP connection (see the module docstring)."""

    # gearshift's server, which is no socketserver.BaseServer (typeshed's type for the attribute)
    server: WSGIServer  # type: ignore[assignment]

    def handle(self) -> None:
        connection = self.server.resumed_state(self.request)
        if not isinstance(connection, Connection):  # a new connection
            connection = Connection(self.request, self.client_address, self.server)
        connection.run()


class Connection:
    """The state of one HTTP connection across the turns of its handler."""

    def __init__(self, sock: socket.socket, client_address: Any, server: WSGIServer) -> None:
        self.sock = sock
        self.client_address = client_address
        self.server = server
        self.config = server.config
        self.parser = RequestParser(server.config.limits)
        #: Applies forwarding headers to this connection's requests: None unless its peer is trusted.
        self.proxy: ProxyHeaders | None = server.proxy_headers_for(client_address)
        self.head_deadline: float | None = None
        self.served = 0
        self.deferred_error: HTTPError | None = None
        self._timeout: float | None = -1.0  # unknown: force the first settimeout()
        # Did the last read empty the socket's receive buffer (it returned less than it asked)?
        self._drained = False
        config = self.config
        self._body_pace = _Pace(config.body_timeout, config.min_body_rate)
        self._send_pace = _Pace(config.send_timeout, config.min_send_rate)
        # The loop's output this turn, once a response did not fit in the socket (write-behind).
        self._output: Output | None = None
        if type(client_address) is tuple:  # TCP (IPv4 or IPv6); a Unix peer's address is a str
            # Responses are written in as few sends as possible; without this, the second small
            # write of a streamed response waits for the client's delayed ACK.
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    # -- the turn ------------------------------------------------------------------------------

    def run(self) -> None:
        """Serve requests until the connection closes or goes back to the loop."""
        parser = self.parser
        responded = False
        try:
            while True:
                if not parser.requests:
                    if self.deferred_error is not None:
                        raise self.deferred_error
                    if (not responded or self._may_have_more()) and self._read(blocking=False):
                        continue
                    if self._park() or not self._wait_readable():
                        return
                    self._read(blocking=True)
                    continue
                request = parser.requests.popleft()
                self.head_deadline = None
                self._body_pace.reset()
                self._send_pace.reset()
                if not Exchange(self, request).run():
                    return
                self.served += 1
                responded = True
        except HTTPError as exc:
            self.reject(exc)
        except _Timeout as exc:
            if exc.partial:
                self.reject(HTTPError(408, "the request was not received in time"))
        except _PeerClosed:
            pass
        except _CLIENT_GONE as exc:
            log.debug("connection from %s lost: %s", self.client_address, exc)

    def release(self) -> None:
        """Free what the connection holds besides its socket, when it closes: nothing here (a
        :class:`ReadAheadConnection` closes the temporary file of a body it was receiving)."""

    def reject_late(self) -> None:
        """Answer 408 to a client that stopped sending its request (without blocking: from the
        loop), naming the body when the head had arrived."""
        pending = self.parser.requests
        if pending:
            self.reject(RequestTimeout("the request body was not received in time"), blocking=False,
                        request=pending[0])
        else:
            self.reject(HTTPError(408, "the request was not received in time"), blocking=False)

    def _park(self) -> bool:
        """Give the idle connection back to the loop, with this Connection as its state; False
        if the loop cannot take it."""
        if self.parser.idle:
            timeout = self.config.keep_alive_timeout if self.served else self.config.head_timeout
            # The next head's deadline runs from its first byte, not from this wait.
            self.head_deadline = None
        else:
            # Part of a request head has arrived: its deadline goes on across the wait.
            timeout = self._remaining_head_time()
        self._output = None  # what is left to write is the loop's; it resumes the connection after it
        return self.server.resume_when_readable(self.sock, self.client_address, timeout, state=self)

    def _wait_readable(self) -> bool:
        """Where the loop could not take the connection back: wait for the next bytes here,
        through the server so that the wait ends when it starts closing. False: close now (the
        server is closing, or the connection stayed idle past its timeout)."""
        idle = self.parser.idle
        if idle:
            timeout = self.config.keep_alive_timeout if self.served else self.config.head_timeout
        else:
            timeout = self._remaining_head_time()
        if self.server.wait_readable(self.sock, timeout):
            return True
        if idle or self.server.closing:
            return False
        raise _Timeout(partial=True)

    def _remaining_head_time(self) -> float:
        if self.head_deadline is None:
            self.head_deadline = time.monotonic() + self.config.head_timeout
        remaining = self.head_deadline - time.monotonic()
        if remaining <= 0:
            raise _Timeout(partial=True)
        return remaining

    # -- reading -------------------------------------------------------------------------------

    def _read(self, blocking: bool) -> bool:
        """Read once and feed the parser. Non-blocking: False if nothing is there yet."""
        parser = self.parser
        if blocking:
            if parser.idle:
                self.set_timeout(self.config.keep_alive_timeout if self.served else self.config.head_timeout)
            else:
                self.set_timeout(self._remaining_head_time())
        else:
            self.set_timeout(0.0)
        try:
            data = self.sock.recv(READ_SIZE)
        except _WOULD_BLOCK:
            return False
        except TimeoutError:
            raise _Timeout(partial=not parser.idle) from None
        if not data:
            parser.feed_eof()  # raises HTTPError(400) when a request was cut short
            raise _PeerClosed
        self._drained = len(data) < READ_SIZE
        if self.head_deadline is None:
            # The head's deadline runs from its first byte (or from the connection becoming
            # readable for it) to its end, across every wait: a client sending a byte now and
            # then cannot stretch it.
            self.head_deadline = time.monotonic() + self.config.head_timeout
        self._feed(data)
        return True

    def _may_have_more(self) -> bool:
        """After a response: might the next request be waiting in the socket already? Only if
        the last read filled its buffer (so stopped short of what had arrived), or TLS holds
        decrypted bytes the selector cannot see. A client that waits for each response has
        sent nothing more yet: reading anyway costs a system call that finds nothing (and, in
        a worker thread, a turn of the GIL to another thread). A request pipelined later makes
        the connection readable where it waits next, so nothing is missed."""
        return not self._drained or _pending(self.sock)

    def _feed(self, data: bytes) -> None:
        """Feed the parser. An error in a later pipelined request must not cost the requests
        before it their responses: it is kept and raised once those have been served."""
        try:
            self.parser.feed(data)
        except HTTPError as exc:
            if not self.parser.requests:
                raise
            self.deferred_error = exc

    def read_body(self, request: Request) -> None:
        """Block until the parser has more of ``request``'s body (``wsgi.input`` calls this).

        A client too slow for ``body_timeout``/``min_body_rate`` gets :class:`RequestTimeout`
        (a 408, and a ``TimeoutError`` to the application): never a short read."""
        if self.deferred_error is not None:
            raise self.deferred_error
        pace = self._body_pace
        wait = pace.next_wait()
        if not wait:
            raise RequestTimeout("the request body was not received in time")
        self.set_timeout(wait)
        started = time.monotonic()
        try:
            data = self.sock.recv(READ_SIZE)
        except TimeoutError:
            raise RequestTimeout("the request body was not received in time") from None
        except _CLIENT_GONE as exc:
            raise ClientGone(f"the client went away while sending the request body: {exc}") from exc
        pace.waited += time.monotonic() - started
        pace.done += len(data)
        if not data:
            self.parser.feed_eof()
            raise HTTPError(400, "the connection closed before the request body was complete")
        try:
            self._feed(data)
        except HTTPError as exc:
            if not request.complete:
                raise
            # The body is whole; the error is in what follows it: this request still gets its
            # response, and the error is answered after it, as for pipelined requests.
            self.deferred_error = exc

    def linger(self) -> None:
        """Close on a client that may still be sending a body we will not read.

        Closing a socket with unread data makes the kernel send a reset, which can destroy the
        response before the client reads it (and the client sees a broken pipe mid-upload).
        So: end our side (the client sees the response, then EOF), then read and discard until
        the client closes too, stops sending for LINGER_IDLE, or ``body_timeout`` passes.
        """
        sock = self.sock
        timeout = self.config.body_timeout
        self._flush_output()  # ending our side now would cut off what the loop has yet to write
        deadline = time.monotonic() + timeout
        try:
            sock.shutdown(socket.SHUT_WR)
            while (remaining := deadline - time.monotonic()) > 0:
                self.set_timeout(min(LINGER_IDLE, timeout, remaining))
                if not sock.recv(READ_SIZE):
                    return
        except (OSError, ValueError):
            pass

    def set_timeout(self, timeout: float | None) -> None:
        if timeout != self._timeout:
            self.sock.settimeout(timeout)
            self._timeout = timeout

    # -- writing -------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Write all of ``data``, within ``send_timeout``/``min_send_rate`` (see :class:`_Pace`):
        a slow but live client can download a large body, one that takes a byte now and then
        cannot keep the connection forever. A client too slow or gone raises :class:`ClientGone`.

        The first attempt does not wait: most responses fit in the socket's buffer at once.
        What the socket does not take goes to the loop when it can write for this thread
        (``Server.write_behind``: a thread is not held by a slow reader), else is written here.
        """
        output = self._output
        if output is not None:  # earlier bytes are waiting in the loop: these go after them
            self._send_behind(output, data)
            return
        self.set_timeout(0.0)
        try:
            sent = self.sock.send(data)
        except _WOULD_BLOCK:
            sent = 0
        except _CLIENT_GONE as exc:
            raise ClientGone(f"the response could not be delivered: {exc}") from exc
        self._send_pace.done += sent
        if sent < len(data):
            self._send_rest(memoryview(data)[sent:] if sent else data)

    def _send_rest(self, data: bytes | memoryview) -> None:
        output = self._write_behind()
        if output is not None:
            self._send_behind(output, data)
            return
        pace = self._send_pace
        sent = 0
        try:
            while sent < len(data):
                wait = pace.next_wait()
                if not wait:
                    raise TimeoutError("the client did not take the response in time")
                self.set_timeout(wait)
                started = time.monotonic()
                try:
                    n = self.sock.send(data[sent:])
                finally:
                    pace.waited += time.monotonic() - started
                sent += n
                pace.done += n
        except _CLIENT_GONE as exc:
            raise ClientGone(f"the response could not be delivered: {exc}") from exc

    def _write_behind(self) -> Output | None:
        """The loop's output for this connection, if the loop can write for this thread."""
        config = self.config
        output = self.server.write_behind(
            self.sock, self.client_address, memory=config.send_buffer, limit=config.send_spool,
            timeout=config.send_timeout, min_rate=config.min_send_rate,
        )
        self._output = output
        return output

    def _send_behind(self, output: Output, data: bytes | memoryview) -> None:
        try:
            output.write(data)
        except OSError as exc:  # the loop's TimeoutError (client too slow) or a failed write
            raise ClientGone(f"the response could not be delivered: {exc}") from exc

    def _flush_output(self) -> None:
        """Wait until the loop has written what this turn left it (before ending our side)."""
        output = self._output
        if output is not None:
            with contextlib.suppress(OSError):
                output.flush()

    def sendfile(self, file: Any, offset: int, count: int) -> int:
        """Send ``count`` bytes of ``file`` from ``offset`` (zero-copy ``os.sendfile`` on a plain
        socket), within the same limits as :meth:`send`; return the bytes sent (fewer if the
        file is shorter). What the socket does not take at once is left to the loop, as a range
        of the file, when it can write for this thread."""
        sock = self.sock
        if type(sock) is not socket.socket or not hasattr(os, "sendfile"):  # TLS: no sendfile
            return self._send_file_blocks(file, offset, count)
        out, fd = sock.fileno(), file.fileno()
        output = self._output
        if output is not None:  # after bytes already waiting in the loop
            try:
                output.write_file(fd, offset, count)
            except OSError as exc:
                raise ClientGone(f"the response could not be delivered: {exc}") from exc
            file.seek(offset + count)
            return count
        pace = self._send_pace
        self.set_timeout(0.0)  # non-blocking descriptor: the first attempt does not wait
        poller: select.poll | None = None
        total = 0
        try:
            while total < count:
                try:
                    sent = os.sendfile(out, fd, offset + total, count - total)
                except BlockingIOError:
                    if poller is None:
                        output = self._write_behind()
                        if output is not None:
                            output.write_file(fd, offset + total, count - total)
                            total = count
                            break
                        poller = select.poll()
                        poller.register(out, select.POLLOUT)
                    wait = pace.next_wait()
                    started = time.monotonic()
                    ready = poller.poll(wait * 1000.0) if wait else []
                    pace.waited += time.monotonic() - started
                    if not ready:
                        raise TimeoutError("the client did not take the response in time") from None
                    continue
                except ConnectionError:
                    raise
                except OSError:
                    if total:
                        raise
                    return self._send_file_blocks(file, offset, count)  # a file sendfile() refuses
                if not sent:
                    break  # the file ended early
                total += sent
                pace.done += sent
        except ClientGone:
            raise
        except _CLIENT_GONE as exc:
            raise ClientGone(f"the response could not be delivered: {exc}") from exc
        finally:
            if total:
                file.seek(offset + total)
        return total

    def _send_file_blocks(self, file: Any, offset: int, count: int) -> int:
        file.seek(offset)
        total = 0
        while total < count:
            block = file.read(min(count - total, READ_SIZE))
            if not block:
                break
            self.send(block)
            total += len(block)
        return total

    def reject(self, error: HTTPError, blocking: bool = True, *, request: Request | None = None) -> None:
        """Answer a request we will not run with its 4xx/5xx, then let the connection close.
        ``request`` is the request refused, when its head was parsed (for the access line).
        ``blocking=False`` (in the loop itself) sends only what the socket takes at once."""
        log.debug("rejecting request from %s: %d %s", self.client_address, error.status, error.reason)
        body = (error.reason + "\n").encode("utf-8", "replace")
        head = (
            f"HTTP/1.1 {error.status} {_phrase(error.status)}\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n"
            + "".join(f"{name}: {value}\r\n" for name, value in error.headers)
        ).encode("latin-1")
        response = head + self.server.date_and_server() + b"\r\n" + body
        try:
            if blocking:
                self.send(response)
            else:
                self.set_timeout(0.0)
                self.sock.send(response)
            self._discard_pending_input()
        except (OSError, ValueError):
            pass
        if access_log.isEnabledFor(logging.INFO) or OBSERVERS.request_finished:
            # The head's deadline runs from its first byte: the request's duration runs from there.
            started = None if self.head_deadline is None else self.head_deadline - self.config.head_timeout
            received = self.parser.refused_head if request is None else None
            request_done(self, request, error.status, len(body), started=started, received=received)

    def _discard_pending_input(self) -> None:
        """Read what the client already sent, so that closing does not reset the connection and
        destroy the error response before the client reads it."""
        self.set_timeout(0.0)
        for _ in range(16):
            try:
                if not self.sock.recv(READ_SIZE):
                    return
            except (OSError, ValueError):
                return


class ReadAheadConnection(Connection):
    """A connection whose requests the loop receives before a worker is spent on them.

    For a strategy that asks :meth:`gearshift.Server.request_ready` first (``threadpool``): the
    loop calls :meth:`read_ahead` each time the connection is readable, and dispatches it only
    once a request can be served without waiting for the client: its head is in and, with
    ``buffer_request_body`` (the default), its whole body too. Until then the connection waits
    in the loop's selector, under the same deadlines a worker would enforce (``head_timeout``,
    ``body_timeout``/``min_body_rate``), so a slow client costs a selector entry and a buffer,
    never a thread.

    A body is kept in memory up to ``max_body_in_memory`` bytes and spooled to a temporary file
    past it, so memory per connection stays bounded whatever the body's size (``max_body_size``
    still bounds the file). ``wsgi.input`` then reads from memory or that file and never touches
    the network. The worker reads only without blocking too: after a response it serves the next
    pipelined request if that one is ready, else hands the connection back to the loop.
    """

    def __init__(self, sock: socket.socket, client_address: Any, server: WSGIServer) -> None:
        super().__init__(sock, client_address, server)
        self.buffer_body = self.config.buffer_request_body
        # The temporary file holding the body of ``parser.requests[0]`` past max_body_in_memory.
        self._spool: IO[bytes] | None = None
        self._spooled: Request | None = None
        self._continued: Request | None = None  # the request whose 100 Continue was sent
        self._paced: Request | None = None  # the request the body pace is counting for
        self._waiting_since: float | None = None  # parked for body bytes since then

    # -- in the loop (and in the worker, between requests) -------------------------------------

    def read_ahead(self, responded: bool = False) -> bool:
        """Read what has arrived, without ever blocking. True: a worker can take over now (a
        request is ready, or an error is to be answered). False: not yet, and the connection was
        handed back to the loop (:meth:`gearshift.Server.resume_when_readable`), or it is to be
        closed (the client left or was too slow, or the server is closing). ``responded``: the
        worker calls it after a response, when reading is worth it only if more may have arrived
        (:meth:`Connection._may_have_more`)."""
        if self._waiting_since is not None:
            self._body_pace.waited += time.monotonic() - self._waiting_since
            self._waiting_since = None
        pending = self.parser.requests
        try:
            reads = 0
            while True:
                # Also before the first read: a pipelined request may have arrived with the one
                # before it, its body in memory and its client waiting for a 100 Continue.
                if self.buffer_body and pending:
                    self._buffer_body(pending[0])
                if self._ready():
                    return True
                if responded and not reads and not self._may_have_more():
                    return self._wait()
                if reads == READ_AHEAD_READS and not _pending(self.sock):
                    return self._wait()
                if not self._read(blocking=False):
                    return self._wait()
                reads += 1
        except HTTPError as exc:
            self.deferred_error = exc  # the worker answers it
            return True
        except _Timeout:
            self.reject_late()
        except _PeerClosed:
            pass
        except _CLIENT_GONE as exc:
            log.debug("connection from %s lost: %s", self.client_address, exc)
        self.release()
        return False

    def _ready(self) -> bool:
        pending = self.parser.requests
        return self.deferred_error is not None or (bool(pending) and self._servable(pending[0]))

    def _servable(self, request: Request) -> bool:
        """Whether a worker can serve ``request`` without waiting for the client."""
        return request.complete or not self.buffer_body

    def _buffer_body(self, request: Request) -> None:
        """Answer ``request``'s ``Expect: 100-continue`` and keep its body within
        ``max_body_in_memory`` (spool the rest); called after each read while the body arrives."""
        if request.expect_continue and self._continued is not request:
            self._continued = request
            if not request.complete:
                self._send_continue()
        self._spool_body(request)

    def _send_continue(self) -> None:
        output = self._output
        if output is not None:
            # In the worker, after a response of this turn that the loop is still writing: the
            # 100 goes after it.
            self._send_behind(output, _CONTINUE)
            return
        self.set_timeout(0.0)
        # Nothing else is being written to the connection now: its socket buffer takes these few
        # bytes whole, unless the client stopped reading what it was sent.
        try:
            sent = self.sock.send(_CONTINUE)
        except _WOULD_BLOCK:
            sent = 0
        if sent != len(_CONTINUE):
            raise ConnectionError("the client does not read its responses")

    def _spool_body(self, request: Request) -> None:
        """Move ``request``'s body to its temporary file once it outgrows ``max_body_in_memory``."""
        body = request.body
        if self._spooled is not request:
            if len(body) <= self.config.max_body_in_memory:
                return
            self.release()
            self._spooled = request
        try:
            if self._spool is None:
                self._spool = tempfile.TemporaryFile()  # noqa: SIM115  (closed by release())
                self.server.spooling.add(self)
            self._spool.write(body)
        except OSError as exc:
            log.error("cannot spool the request body from %s to a temporary file: %s", self.client_address, exc)
            raise HTTPError(503, "the server cannot store the request body now") from exc
        body.clear()

    def _wait(self) -> bool:
        """Hand the connection back to the loop until more bytes arrive, with what is left of
        the deadline of what it is waiting for; False either way (see :meth:`read_ahead`)."""
        pending = self.parser.requests
        if pending:  # a body is on its way
            request = pending[0]
            pace = self._body_pace
            if self._paced is not request:
                self._paced = request
                pace.reset()
            pace.done = request.body_received
            timeout = pace.next_wait()
            if not timeout:
                raise _Timeout(partial=True)
        elif self.parser.idle:
            timeout = self.config.keep_alive_timeout if self.served else self.config.head_timeout
            self.head_deadline = None  # the next head's deadline runs from its first byte
        else:
            timeout = self._remaining_head_time()
        self._output = None  # what is left to write is the loop's; it resumes the connection after it
        if not self.server.resume_when_readable(self.sock, self.client_address, timeout, state=self):
            self.release()
            return False
        if pending:
            self._waiting_since = time.monotonic()
        return False

    def release(self) -> None:
        """Close and so remove the temporary file of the body being received, if any."""
        spool, self._spool, self._spooled = self._spool, None, None
        if spool is not None:
            self.server.spooling.discard(self)
            spool.close()

    # -- in the worker -------------------------------------------------------------------------

    def run(self) -> None:
        """Serve the requests that are ready, then hand the connection back to the loop (or let
        it close). Every error on the way is answered or logged where it happens."""
        try:
            self._serve_ready()
        except BaseException:  # Ctrl+C in an app: the file goes now, not at garbage collection
            self.release()
            raise

    def _serve_ready(self) -> None:
        # The loop dispatched the connection because read_ahead() found a request ready (or an
        # error to answer): nothing to read or check again before the first one.
        parser = self.parser
        while True:
            pending = parser.requests
            if not (pending and self._servable(pending[0])):
                # Ready for an error: answer it (the requests before it were served above).
                assert self.deferred_error is not None
                self.release()
                self.reject(self.deferred_error, request=pending[0] if pending else None)
                return
            request = pending.popleft()
            self.head_deadline = None
            self._body_pace.reset()
            self._send_pace.reset()
            self._paced = None
            wsgi_input = None
            if self._spooled is request:
                assert self._spool is not None
                self._spool.seek(0)
                wsgi_input = SpooledInput(self._spool)
            try:
                reusable = Exchange(self, request, wsgi_input).run()
            finally:
                if wsgi_input is not None:
                    self.release()
            if not reusable:
                return
            self.served += 1
            if not self.read_ahead(responded=True):
                return


def _pending(sock: socket.socket) -> bool:
    """Whether a TLS socket holds decrypted bytes the selector cannot see."""
    pending = getattr(sock, "pending", None)
    return pending is not None and bool(pending())


class Exchange:
    """One request and its response on a connection."""

    __slots__ = (
        "connection", "request", "status", "headers", "code", "length", "close_requested",
        "head_sent", "chunked", "remaining", "bodyless", "keep_alive", "single", "sent",
        "continue_sent", "input_failed", "has_date", "has_server", "wsgi_input", "head",
    )

    def __init__(self, connection: Connection, request: Request, wsgi_input: SpooledInput | None = None) -> None:
        self.connection = connection
        self.request = request
        #: The body the loop spooled to a file for this request; None: it is read through the parser.
        self.wsgi_input = wsgi_input
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        #: The status line and the application's header lines, encoded (by start_response).
        self.head = b""
        self.code = 0
        self.length: int | None = None
        self.close_requested = False
        self.head_sent = False
        self.chunked = False
        self.remaining: int | None = None
        self.bodyless = False
        self.keep_alive = request.keep_alive and connection.config.keep_alive_timeout > 0
        self.single = False
        self.sent = 0
        self.continue_sent = False
        self.input_failed = False
        self.has_date = self.has_server = False

    def run(self) -> bool:
        """Run the application; True if the connection can serve another request."""
        connection, request = self.connection, self.request
        server = connection.server
        wsgi_input = self.wsgi_input
        started = time.monotonic()
        environ = build_environ(server.base_environ, request, connection.client_address,
                                InputStream(request, self._fetch_body) if wsgi_input is None else wsgi_input,
                                connection.proxy)
        result = None
        reusable = True
        try:
            result = server.app(environ, self.start_response)
            if not (isinstance(result, FileWrapper) and self._send_file(result)):
                try:
                    self.single = len(result) == 1
                except TypeError:  # an iterable without a length
                    pass
                for data in result:
                    if data:
                        self.write(data)
            self._finish()
        except KeyboardInterrupt:
            raise  # Ctrl+C: under sync the app runs in the loop, which must still stop
        except HTTPError as exc:  # from wsgi.input: the body was malformed or too large
            reusable = False
            if not self.head_sent:
                connection.reject(exc, request=request)
        except BaseException as exc:
            # Not only Exception: SystemExit, GeneratorExit from a broken iterator or an app's
            # own BaseException must not stop the server (a sync one runs the app in its loop)
            # nor reach the strategy, which would close the connection without an answer.
            reusable = False
            if isinstance(exc, ClientGone):
                log.info("client %s went away during %s %s: %s", connection.client_address,
                         request.method, environ["PATH_INFO"], exc)
            else:
                log.exception("error in the WSGI application for %s %s", request.method, environ["PATH_INFO"])
                if not self.head_sent:
                    self._send_server_error()
                # else the response is on its way and cannot be completed: closing the
                # connection is how the client learns that it was cut short.
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                try:
                    close()
                except KeyboardInterrupt:
                    raise
                except BaseException:
                    # The response may be complete, but the app's state is not to be trusted
                    # with another request on this connection.
                    reusable = False
                    log.exception("error closing the response iterable of %s %s",
                                  request.method, environ["PATH_INFO"])
        if self.head_sent:  # reject() wrote its own line; a client gone before any answer gets none
            request_done(connection, request, self.code, self.sent, environ=environ, started=started,
                               response_headers=self.headers)
        if self.input_failed:
            return False
        if not reusable:
            if self.head_sent and not request.complete:
                connection.linger()  # a 500 while the client still uploads: let it read the 500
            return False
        return self._discard_body()

    # -- the WSGI callables --------------------------------------------------------------------

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if exc_info:
            try:
                if self.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response() called a second time without exc_info")
        (self.code, self.length, self.close_requested, self.has_date, self.has_server,
         self.head) = response_head(status, headers)
        self.status, self.headers = status, headers
        return self.write

    def write(self, data: bytes) -> None:
        if type(data) is not bytes:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"WSGI applications must yield bytes, not {type(data).__name__}")
            data = bytes(data)
        if not self.head_sent:
            self._send_head(data, final=self.single)
            return
        self._send_body(data)

    # -- the response --------------------------------------------------------------------------

    def _send_head(self, first: bytes, final: bool) -> None:
        if self.status is None:
            raise AssertionError("the application wrote a body before calling start_response()")
        request, connection = self.request, self.connection
        self.bodyless = request.method == "HEAD" or self.code in _BODYLESS_STATUS or self.code < 200
        if self.close_requested or connection.server.closing or self._body_ends_keep_alive():
            self.keep_alive = False
        framing = b""
        if self.length is not None:
            self.remaining = self.length
        elif self.bodyless:
            pass
        elif final:
            framing = b"Content-Length: %d\r\n" % len(first)
            self.remaining = len(first)
        elif request.version == "1.1":
            framing = b"Transfer-Encoding: chunked\r\n"
            self.chunked = True
        else:
            self.keep_alive = False  # HTTP/1.0 without a length: the body ends at close
        parts = [self.head, framing]
        if not self.keep_alive:
            if not self.close_requested:  # else the app's own Connection: close is in the headers
                parts.append(b"Connection: close\r\n")
        elif request.version == "1.0":
            parts.append(b"Connection: keep-alive\r\n")
        if self.has_date or self.has_server:
            parts.append(self._missing_date_and_server())
        else:
            parts.append(connection.server.date_and_server())
        parts.append(b"\r\n")
        self.head_sent = True
        if first and not self.bodyless:
            parts.append(self._frame(first))
        connection.send(b"".join(parts))

    def _missing_date_and_server(self) -> bytes:
        """The ``Date``/``Server`` header lines the application did not set itself."""
        lines = b""
        if not self.has_date:
            lines += b"Date: " + http_date() + b"\r\n"
        if not self.has_server:
            software = self.connection.server.base_environ["SERVER_SOFTWARE"]
            lines += b"Server: " + software.encode("latin-1") + b"\r\n"
        return lines

    def _frame(self, data: bytes) -> bytes:
        if self.chunked:
            self.sent += len(data)
            return b"%x\r\n%b\r\n" % (len(data), data)
        if self.remaining is not None:
            if len(data) > self.remaining:
                log.error("the application sent more than its Content-Length (%d); truncating "
                          "and closing the connection", self.length)
                data = data[: self.remaining]
                self.keep_alive = False
            self.remaining -= len(data)
        self.sent += len(data)
        return data

    def _send_body(self, data: bytes) -> None:
        if self.bodyless:
            return
        framed = self._frame(data)
        if framed:
            self.connection.send(framed)

    def _finish(self) -> None:
        if not self.head_sent:
            self._send_head(b"", final=True)
        if self.chunked:
            self.connection.send(b"0\r\n\r\n")
        elif self.remaining and not self.bodyless:
            log.warning("the application sent %d bytes less than its Content-Length (%d); "
                        "closing the connection", self.remaining, self.length)
            self.keep_alive = False

    def _send_file(self, wrapper: FileWrapper) -> bool:
        """Send a real file with sendfile(); False to fall back to iterating the wrapper."""
        fd = wrapper.fileno()
        if fd is None or self.status is None or self.request.method == "HEAD":
            return False
        try:
            offset = os.lseek(fd, 0, os.SEEK_CUR)
            size = os.fstat(fd).st_size - offset
        except OSError:
            return False
        if self.length is None:
            self.length = size
            self.headers = [*self.headers, ("Content-Length", str(size))]
            self.head += b"Content-Length: %d\r\n" % size
        count = min(size, self.length)
        self._send_head(b"", final=False)
        if self.bodyless:
            return True
        sent = self.connection.sendfile(wrapper.filelike, offset, count)
        self.sent += sent
        self.remaining = (self.remaining or 0) - sent
        return True

    def _send_server_error(self) -> None:
        body = b"Internal Server Error\n"
        self.code = 500
        head = (b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-8\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n" % len(body))
        with contextlib.suppress(OSError):
            self.connection.send(head + self.connection.server.date_and_server() + b"\r\n" + body)
        self.head_sent = True
        self.sent = len(body)

    # -- the request body ----------------------------------------------------------------------

    def _fetch_body(self, request: Request) -> None:
        connection = self.connection
        if request.expect_continue and not self.continue_sent and not self.head_sent:
            self.continue_sent = True
            connection.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            connection.read_body(request)
        except HTTPError:
            self.input_failed = True
            raise

    def _body_ends_keep_alive(self) -> bool:
        """Whether what is left of the request body already rules out another request on this
        connection, so that the response head can say ``Connection: close``: a body the client
        was never asked to send (``100-continue``), or more than DISCARD_LIMIT still to read."""
        request = self.request
        if request.complete:
            return False
        if request.expect_continue and not self.continue_sent:
            return True
        if request.content_length is None:
            return False  # chunked: how much is left is unknown until it is read
        return request.content_length - request.body_received + len(request.body) > DISCARD_LIMIT

    def _discard_body(self) -> bool:
        """Skip what the application left unread of the body, so the next request can be parsed;
        True if the connection can serve another request. When it cannot and the client may
        still be sending, linger so that the client reads the response rather than a reset."""
        request = self.request
        connection = self.connection
        if self.keep_alive and not request.complete:
            discarded = 0
            while not request.complete and discarded <= DISCARD_LIMIT:
                discarded += len(request.body)
                request.body.clear()
                try:
                    connection.read_body(request)
                except HTTPError as exc:
                    if exc.status == 408:
                        return False  # the client went silent: nothing to linger for
                    break  # the rest of the body is malformed or too large: just close
                except OSError:
                    return False  # the client is gone
        request.body.clear()
        if request.complete:
            return self.keep_alive
        connection.linger()
        return False


def request_done(connection: Connection, request: Request | None, status: int, size: int, *,
                 environ: dict[str, Any] | None = None, started: float | None = None,
                 response_headers: list[tuple[str, str]] | tuple[()] = (), received: bytes | None = None,
                 ) -> None:
    """A request was answered: one line on logger ``gearshift.access``, in the server's
    ``access_log_format`` (see :mod:`gearshift.http.accesslog`), and the observers'
    ``gearshift_request_finished``, both from one record, built only if either wants it.
    ``started``: ``time.monotonic()`` when the request began (its head's first byte, or the
    application's call); ``received``: the start of a request head refused before it could be
    parsed."""
    logging_it = access_log.isEnabledFor(logging.INFO)
    if not (logging_it or OBSERVERS.request_finished):
        return
    duration = 0.0 if started is None else max(time.monotonic() - started, 0.0)
    record = AccessRecord(connection.client_address, request, environ, status, size, duration,
                          response_headers, received)
    if OBSERVERS.request_finished:
        notify(OBSERVERS.request_finished, server=connection.server, record=record, worker=os.getpid())
    if not logging_it:
        return
    try:
        line = connection.server.access_line(record)
    except Exception:  # a bug here must not cost the client its connection
        log.exception("cannot format the access line of %s", record.request_line())
        return
    access_log.info("%s", line)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


_date_cache: tuple[int, bytes] = (0, b"")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date() -> bytes:
    """The Date header value (RFC 9110 IMF-fixdate), formatted at most once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        t = time.gmtime(now)
        text = (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
                f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")
        _date_cache = (now, text.encode("ascii"))
    return _date_cache[1]
