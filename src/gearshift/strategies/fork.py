"""``fork``: one child process per request, at most ``max_children`` at a time.

Compared with socketserver's ForkingMixIn:

- waiting for a free slot waits for *our* children only (a pidfd per child where Linux has
  them), never ``waitpid(-1)``, which would steal the exit status of the application's own
  subprocesses;
- finished children are reaped every loop turn, so no zombie outlives ``poll_interval`` even
  when no traffic arrives;
- the parent flushes stdio before forking and the child leaves with ``os._exit`` after flushing
  only what it wrote itself: no output is written twice and no atexit handler runs in a child;
- the port is free as soon as the parent's ``server_close()`` returns, even while a child is
  still finishing a slow request (the server shuts its listeners down, which reaches the
  children's copies too, so a child need not close them);
- the child ignores SIGINT (Ctrl+C reaches the whole process group; the parent decides whether
  in-flight requests finish) and takes SIGTERM's default action, which the parent uses to stop
  children that outlive the drain timeout;
- while serving, the objects the parent had are frozen out of the cyclic garbage collector
  (``freeze_gc``), so no child's collection walks, and so copies, the parent's memory.

The parent starts no threads of its own, so ``os.fork()`` is never called from a threaded
process on gearshift's account (Python 3.12+ warns about that).
"""

from __future__ import annotations

import gc
import os
import select
import signal
import socket
import sys
import time

from ..core.errors import StrategyUnavailableError
from ..core.strategy import Address, Strategy, bool_option, positive_int_option
from ..core.logs import get_logger

TYPE_CHECKING = False  # not typing's: see core/strategy.py
if TYPE_CHECKING:
    from collections.abc import Callable

log = get_logger("gearshift")

try:
    # The C function behind signal.signal(), without the wrapper's conversion of the old handler
    # to an enum: in a child, that conversion alone costs ~40 copy-on-write page faults.
    from _signal import signal as _set_signal
except ImportError:  # pragma: no cover - other implementations
    _set_signal = signal.signal
# Plain ints rather than the Signals/Handlers enum members, for the same reason.
_SIGINT, _SIGTERM = int(signal.SIGINT), int(signal.SIGTERM)
_SIG_DFL, _SIG_IGN = int(signal.SIG_DFL), int(signal.SIG_IGN)

