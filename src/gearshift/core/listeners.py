"""Listening sockets: TCP over IPv4 and IPv6, and Unix stream sockets.

Unless a server's ``address_family`` says otherwise, the address decides the family the way a
user expects: a ``str`` or ``os.PathLike`` is a Unix socket path; a ``(host, port)`` whose host
is an IPv6 literal (or resolves only to IPv6) is IPv6; anything else is IPv4.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import stat
import threading
from typing import Any

log = logging.getLogger("gearshift")

#: The kernel caps the backlog at net.core.somaxconn; ask for plenty so bursts of connections
#: wait in the kernel instead of being dropped and retried a second later (the stdlib asks for 5).
DEFAULT_BACKLOG = 1024


def family_for(address: Any) -> socket.AddressFamily:
    """The address family a server address belongs to."""
    if isinstance(address, (str, bytes, os.PathLike)):
        if not hasattr(socket, "AF_UNIX"):
            raise ValueError("Unix socket paths are not supported on this platform")
        return socket.AF_UNIX
    if not isinstance(address, tuple) or len(address) < 2:
        raise ValueError(f"server address must be (host, port) or a Unix socket path, not {address!r}")
    host = address[0]
    if host in ("", None):
        return socket.AF_INET
    # A literal is decided without getaddrinfo(): no resolver call for an address that is
    # already numeric.
    for family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError, TypeError):
            socket.inet_pton(family, host)
            return family
    try:
        # No port: it says nothing about the family, and a bad one is bind()'s to refuse, with
        # the stdlib's error (OverflowError for -1), not getaddrinfo()'s "servname not supported".
        infos = socket.getaddrinfo(host, None, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except socket.gaierror as exc:
        # Still a gaierror (what socket.bind() raises for the same host), naming the host.
        raise socket.gaierror(exc.errno, f"cannot resolve host {host!r}: {exc.strerror}") from exc
    families = {info[0] for info in infos}
    return socket.AF_INET if socket.AF_INET in families else socket.AF_INET6


def create_listener(address: Any, *, reuse_address: bool = True, reuse_port: bool = False,
                    backlog: int = DEFAULT_BACKLOG, bind_and_activate: bool = True,
                    family: int | None = None, socket_type: int = socket.SOCK_STREAM,
                    umask: int | None = None) -> socket.socket:
    """A non-blocking listening socket bound to ``address``.

    ``family`` defaults to the address's (:func:`family_for`); ``socket_type`` must be ``SOCK_STREAM``.
    With ``bind_and_activate=False`` the socket is created but not bound, as in socketserver.
    ``umask`` sets a Unix socket's permission bits (see :func:`bind`).
    """
    if socket_type != socket.SOCK_STREAM:
        raise ValueError(f"gearshift serves stream sockets only (SOCK_STREAM), not socket type {socket_type!r}")
    if family is None:
        family = family_for(address)
    sock = socket.socket(family, socket_type)
    try:
        if family != socket.AF_UNIX:
            if reuse_address:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if bind_and_activate:
            bind(sock, address, umask=umask)
            sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def bind(sock: socket.socket, address: Any, *, umask: int | None = None) -> None:
    """Bind ``sock``; for Unix sockets, first remove a stale socket file nobody listens on.

    With ``umask``, a Unix socket file gets the mode ``0o777 & ~umask`` (connecting needs write
    permission, so 0o007 lets the owner and group connect); it is ignored for TCP.
    """
    if sock.family != socket.AF_UNIX:
        sock.bind(address)
        return
    path = os.fsdecode(address)
    _remove_stale_unix_socket(path)
    sock.bind(path)
    if umask is not None:
        # chmod after bind, not os.umask() around it: the umask is process-wide, and another
        # thread creating a file meanwhile would get this one. Nobody can connect in between,
        # since the socket is not listening yet.
        os.chmod(path, 0o777 & ~umask)


def check_umask(umask: object) -> int | None:
    """``umask`` if it is None or an int from 0 to 0o777; ValueError otherwise."""
    if umask is None:
        return None
    if isinstance(umask, bool) or not isinstance(umask, int) or not 0 <= umask <= 0o777:
        raise ValueError(f"umask must be None or an int from 0 to 0o777 (e.g. 0o007), not {umask!r}")
    return umask


def _remove_stale_unix_socket(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EADDRINUSE, f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        log.debug("removing stale Unix socket %s", path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"another server is listening on {path}")


#: Errors from ``accept()`` that concern one connection (or none), not the listener.
TRANSIENT_ACCEPT_ERRORS = (BlockingIOError, InterruptedError, ConnectionAbortedError)


#: errnos meaning "out of descriptors or memory": back off instead of spinning on a ready listener.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Waker:
    """A socketpair that wakes a selector from any thread (or a signal handler).

    Why: ``select()`` with a timeout makes ``shutdown()`` wait up to ``poll_interval``; writing one
    byte here makes it return at once. Writes never block: if the buffer is full, a wake-up is
    already pending.
    """

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        # The wake-up descriptor signal.set_wakeup_fd() had before catch_signals(), or None.
        self._signals_before: int | None = None

    def fileno(self) -> int:
        return self._reader.fileno()

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError, OSError):
            self._writer.send(b"\0")

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError, OSError):
            while self._reader.recv(4096):
                pass

    def catch_signals(self) -> None:
        """On the main thread: make every signal wake the selector, whichever thread the
        kernel delivers it to (``signal.set_wakeup_fd``).

        Why: Python runs a signal's handler on the main thread only, when it next runs Python
        code. A signal that lands on another thread (a request's, or one that forked) leaves a
        main thread blocked in ``select()`` there until its timeout, and ``shutdown()`` from
        the handler would wait for it. With the signal's number written here, the wait ends,
        the handler runs, and the loop sees what it did. Elsewhere than the main thread there
        is no handler to run, and nothing to do.
        """
        if self._signals_before is None and threading.current_thread() is threading.main_thread():
            self._signals_before = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)

    def release_signals(self) -> None:
        """Give signals back to the wake-up descriptor they had before :meth:`catch_signals`
        (only the main thread can; the loop's, when it leaves)."""
        if self._signals_before is not None and threading.current_thread() is threading.main_thread():
            signal.set_wakeup_fd(self._signals_before)
            self._signals_before = None

    def close(self) -> None:
        # A descriptor number left as the wake-up fd would be written to by every signal once
        # another socket reuses it.
        self.release_signals()
        self._reader.close()
        self._writer.close()
