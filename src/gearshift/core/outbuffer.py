"""Write-behind: response bytes a handler hands to the loop instead of waiting for the client.

A handler running outside the loop's thread gets an :class:`Output` from
:meth:`gearshift.Server.write_behind` and writes through it. A write first goes to the socket
directly (without waiting); what the socket does not take is kept, in order, and the loop writes
it as the socket becomes writable. The handler waits only while more than ``limit`` bytes are
kept, so a slow reader costs a buffer, not a thread.

What is kept, per connection: up to ``memory`` bytes in memory; beyond that, in an unnamed
temporary file (gone from the file system from the start, so nothing is left behind whatever
happens); a range of the application's own file (``write_file``) is kept as a descriptor and an
offset, and sent with ``os.sendfile``, never copied. File ranges do not count towards ``limit``:
they cost a descriptor, not memory or disk.

Where no loop writes for the handler (the loop has stopped, or is closing), an Output writes
what it keeps itself, in the handler's thread, as a blocking write would: nothing is lost and
the order holds.

Locking: each Output has its own lock, held for non-blocking work only; the loop's hand-off
queue lock is taken inside it (never the reverse).
"""

from __future__ import annotations

import errno
import logging
import os
import select
import tempfile
import threading
import time
from collections import deque
from typing import IO, TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from socket import socket as Socket

    from .strategy import Address

log = logging.getLogger("gearshift")

#: Defaults of :meth:`gearshift.Server.write_behind` (the HTTP layer passes its own options).
#: In memory: a response the socket did not take at once is a large one, and 64 KiB per slow
#: reader keeps 1,000 of them within 64 MB; the rest goes to a temporary file.
DEFAULT_MEMORY = 64 * 1024
#: Kept in all before the handler waits: whole responses up to about this size leave their
#: thread free at once; 1,000 slow readers of 8 MB cost temporary disk, never RAM.
DEFAULT_LIMIT = 8 * 1024 * 1024

#: Bytes read at a time from a file ``os.sendfile`` refuses (copied through memory instead).
COPY_SIZE = 65536
# sendfile() refusing a kind of file (not an error of the connection): copy it instead.
_SENDFILE_REFUSED = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EOVERFLOW})


class _Pump(Protocol):
    """What an Output needs from the loop: whether it is writing for handlers now, and a way
    to ask it to watch an Output (False when it is not writing)."""

    pumping: bool

    def hand_off(self, output: Output) -> bool: ...


class _Range:
    """``count`` bytes of the file open on ``fd`` from ``offset``."""

    __slots__ = ("count", "fd", "offset", "owned", "spooled")

    def __init__(self, fd: int, offset: int, count: int, *, owned: bool, spooled: bool) -> None:
        self.fd = fd
        self.offset = offset
        self.count = count
        self.owned = owned  # a duplicate of the application's descriptor, closed once sent
        self.spooled = spooled  # in the Output's temporary file (counts towards the limit)