#: After the drain timeout, how long children get between SIGTERM and SIGKILL.
TERMINATE_GRACE = 2.0


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
        # one waitpid() per live child (socketserver's way: 40 system calls a turn at capacity).
        self._exits = select.poll() if _pidfd_open is not None else None
        self._pid_of_fd: dict[int, int] = {}

    # -- the parent ----------------------------------------------------------------------------

    def process_request(self, request: socket.socket, client_address: Address) -> None:
        server = self.server
        while len(self.active_children) >= self.max_children and self.collect_children() >= self.max_children:
            self._wait_for_exit(None)
        if server.closing:
            # server_close() ran while we waited for a slot (a signal handler): the drain is
            # over, so this connection is closed unserved, like one still in the backlog.
            server.shutdown_request(request)
            return
        detach = server.detach_needed()
        _flush_stdio()  # so the child does not inherit, and later write, the parent's buffers
        pid = os.fork()
        if pid == 0:
            # The child's whole life is here rather than in a helper (or handle_connection()):
            # this function has run in the parent for every request, so CPython has already
            # specialised it, while a function called only in children would be written to
            # (warm-up counters, reference counts) and copied, page by page, in every child.
            # For the same reason the child touches as few objects as it can.
            status = 1
            old_int = old_term = None
            try:
                if detach:
                    server.detach_loop()
                try:
                    # Ctrl+C reaches the whole process group: the parent decides whether
                    # in-flight requests finish. SIGTERM's default lets the parent stop a
                    # child that outlives the drain timeout. The replaced handlers are kept
                    # until os._exit(): dropping the last reference to a Python handler (a
                    # lambda, a bound method) would deallocate it here, page faults and all.
                    old_int = _set_signal(_SIGINT, _SIG_IGN)
                    old_term = _set_signal(_SIGTERM, _SIG_DFL)
                except ValueError:  # not the main thread: signals stay as they were
                    pass
                try:  # handle_connection()'s contract, inline (see above)
                    server.finish_request(request, client_address)
                    status = 0
                except Exception:
                    server.handle_error(request, client_address)
                finally:
                    server.shutdown_request(request)
            except BaseException:  # handle_error or shutdown_request failed, or SystemExit
                status = 1
                try:
                    server.handle_error(request, client_address)
                except BaseException:
                    pass
            finally:
                _flush_stdio()  # what this child wrote itself (the parent flushed before fork)
                os._exit(status)
                del old_int, old_term  # not reached; names the references kept above
        pidfd = _pidfd(pid)
        self.active_children[pid] = pidfd
        if pidfd is not None and self._exits is not None:
            self._exits.register(pidfd, select.POLLIN)
            self._pid_of_fd[pidfd] = pid
        server.close_request(request)

    def serve(self, run_loop: Callable[[], None]) -> None:
        """Run the loop with the parent's objects frozen out of the cyclic garbage collector
        (``freeze_gc``, the default), as the ``gc.freeze()`` documentation recommends for a
        process that forks without exec.

        Why: a collection writes into the header of every object it examines, and in a child
        each such write copies a page. Unfrozen, a child whose allocations tip the collector's
        counter over its threshold walks objects the parent made (about 40 pages per HTTP
        request on average here, and how often it happens shifts with unrelated changes to
        what the parent imported). Frozen, children and parent only ever examine objects made
        since serving began. The cost: cyclic garbage from before serving began is not
        reclaimed until serving ends (the freeze is undone then, unless something else had
        frozen objects first).
        """
        if not self.freeze_gc:
            run_loop()
            return
        # No gc.collect() first: freeing garbage now would leave holes across the parent's
        # pages that children then allocate into, page fault by page fault (measured: +18 per
        # request). Cycles that are garbage already stay until serving ends, once.
        ours = gc.get_freeze_count() == 0
        gc.freeze()
        try:
            run_loop()
        finally:
            if ours:
                gc.unfreeze()

    def service_actions(self) -> None:
        self.collect_children()

    def collect_children(self) -> int:
        """Reap every child that has exited; return how many are still running."""
        if self._exits is not None and len(self._pid_of_fd) == len(self.active_children):
            for fd, _ in self._exits.poll(0):
                pid = self._pid_of_fd[fd]
                try:
                    os.waitpid(pid, 0)  # its pidfd is readable: it has exited, this cannot block
                except ChildProcessError:
                    pass
                self._forget(pid)
            return len(self.active_children)
        for pid in list(self.active_children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else (a SIGCHLD=SIG_IGN setting)
                done = pid
            if done:
                self._forget(pid)
        return len(self.active_children)

    def close(self, timeout: float | None = None) -> None:
        """Wait for children (if ``block_on_close``) at most ``timeout`` seconds, then terminate
        the rest: SIGTERM, and SIGKILL for any still alive after a grace period."""
        if not self.block_on_close:
            self.collect_children()
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
            "drain timeout (%.1f s) passed; terminating %d child process%s still running: %s",
            timeout, len(self.active_children), "" if len(self.active_children) == 1 else "es",
            ", ".join(map(str, self.active_children)),
        )
        self._signal_all(signal.SIGTERM)
        grace_end = time.monotonic() + TERMINATE_GRACE
        while self.collect_children() and time.monotonic() < grace_end:
            self._wait_for_exit(grace_end - time.monotonic())
        if self.active_children:
            self._signal_all(signal.SIGKILL)
            for pid in list(self.active_children):
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
                self._forget(pid)

    def terminate(self) -> int:
        """SIGKILL every child and reap it (safe in a signal handler: no logging, no locks)."""
        children = list(self.active_children)
        self._signal_all(signal.SIGKILL)
        for pid in children:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            self._forget(pid)
        return len(children)

    def _wait_for_exit(self, timeout: float | None) -> None:
        """Block until one of our children may have exited, or ``timeout`` passes."""
        if self._exits is not None and self._pid_of_fd and len(self._pid_of_fd) == len(self.active_children):
            # OSError: a signal handler's server_close() closed the pidfds under us.
            try:
                self._exits.poll(None if timeout is None else max(0, int(timeout * 1000)))
            except (InterruptedError, OSError):
                pass
        else:  # no pidfds on this platform: poll our own pids, never waitpid(-1)
            time.sleep(0.005 if timeout is None else max(0.0, min(0.005, timeout)))

    def _forget(self, pid: int) -> None:
        pidfd = self.active_children.pop(pid, None)
        if pidfd is not None:
            if self._pid_of_fd.pop(pidfd, None) is not None and self._exits is not None:
                self._exits.unregister(pidfd)
            os.close(pidfd)

    def _signal_all(self, signum: int) -> None:
        for pid in self.active_children:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass


_pidfd_open = getattr(os, "pidfd_open", None)  # Linux 5.3+, Python 3.9+


def _pidfd(pid: int) -> int | None:
    if _pidfd_open is None:
        return None
    try:
        return _pidfd_open(pid)
    except OSError:  # old kernel, or seccomp: fall back to polling
        return None


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            try:
                stream.flush()
            except Exception:  # a closed or broken stream: nothing to keep
                pass


# The plugin hook, unmarked so that this module does not import pluggy (see core/plugins.py).
def gearshift_strategies() -> list[type[Strategy]]:
    return [ForkStrategy]
