"""``fork``: one child process per request, at most ``max_children`` at a time.

Compared with socketserver's ForkingMixIn:

- waiting for a free slot waits for *our* children only (a pidfd per child where Linux has
  them), never ``waitpid(-1)``, which would steal the exit status of the application's own
  subprocesses; the wait also ends when the server is stopped (``shutdown()``) or closed;
- finished children are reaped every loop turn, so no zombie outlives ``poll_interval`` even
  when no traffic arrives;
- the parent flushes stdio before forking and the child leaves with ``os._exit`` after flushing
  only what it wrote itself: no output is written twice and no atexit handler runs in a child;
- the port is free as soon as the parent's ``server_close()`` returns, even while a child is
  still finishing a slow request (the server shuts its listeners down, which reaches the
  children's copies too, and each child closes its copies first thing: ``Server.after_fork()``);
- stopping is quick: ``server_close()`` sends every child SIGTERM at once, which a child takes
  as "the server is closing" (``Server.begin_closing()``): it finishes the request in hand,
  answered as the last on its connection, and closes an idle keep-alive connection at once.
  Children still running after the drain timeout are killed (SIGKILL), with a warning;
- the child ignores SIGINT (Ctrl+C reaches the whole process group; the parent decides whether
  in-flight requests finish);
- while serving, the objects the parent had are frozen out of the cyclic garbage collector
  (``freeze_gc``), so no child's collection walks, and so copies, the parent's memory.

The parent starts no threads of its own, so ``os.fork()`` is never called from a threaded
process on gearshift's account (Python 3.12+ warns about that).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import select
import signal
import socket
import time
from collections.abc import Callable, Mapping
from typing import NoReturn

from ..core.errors import StrategyUnavailableError
from ..core.hookspecs import hookimpl
from ..core.listeners import Waker
from ..core.strategy import Address, Strategy, bool_option, flush_stdio, positive_int_option
from ..settings import Setting

log = logging.getLogger("gearshift")

# Blocked in the parent around fork(), so that a child cannot be killed by a SIGTERM that
# server_close() sends before the child has installed its handler: the signal waits, pending.
_SIGTERM_ONLY = {signal.SIGTERM}


class ForkStrategy(Strategy):
    """One child process per request, at most max_children at once (ForkingTCPServer)."""

    name = "fork"
    multiprocess = True

    def __init__(  # type: ignore[no-untyped-def]
        self, server, *, max_children: int = 40, block_on_close: bool = True, freeze_gc: bool = True
    ) -> None:
        if not hasattr(os, "fork"):
            raise StrategyUnavailableError(
                "strategy 'fork' needs os.fork(), which this platform does not have; "
                "use 'thread' or 'sync' instead"
            )
        super().__init__(server)
        self.max_children = positive_int_option("max_children", max_children)
        self.block_on_close = bool_option("block_on_close", block_on_close)
        self.freeze_gc = bool_option("freeze_gc", freeze_gc)
        #: pid -> pidfd (or None where pidfds are unavailable) of every child not yet reaped.
        self.active_children: dict[int, int | None] = {}
        # Exited children are found with one poll() over their pidfds per loop turn, instead of
        # one waitpid() per live child (socketserver's way: max_children system calls a turn).
        self._exits = select.poll() if _HAVE_PIDFD else None
        self._pid_of_fd: dict[int, int] = {}
        # Ends a wait for a free slot when the server is stopped or closed (stop_serving, close);
        # created by the first such wait.
        self._wake: Waker | None = None
        self._stopping = False

    # -- the parent ----------------------------------------------------------------------------

    def process_request(self, request: socket.socket, client_address: Address) -> None:
        server = self.server
        while len(self.active_children) >= self.max_children and self.collect_children() >= self.max_children:
            if self._wake is None:
                self._wake = Waker()
            # Read after the waker exists: a stop_serving() in between has set the flag or
            # wakes the wait.
            if self._stopping or server.closing:
                break
            self._wait_for_exit(None, wakeable=True)
        if self._stopping or server.closing:
            # shutdown() or server_close() came while we waited for a slot (a signal handler,
            # another thread): this connection is closed unserved, like one still in the backlog.
            log.debug("closing the connection from %s unserved: the server is stopping", client_address)
            server.shutdown_request(request)
            return
        flush_stdio()  # so the child does not inherit, and later write, the parent's buffers
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGTERM_ONLY)
        try:
            pid = os.fork()
            if pid == 0:
                self._child(request, client_address, mask)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        pidfd = _pidfd(pid)
        self.active_children[pid] = pidfd
        if pidfd is not None and self._exits is not None:
            self._exits.register(pidfd, select.POLLIN)
            self._pid_of_fd[pidfd] = pid
        server.close_request(request)
        if server.closing:  # server_close() began while we forked: it missed this child
            _kill(pid, signal.SIGTERM)

    def _child(self, request: socket.socket, client_address: Address, mask: set[int | signal.Signals]) -> NoReturn:
        """The child's whole life: serve the one connection, then ``os._exit()`` with 0 if the
        handler returned, 1 otherwise.

        As in socketserver's ForkingMixIn, ``handle_error()`` is called only for an
        ``Exception`` from the handler (a ``SystemExit`` just ends the child with status 1) and
        ``shutdown_request()`` exactly once.
        """
        status = 1
        server = self.server
        try:
            server.after_fork()
            with contextlib.suppress(ValueError):  # not the main thread: signals stay as they were
                # Ctrl+C reaches the whole process group: the parent decides whether in-flight
                # requests finish. The parent's server_close() sends SIGTERM: finish the request
                # in hand and stop waiting for more on the connection.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, self._child_sigterm)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a SIGTERM already sent lands now
            try:
                server.finish_request(request, client_address)
                status = 0
            except Exception:
                server.handle_error(request, client_address)
            finally:
                server.shutdown_request(request)
        except SystemExit:
            status = 1
        except BaseException:  # handle_error or shutdown_request failed
            status = 1
            with contextlib.suppress(BaseException):
                log.exception("error in the child process serving %s", client_address)
        finally:
            flush_stdio()  # what this child wrote itself (the parent flushed before fork)
            os._exit(status)

    def _child_sigterm(self, signum: int, frame: object) -> None:
        self.server.begin_closing()

    def stop_serving(self) -> None:
        """``shutdown()``: a wait for a free slot ends, and that connection is closed unserved."""
        self._stopping = True
        if self._wake is not None:
            self._wake.wake()

    def serve(self, run_loop: Callable[[], None]) -> None:
        """Run the loop with the parent's objects frozen out of the cyclic garbage collector
        (``freeze_gc``, the default), as the ``gc.freeze()`` documentation recommends for a
        process that forks without exec.

        Why: a collection writes into the header of every object it examines, and in a child
        each such write copies a page. Unfrozen, a child whose allocations tip the collector's
        counter over its threshold walks objects the parent made (benchmarks/README.md has the
        numbers). Frozen, children and parent only ever examine objects made since serving
        began. The cost: cyclic garbage from before serving began is not reclaimed until
        serving ends (the freeze is undone then, unless something else had frozen objects
        first).
        """
        self._stopping = False
        if self._wake is not None:
            self._wake.drain()
        if not self.freeze_gc:
            run_loop()
            return
        # No gc.collect() first: freeing garbage now would leave holes across the parent's
        # pages that children then allocate into, each allocation a copy-on-write fault.
        # Cycles that are garbage already stay until serving ends, once.
        ours = gc.get_freeze_count() <= _FROZEN_AT_START
        gc.freeze()
        try:
            run_loop()
        finally:
            if ours:
                gc.unfreeze()

    def stats(self) -> Mapping[str, int]:
        """``busy``: children not reaped yet (one that has just finished counts until the next
        loop turn reaps it)."""
        return {"busy": len(self.active_children)}

    def service_actions(self) -> None:
        self.collect_children()

    def collect_children(self) -> int:
        """Reap every child that has exited; return how many are still running."""
        if self._exits is not None and len(self._pid_of_fd) == len(self.active_children):
            for fd, _ in self._exits.poll(0):
                pid = self._pid_of_fd.get(fd)
                if pid is None:  # reaped meanwhile (close() in a signal handler)
                    continue
                self._reap(pid, 0)  # its pidfd is readable: it has exited, this cannot block
            return len(self.active_children)
        for pid in list(self.active_children):
            self._reap(pid, os.WNOHANG)
        return len(self.active_children)

    def _reap(self, pid: int, options: int) -> None:
        try:
            done, status = os.waitpid(pid, options)
        except ChildProcessError:  # reaped by someone else (a SIGCHLD=SIG_IGN setting)
            done, status = pid, 0
        if not done:
            return
        self._forget(pid)
        if status:
            code = os.waitstatus_to_exitcode(status)
            if code < 0:
                log.debug("child process %d was killed by signal %d", pid, -code)
            else:
                log.debug("child process %d exited with status %d", pid, code)

    def close(self, timeout: float | None = None) -> None:
        """Ask every child to finish (SIGTERM: each finishes the request in hand and closes its
        connection), wait for them (if ``block_on_close``) at most ``timeout`` seconds, then
        kill the rest (SIGKILL) with a warning."""
        if self._wake is not None:
            self._wake.wake()  # a process_request() waiting for a free slot gives up
        try:
            if self.collect_children():
                self._signal_all(signal.SIGTERM)
                log.debug(
                    "asked %d child process%s to finish: %s", len(self.active_children),
                    _es(len(self.active_children)), ", ".join(map(str, self.active_children)),
                )
            if not self.block_on_close:
                return
            deadline = None if timeout is None else time.monotonic() + timeout
            while self.collect_children():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._wait_for_exit(remaining)
            if not self.active_children:
                return
            log.warning(
                "drain timeout (%.1f s) passed; killing %d child process%s still running: %s",
                timeout, len(self.active_children), _es(len(self.active_children)),
                ", ".join(map(str, self.active_children)),
            )
            self.terminate()
        finally:
            waker, self._wake = self._wake, None
            if waker is not None:
                waker.close()

    def terminate(self) -> int:
        """SIGKILL every child and reap it (safe in a signal handler: no logging, no locks)."""
        children = list(self.active_children)
        self._signal_all(signal.SIGKILL)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            self._forget(pid)
        return len(children)

    def _wait_for_exit(self, timeout: float | None, wakeable: bool = False) -> None:
        """Block until one of our children may have exited, or ``timeout`` passes; with
        ``wakeable``, also until ``stop_serving()`` or ``close()``."""
        if self._exits is not None and self._pid_of_fd and len(self._pid_of_fd) == len(self.active_children):
            # A poll object of its own: close() may run in a signal handler during this wait
            # and wait too, and one poll object cannot be polled twice at once.
            poller = select.poll()
            for fd in self._pid_of_fd:
                poller.register(fd, select.POLLIN)
            wake = self._wake if wakeable else None
            if wake is not None:
                poller.register(wake, select.POLLIN)
            try:
                events = poller.poll(None if timeout is None else max(0, math.ceil(timeout * 1000)))
            except OSError:
                return
            if wake is not None and events:
                wake.drain()
        else:  # no pidfds on this platform: poll our own pids, never waitpid(-1)
            time.sleep(0.005 if timeout is None else max(0.0, min(0.005, timeout)))

    def _forget(self, pid: int) -> None:
        pidfd = self.active_children.pop(pid, None)
        if pidfd is not None:
            if self._pid_of_fd.pop(pidfd, None) is not None and self._exits is not None:
                self._exits.unregister(pidfd)
            os.close(pidfd)

    def _signal_all(self, signum: int) -> None:
        for pid in list(self.active_children):
            _kill(pid, signum)


def _kill(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _es(count: int) -> str:
    return "" if count == 1 else "es"


#: Objects the interpreter keeps in the permanent generation by itself (CPython 3.12 starts with a
#: few hundred there, 3.11 and 3.13 with none): more than these means the program froze objects of
#: its own before serving, and then the freeze is left in place when serving ends.
_FROZEN_AT_START = gc.get_freeze_count()

_HAVE_PIDFD = hasattr(os, "pidfd_open")  # Linux 5.3+, Python 3.9+


def _pidfd(pid: int) -> int | None:
    if not _HAVE_PIDFD:
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:  # old kernel, or seccomp: fall back to polling
        return None


@hookimpl
def gearshift_strategies() -> list[type[Strategy]]:
    return [ForkStrategy]


# First, so that a third-party plugin whose option clashes with these is the one named.
@hookimpl(tryfirst=True)
def gearshift_add_options(parser: object) -> list[Setting]:
    return [
        Setting("max_children", ("--max-children",), "fork: most child processes at once (default 40)",
                type=int, metavar="N"),
    ]
