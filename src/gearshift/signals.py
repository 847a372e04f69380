"""What the ``gearshift`` command does with the signals an operator sends (see :class:`Signals`)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn, cast

log = logging.getLogger("gearshift")
access_log = logging.getLogger("gearshift.access")

PROG = "gearshift"


class Interrupted(BaseException):
    """A stop signal before the server was serving (a slow import): a BaseException, like
    KeyboardInterrupt, so that the application's ``except Exception`` does not swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def exit_if_threads_remain(status: int) -> None:
    """After a fast stop, do not let the interpreter wait for abandoned request threads."""
    main = threading.main_thread()
    if any(t is not main and not t.daemon and t.is_alive() for t in threading.enumerate()):
        for handler in (*log.handlers, *access_log.handlers):
            with contextlib.suppress(Exception):
                handler.flush()
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(status)


def _signal_numbers(*names: str) -> tuple[int, ...]:
    return tuple(getattr(signal, name) for name in names if hasattr(signal, name))


class Signals:
    """What the command does with the signals an operator sends (see README, "Signals"):

    - TERM, INT: graceful stop: stop accepting, let in-flight requests finish within
      ``--graceful-timeout``, exit 0;
    - QUIT: fast stop: stop accepting, stop the workers at once (gunicorn's meaning), exit 0;
    - a second TERM/INT/QUIT while stopping: exit at once, killing the workers;
    - USR1: reopen the access-log file (logrotate moved it);
    - HUP, USR2: reload and binary upgrade in other servers; no strategy can reload, so they are
      logged and ignored rather than killing the server (their default action).

    Installed before the application is imported: a stop signal during a slow start ends it
    with an error line. The handlers do as little as possible: a stop asks the loop to stop
    (``server.shutdown()`` from the loop's thread only sets a flag), and USR1/HUP/USR2 are queued
    for the loop's next turn (``service_actions``), where logging and reopening files are safe;
    in the handler the interrupted frame may hold the lock of a logging handler or a file.

    Only the process that installed them acts on them. A forked child that kept them (the
    ``fork`` strategy replaces SIGINT and SIGTERM in its children, not these) ignores
    HUP/USR2/QUIT, since ``killall -HUP gearshift`` reaches the children too and the parent
    is the one that acts, and takes SIGTERM/SIGINT the way it would have without them. USR1 is
    queued there too: a worker that runs its own loop (``prefork``) reopens its access log.
    While ``prefork`` supervises, it handles HUP itself (a reload) and passes USR1 on to its
    workers after this handler has queued the master's own reopening.
    """

    STOP = _signal_numbers("SIGTERM", "SIGINT", "SIGQUIT")
    QUEUED = _signal_numbers("SIGHUP", "SIGUSR1", "SIGUSR2")

    def __init__(self) -> None:
        self.server: Any = None
        self.signum: int | None = None  # the stop signal received, if any
        self.fast = False
        self._pending: list[int] = []
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()
        self._service_actions: Callable[[], None] | None = None

    def install(self) -> None:
        self._pid = os.getpid()
        for signum in (*self.STOP, *self.QUEUED):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (main() called from a test's thread)
                break

    def uninstall(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def attach(self, server: Any) -> None:
        """Act on stop signals through ``server``, and on queued ones in its loop's turns."""
        self.server = server
        service_actions = server.service_actions
        self._service_actions = service_actions

        # An instance attribute over the method: the loop calls self.service_actions() every
        # turn (at least every poll_interval), and make_server() takes no server class.
        def run_pending_then_service_actions() -> None:
            if self._pending:
                self.run_pending()
            service_actions()

        server.service_actions = run_pending_then_service_actions

    def detach(self) -> None:
        if self._service_actions is not None:
            with contextlib.suppress(AttributeError):
                del self.server.service_actions
            self._service_actions = None

    def run_pending(self) -> None:
        while self._pending:
            signum = self._pending.pop(0)
            name = signal.Signals(signum).name
            if signum == getattr(signal, "SIGUSR1", None):
                self._reopen_access_log(name)
            else:
                self._reload(name)

    def _reload(self, name: str) -> None:
        # Where a strategy that can reload (a pre-forking one) would be asked to; none can yet.
        strategy = getattr(getattr(self.server, "strategy", None), "name", "?")
        log.warning(
            "%s: strategy %r does not support reload; ignored (restart gearshift to load new code)", name, strategy
        )

    def _reopen_access_log(self, name: str) -> None:
        files = [h for h in access_log.handlers if isinstance(h, logging.FileHandler)]
        if not files:
            log.info("%s: no access-log file to reopen", name)
        for handler in files:
            try:
                # Not a with block: the handler keeps the stream open.
                stream = open(  # noqa: SIM115
                    handler.baseFilename, handler.mode, encoding=handler.encoding, errors=handler.errors
                )
            except OSError as exc:
                log.error(
                    "%s: cannot reopen the access log %s: %s; still writing to the old file",
                    name, handler.baseFilename, exc.strerror or exc,
                )
                continue
            # setStream() swaps under the handler's lock, which request threads hold while writing.
            old = handler.setStream(cast(io.TextIOWrapper, stream))
            if old is not None:
                old.close()
            log.info("%s: reopened the access log %s", name, handler.baseFilename)

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:
            self._in_another_process(signum, frame)
            return
        if signum in self.QUEUED:
            self._pending.append(signum)
            return
        if self.server is None:
            raise Interrupted(signum)
        if self.signum is None:
            self.signum = signum
            self.fast = signum == getattr(signal, "SIGQUIT", None)
            self.server.shutdown()  # on the loop's own thread: only sets a flag and wakes the loop
            return
        self._force_exit(signum)

    def _in_another_process(self, signum: int, frame: Any) -> None:
        if signum == getattr(signal, "SIGUSR1", None):
            # Queued as in the parent: a worker process that runs the loop (prefork's, to which
            # the master passes USR1 on) reopens its own copy of the access log there.
            self._pending.append(signum)
            return
        if signum not in (signal.SIGTERM, signal.SIGINT):
            return
        previous = self._previous.get(signum)
        if callable(previous):
            previous(signum, frame)
        elif previous in (None, signal.SIG_DFL):
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def _force_exit(self, signum: int) -> NoReturn:
        killed = 0
        with contextlib.suppress(Exception):
            killed = self.server.strategy.terminate()
        with contextlib.suppress(OSError):
            # os.write, not logging: the interrupted frame may hold the logging lock
            name = signal.Signals(signum).name
            what = f"second {name}" if signum == self.signum else f"{name} while stopping"
            note = f", killed {killed} worker{'s' if killed != 1 else ''}" if killed else ""
            os.write(2, f"{PROG}: {what}: exiting at once{note}\n".encode())
        os._exit(128 + signum)