class Output:
    """The bytes of one connection waiting to be written by the loop (see the module docstring).

    ``timeout`` and ``min_rate`` pace the client as a blocking write would: each wait for the
    socket to take bytes may last ``timeout`` seconds, and all the waits of one backlog (from
    bytes being kept until none is) ``timeout + bytes written / min_rate`` seconds; a client
    slower than that is cut off and the connection closed.
    """

    def __init__(
        self, sock: Socket, client_address: Address, pump: _Pump, *,
        memory: int, limit: int, timeout: float, min_rate: float,
    ) -> None:
        self.sock = sock
        self.client_address = client_address
        self.memory_limit = memory
        self.limit = limit
        self.timeout = timeout
        self.min_rate = min_rate
        self._pump = pump
        self._fd = sock.fileno()
        if sock.gettimeout() is None:
            # The loop writes with the descriptor non-blocking; a socket in blocking mode keeps
            # blocking-like reads for its handler through a timeout.
            sock.settimeout(timeout)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._items: deque[bytes | _Range] = deque()
        self._sent_of_first = 0  # bytes of the first in-memory item already written
        self._spool: IO[bytes] | None = None
        self._spool_end = 0
        #: Bytes kept in memory, and in memory plus the temporary file (what ``limit`` bounds).
        self.in_memory = 0
        self.buffered = 0
        #: The most the temporary file has held (what a slow reader cost on disk).
        self.spool_peak = 0
        # Pacing of the current backlog.
        self._waited = 0.0
        self._written = 0
        self._wait_started: float | None = None
        #: When the loop gives up on the client, while it waits for the socket (loop's thread).
        self.deadline: float | None = None
        #: Registered with the loop (queued or in its selector): the loop's to write.
        self.watched = False
        #: The handler's turn ended (``finish``); ``after`` is what to do once written.
        self.finished = False
        self.after: object = None
        self.error: BaseException | None = None
        self.closed = False

    # -- the handler's side --------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` after everything written before; wait only while more than ``limit``
        bytes are kept. Raises the error that ended the connection (``TimeoutError`` for a
        client too slow, or the ``OSError`` of a failed write)."""
        view = memoryview(data).cast("B")
        with self._lock:
            self._check()
            if not self._items:
                self._written = 0  # a new backlog, if any: its pacing starts from here
                view = view[self._write_now(view):]
                if not view:
                    return
            self._keep(view)
            self._after_keep()

    def write_file(self, fd: int, offset: int, count: int) -> None:
        """Write ``count`` bytes of the file open on ``fd`` from ``offset``, after everything
        written before, without copying them (``os.sendfile``). The descriptor is duplicated:
        the caller may close its file at once."""
        if count <= 0:
            return
        with self._lock:
            self._check()
            if not self._items:
                self._written = 0
                written = self._sendfile_now(fd, offset, count)
                offset, count = offset + written, count - written
                if not count:
                    return
            self._items.append(_Range(os.dup(fd), offset, count, owned=True, spooled=False))
            self._after_keep()

    def flush(self) -> None:
        """Wait until everything kept is written (or raise why it cannot be)."""
        with self._lock:
            while self._items and self.error is None and self._pump.pumping:
                self._changed.wait()
            if self._items and self.error is None:
                self._write_here()
            self._check()

    def finish(self, after: object) -> bool:
        """The handler's turn is over: True if bytes are still kept and the loop takes over
        (``after`` is what the server does once they are written); False when nothing is left
        to write (written here if no loop could). Raises nothing: an error is in ``error``."""
        with self._lock:
            if self._items and self.error is None and not self._pump.pumping:
                try:
                    self._write_here()
                except OSError:
                    pass  # in self.error
            if not self._items or self.error is not None:
                return False
            self.finished = True
            self.after = after
            if not self.watched:
                self.watched = self._pump.hand_off(self)
            if not self.watched:  # the loop stopped just now: write it here after all
                self.finished = False
                self.after = None
                try:
                    self._write_here()
                except OSError:
                    pass
                return False
            return True

    # -- the loop's side -----------------------------------------------------------------------

    def start_wait(self, now: float) -> None:
        """The loop begins to watch the socket: the client's time runs from ``now``."""
        with self._lock:
            self._start_wait(now)

    def writable(self, now: float) -> bool:
        """The socket can take bytes (the loop's selector says so): write what it takes.
        True when the loop is done with this Output: nothing is left to write (it is no longer
        ``watched``, and a later write starts afresh) or the connection failed."""
        with self._lock:
            if self._wait_started is not None:
                self._waited += now - self._wait_started
                self._wait_started = None
            self._write_ready()
            if self._items and self.error is None:
                self._start_wait(now)
                return False
            self.deadline = None
            self.watched = False
            return True

    def expire(self) -> None:
        """The client did not take bytes in time (the loop's deadline passed)."""
        with self._lock:
            self._fail(TimeoutError("the client did not take the response in time"))

    def stop_watching(self) -> bool:
        """The loop no longer writes for this Output: a handler waiting writes for itself.
        Returns whether the handler's turn had ended (then nobody else will write it)."""
        with self._lock:
            self.watched = False
            self.deadline = None
            self._wait_started = None
            self._changed.notify_all()
            return self.finished and not self.closed

    def close(self) -> None:
        """Drop what is kept and release the temporary file and descriptors."""
        with self._lock:
            if self.error is None:
                self.error = BrokenPipeError(errno.EPIPE, "the connection was closed")
            self._release()
            self.closed = True
            self._changed.notify_all()

    @property
    def unsent(self) -> int:
        """Bytes still to write, file ranges included."""
        with self._lock:
            total = -self._sent_of_first
            for item in self._items:
                total += len(item) if isinstance(item, bytes) else item.count
            return total

    # -- internals (self._lock held) -----------------------------------------------------------

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    def _after_keep(self) -> None:
        """Bytes were kept: have them written, and wait while over the limit."""
        if not self.watched:
            self.watched = self._pump.hand_off(self)
        while self.buffered > self.limit and self.error is None and self._pump.pumping:
            self._changed.wait()
        if self.error is None and not self._pump.pumping:
            self._write_here()  # no loop writes for us: write as a blocking write would
        self._check()

    def _keep(self, view: memoryview) -> None:
        size = len(view)
        if self.in_memory + size <= self.memory_limit:
            self._items.append(bytes(view))
            self.in_memory += size
        else:
            spool = self._spool
            if spool is None:
                # Unnamed from the start: nothing to remove, whatever happens to this process.
                spool = self._spool = tempfile.TemporaryFile(prefix="gearshift-output-")  # noqa: SIM115
            fd = spool.fileno()
            done = 0
            while done < size:
                done += os.pwrite(fd, view[done:], self._spool_end + done)
            last = self._items[-1] if self._items else None
            if type(last) is _Range and last.spooled and last.offset + last.count == self._spool_end:
                last.count += size
            else:
                self._items.append(_Range(fd, self._spool_end, size, owned=False, spooled=True))
            self._spool_end += size
            self.spool_peak = max(self.spool_peak, self._spool_end)
        self.buffered += size

    def _write_now(self, view: memoryview) -> int:
        """One non-blocking write; how much the socket took."""
        try:
            written = os.write(self._fd, view)
        except BlockingIOError:
            return 0
        except OSError as exc:
            self._fail(exc)
            raise
        self._written += written
        return written

    def _sendfile_now(self, fd: int, offset: int, count: int) -> int:
        """Non-blocking sendfile of a range not yet kept; how much the socket took (0 if the
        file is one sendfile refuses: the range is then kept and copied later)."""
        total = 0
        while total < count:
            try:
                sent = os.sendfile(self._fd, fd, offset + total, count - total)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in _SENDFILE_REFUSED:
                    break
                self._fail(exc)
                raise
            if not sent:
                break  # the file ended early: the kept range reports it
            total += sent
        self._written += total
        return total

    def _write_ready(self) -> None:
        """Write kept items until the socket would block."""
        items = self._items
        try:
            while items:
                item = items[0]
                if isinstance(item, bytes):
                    first = memoryview(item)[self._sent_of_first:]
                    written = os.write(self._fd, first)
                    self._written += written
                    self.in_memory -= written
                    self.buffered -= written
                    if written < len(first):
                        self._sent_of_first += written
                        return
                    self._sent_of_first = 0
                    items.popleft()
                else:
                    self._write_range(item)
                    items.popleft()
                    if item.owned:
                        os.close(item.fd)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(exc)
            return
        finally:
            if self.buffered <= self.limit or not items:
                self._changed.notify_all()
        if self._spool is not None and self._spool_end:
            # Nothing is kept: the temporary file starts again from empty, so a long-lived
            # connection's spooled bytes never add up on disk.
            os.ftruncate(self._spool.fileno(), 0)
            self._spool_end = 0
        self._waited = 0.0
        self._written = 0

    def _write_range(self, item: _Range) -> None:
        """Write all of ``item``, or raise BlockingIOError when the socket would block."""
        while item.count:
            try:
                sent = os.sendfile(self._fd, item.fd, item.offset, item.count)
            except OSError as exc:
                if exc.errno not in _SENDFILE_REFUSED:
                    raise
                sent = self._copy_range(item)
            if not sent:
                raise OSError(errno.EIO, "the file ended before the bytes promised for it")
            item.offset += sent
            item.count -= sent
            self._written += sent
            if item.spooled:
                self.buffered -= sent

    def _copy_range(self, item: _Range) -> int:
        block = os.pread(item.fd, min(item.count, COPY_SIZE), item.offset)
        if not block:
            return 0
        return os.write(self._fd, block)  # BlockingIOError: the socket is full, try again later

    def _write_here(self) -> None:
        """Write everything kept in the caller's thread, waiting for the socket as a blocking
        write would: for when no loop writes."""
        poller = select.poll()
        poller.register(self._fd, select.POLLOUT)
        while self._items and self.error is None:
            self._write_ready()
            if not self._items or self.error is not None:
                break
            wait = self._next_wait()
            if not wait:
                self._fail(TimeoutError("the client did not take the response in time"))
                break
            started = time.monotonic()
            self._lock.release()  # a waiting poll must not keep the loop or close() out
            try:
                ready = poller.poll(wait * 1000.0)
            finally:
                self._lock.acquire()
            self._waited += time.monotonic() - started
            if not ready and self._items:
                self._fail(TimeoutError("the client did not take the response in time"))
        self._check()

    def _next_wait(self) -> float:
        """Seconds the next wait for the socket may take; 0.0 when the backlog's time is up."""
        if not self.min_rate:
            return self.timeout
        left = self.timeout + self._written / self.min_rate - self._waited
        return min(self.timeout, max(left, 0.0))

    def _start_wait(self, now: float) -> None:
        self._wait_started = now
        self.deadline = now + self._next_wait()

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self._release()
        self._changed.notify_all()

    def _release(self) -> None:
        for item in self._items:
            if type(item) is _Range and item.owned:
                os.close(item.fd)
        self._items.clear()
        self._sent_of_first = 0
        self.in_memory = self.buffered = 0
        if self._spool is not None:
            self._spool.close()
            self._spool = None
            self._spool_end = 0

    def abandon(self) -> None:
        """In a forked child: close this process's copies of the descriptors, touch nothing else."""
        for item in self._items:
            if type(item) is _Range and item.owned:
                os.close(item.fd)
        if self._spool is not None:
            self._spool.close()
