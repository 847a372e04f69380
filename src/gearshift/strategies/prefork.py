"""``prefork``: long-lived worker processes under a supervising master; each worker runs the
ordinary accept loop with an inner strategy (``worker_strategy``, any installed one).

The master (the process that called ``serve_forever()``) never accepts: it forks ``workers``
processes, which serve on the listeners they inherit (or, with ``reuse_port``, on listeners of
their own bound with ``SO_REUSEPORT``), and supervises them until ``server.shutdown()``:

- it waits in one ``select()`` on a wake-up pipe (``signal.set_wakeup_fd``, written by every
  signal and by ``stop_serving()``) and on one status pipe per worker (a worker reports there
  that it is ready, that it stops on its own, or why it could not start; EOF when it exits),
  with a timeout for the heartbeat checks. Signal handlers only record the signal; the loop
  acts on it, and logs a line for each;
- heartbeats are timestamps in an anonymous shared ``mmap`` (a slot per worker), written by the
  worker's *loop* thread at most every :data:`HEARTBEAT_EVERY` seconds from ``service_actions``,
  which an idle loop runs at least every quarter of ``timeout`` (``service_within``).
  No file, so no ``/tmp`` that must be a tmpfs. A worker whose heartbeat is older than
  ``timeout`` is dumped (SIGUSR2, on which the worker's ``faulthandler`` writes every thread's
  traceback to stderr) and killed (SIGKILL). Because the loop thread beats, a long request in a
  worker whose inner strategy runs requests in threads (``threadpool``, ``thread``) is not a
  hang; under ``sync`` the request runs in the loop thread, so a request longer than
  ``timeout`` is one (what gunicorn's ``timeout`` does to every worker class);
- a worker that exits is reaped and replaced at once; one that dies before it is ready is
  replaced after a back-off (doubling from 0.1 s to 10 s), so that a crash at start does not
  become a fork storm; one whose ``server.setup_worker()`` raises (the command imports the
  application there) sends the error's text and exits, and the master stops serving with that
  one line (:class:`~gearshift.core.errors.WorkerBootError`);
- a worker leaves gracefully (SIGHUP reload, SIGTTOU, ``max_requests``, ``max_worker_memory``)
  the same way every time: the master has its replacement started first, the worker stops
  accepting (its loop stops; the shared listener keeps the backlog for the others), marks its
  server closing so that the responses in hand end their keep-alive connections, drains its
  inner strategy within ``graceful_timeout`` and exits 0.

Signals (in the master): HUP reloads (new workers first, each importing the application afresh
unless it was preloaded; the old ones leave as the new ones become ready), TTIN / TTOU add or
remove a worker, USR1 is passed on to the workers (each reopens its log files through whatever
reopens them in the master), CHLD wakes the loop to reap. TERM, INT and QUIT belong to whoever
runs the server (the command stops it through ``server.shutdown()``); without a handler, a
master killed by one leaves workers that notice within :data:`HEARTBEAT_EVERY` seconds that
their parent is gone and stop gracefully. In a worker: TERM stops gracefully, QUIT at once,
INT is ignored (Ctrl+C reaches the whole process group; the master decides), HUP/TTIN/TTOU
are ignored, and USR2 writes every thread's traceback to stderr (``kill -USR2 <worker pid>``
shows what a worker is doing).

``handle_request()`` (no ``serve()``) serves in the calling process with the inner strategy.
"""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import logging
import mmap
import os
import random
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from ..core.errors import StrategyUnavailableError, WorkerBootError
from ..core.hookspecs import hookimpl
from ..core.listeners import create_listener
from ..core.strategy import (
    Address,
    Strategy,
    bool_option,
    check_options,
    flush_stdio,
    limit_option,
    positive_int_option,
)
from ..settings import Setting

log = logging.getLogger("gearshift")

#: Seconds between two heartbeats of a worker's loop (when it turns that often; an idle loop
#: turns every ``poll_interval``, 0.5 s by default).
HEARTBEAT_EVERY = 0.2
#: Default ``timeout``: long enough for an idle loop's turns and a slow machine, short enough to
#: notice a stuck ``sync`` worker before clients give up.
DEFAULT_TIMEOUT = 30.0
#: Worker processes that can exist at once (a reload briefly doubles them): slots in the
#: heartbeat map, 16 bytes each, allocated before the first fork (a shared map cannot grow).
MAX_WORKERS = 1024
#: How long a worker timed out gets to write its traceback (SIGUSR2) before its SIGKILL.
DUMP_GRACE = 0.5
#: A master's kill of a draining worker waits this long past ``graceful_timeout``, since the
#: worker times its own drain from when it was asked, a little after the master's clock starts.
KILL_MARGIN = 1.0
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 10.0
#: Exit status of a worker whose ``setup_worker()`` raised (its message is on its status pipe).
BOOT_ERROR_STATUS = 3

_SLOT = struct.Struct("d")  # a heartbeat: time.monotonic(), system-wide on Linux
_SLOT_SIZE = 16
_READY, _RETIRING, _ERROR = b"R", b"S", b"E"
_MASTER_SIGNALS = ("SIGHUP", "SIGTTIN", "SIGTTOU", "SIGUSR1", "SIGCHLD")
# Blocked around fork(): a signal then waits for the child's own handlers, or the master's.
_AROUND_FORK = {getattr(signal, name) for name in
                ("SIGTERM", "SIGINT", "SIGQUIT", "SIGUSR2", *_MASTER_SIGNALS) if hasattr(signal, name)}


def default_workers() -> int:
    """One worker per CPU this process may run on (its affinity mask: a container's cpuset,
    ``taskset``), not ``os.cpu_count()``, which counts the machine's.

    Why one per core: a worker's Python runs on one core at a time (the GIL), so it takes as many
    processes as cores to use them all, and an inner strategy with threads (``threadpool``, the
    default) already overlaps a worker's waits; more processes than cores then only add memory
    and context switches. gunicorn's ``2 x cores + 1`` is for its ``sync`` workers, which
    cannot overlap a wait: with ``worker_strategy="sync"`` and an application that waits on a
    database, raise ``workers`` the same way.
    """
    with contextlib.suppress(AttributeError, OSError):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


class PreforkStrategy(Strategy):
    """Long-lived worker processes under a supervising master, each running an inner strategy (gunicorn)."""

    name = "prefork"
    multiprocess = True
    worker_processes = True

    def __init__(  # type: ignore[no-untyped-def]
        self, server, *, workers: int | None = None, worker_strategy: str = "threadpool",
        timeout: float | None = DEFAULT_TIMEOUT, max_requests: int | None = None, max_requests_jitter: int = 0,
        max_worker_memory: int | None = None, reuse_port: bool = False, **options: Any,
    ) -> None:
        if not hasattr(os, "fork"):
            raise StrategyUnavailableError(
                "strategy 'prefork' needs os.fork(), which this platform does not have; use 'threadpool' instead"
            )
        super().__init__(server)
        self.workers = default_workers() if workers is None else positive_int_option("workers", workers)
        if not isinstance(worker_strategy, str):
            raise ValueError(f"worker_strategy must be a strategy name, not {worker_strategy!r}")
        from ..core.plugins import resolve_strategy  # the registry imports this module

        inner = resolve_strategy(worker_strategy)
        if getattr(inner, "worker_processes", False):
            raise ValueError(f"worker_strategy cannot be {worker_strategy!r}: it starts worker processes itself")
        self.worker_strategy = worker_strategy
        self.timeout = _seconds_option("timeout", timeout, minimum=1.0)
        self.max_requests = limit_option("max_requests", max_requests)
        self.max_requests_jitter = _count_option("max_requests_jitter", max_requests_jitter)
        self.max_worker_memory = limit_option("max_worker_memory", max_worker_memory)
        self.reuse_port = bool_option("reuse_port", reuse_port)
        # The inner strategy's own options: checked by it, here in the master, before any fork.
        check_options(inner, options, self.option_defaults(), extra_label="options of strategy 'prefork'")
        self.inner_class = inner
        self.inner_options = options
        #: The inner strategy of this process: the one built here validates the values (and
        #: serves handle_request()); a worker builds its own after the fork.
        self.inner: Strategy = inner(server, **options)
        # wsgi.multithread is the inner strategy's: a fact of this instance, not of the class.
        self.__dict__["multithread"] = inner.multithread
        if self.reuse_port:
            # Read by the Server when it creates its listener, which it does after building
            # the strategy: siblings bound by the workers can then join it.
            server.allow_reuse_port = True
        self._in_worker = False
        self._master_pid = os.getpid()
        self._target = self.workers
        self._generation = 0
        self._numbers = 0
        self._workers: dict[int, _Worker] = {}
        self._slots: mmap.mmap | None = None
        self._free_slots: list[int] = []
        self._selector: selectors.BaseSelector | None = None
        self._wake: tuple[int, int] | None = None
        self._signals: list[int] = []
        self._stop = False
        self._boot_error: str | None = None
        self._boot_failures = 0
        self._next_spawn = 0.0
        self._next_memory_check = 0.0
        self._frozen = False
        self._left_groups = False
        self._chained_usr1: Any = None
        # Worker-side state.
        self._beat_at = 0.0
        self._slot = -1
        self._status_fd = -1
        self._served = 0
        self._request_limit: int | None = None
        self._worker_stopping = False
        self._worker_in_loop = False
        self._stop_deadline: float | None = None

    # -- the master ----------------------------------------------------------------------------

    def serve(self, run_loop: Callable[[], None]) -> None:
        """Start the workers and supervise them until ``stop_serving()``, then ask them to stop
        (``server_close()`` waits for them: :meth:`close`)."""
        self._boot_error = None
        self._open_master_state()
        previous = self._install_master_signals()
        try:
            self._supervise(run_loop)
        finally:
            self._stop = False
            self._restore_master_signals(previous)
        if self._boot_error is not None:
            message, self._boot_error = self._boot_error, None
            raise WorkerBootError(message)

    def _supervise(self, run_loop: Callable[[], None]) -> None:
        assert self._selector is not None
        while not self._stop:
            now = time.monotonic()
            self._maintain(run_loop, now)
            for key, _ in self._selector.select(self._next_wait(now)):
                if key.data is None:
                    _drain(key.fd)
                else:
                    self._read_status(key.data)
            self._act_on_signals()
            self._reap()
            if self._boot_error is not None:
                self._abort_boot()
                return
            self._check_workers(time.monotonic())
            # What layers above queue for "the loop" (the command's USR1 and USR2) runs here.
            self.server.service_actions()
        self._stop_workers()

    def stop_serving(self) -> None:
        if self._in_worker:
            self._stop_worker()
            return
        self._stop = True
        if self._wake is not None:
            with contextlib.suppress(OSError):
                os.write(self._wake[1], b"\0")

    def _open_master_state(self) -> None:
        self._master_pid = os.getpid()  # whose death its workers watch for
        if self._selector is None:
            self._selector = selectors.DefaultSelector()
            read, write = os.pipe()
            for fd in (read, write):
                os.set_blocking(fd, False)
            self._wake = (read, write)
            self._selector.register(read, selectors.EVENT_READ, None)
            self._slots = mmap.mmap(-1, MAX_WORKERS * _SLOT_SIZE)
            self._free_slots = list(range(MAX_WORKERS - 1, -1, -1))
        if not self._frozen:
            # As ``fork`` does: children never copy the master's pages by collecting them.
            gc.freeze()
            self._frozen = True

    def _leave_reuse_port_groups(self) -> None:
        """With ``reuse_port`` the kernel spreads connections over every listening socket bound
        to the port; the master's must not be one of them, since nobody accepts from it. A
        shut-down listener leaves the group (the workers bind their own). Done once the first
        worker is ready, so that the port never refuses connections at start."""
        self._left_groups = True
        for sock in self.server.listeners:
            if _reusable(sock):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RD)

    def _install_master_signals(self) -> dict[int, Any]:
        previous: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread() or self._wake is None:
            log.debug("prefork: not in the main thread; HUP, TTIN, TTOU and USR1 are not handled")
            return previous
        previous[-1] = signal.set_wakeup_fd(self._wake[1], warn_on_full_buffer=False)
        usr1 = getattr(signal, "SIGUSR1", None)
        # Known before our handler is installed: a USR1 that lands the instant after must reach
        # the handler it chains to (the conformance kit's stop, the command's log reopening).
        self._chained_usr1 = None if usr1 is None else signal.getsignal(usr1)
        for name in _MASTER_SIGNALS:
            signum = getattr(signal, name, None)
            if signum is not None:
                previous[signum] = signal.signal(signum, self._record_signal)
        return previous

    def _record_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)
        chained = self._chained_usr1
        if signum == getattr(signal, "SIGUSR1", None) and callable(chained):
            chained(signum, frame)  # whatever reopens the master's own log files

    @staticmethod
    def _restore_master_signals(previous: dict[int, Any]) -> None:
        for signum, handler in previous.items():
            if signum == -1:
                signal.set_wakeup_fd(handler)
            else:
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    def _act_on_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            name = signal.Signals(signum).name
            if signum == getattr(signal, "SIGHUP", None):
                self._generation += 1
                log.info("%s: reloading: starting %d new worker%s; the old ones stop as the new ones are ready",
                         name, self._target, _s(self._target))
            elif signum == getattr(signal, "SIGTTIN", None):
                if self._target >= MAX_WORKERS // 2:
                    log.warning("%s: already %d workers, the most prefork runs; ignored", name, self._target)
                    continue
                self._target += 1
                log.info("%s: %d workers (one more)", name, self._target)
            elif signum == getattr(signal, "SIGTTOU", None):
                if self._target == 1:
                    log.warning("%s: already down to 1 worker; ignored", name)
                    continue
                self._target -= 1
                log.info("%s: %d worker%s (one fewer)", name, self._target, _s(self._target))
            elif signum == getattr(signal, "SIGUSR1", None):
                log.info("%s: asking %d worker%s to reopen their log files", name, len(self._workers),
                         _s(len(self._workers)))
                for pid in self._workers:
                    _kill(pid, signum)

    def _maintain(self, run_loop: Callable[[], None], now: float) -> None:
        """Start or retire workers so that ``_target`` of the current generation serve, and
        retire old-generation ones (a reload) as current ones become ready."""
        current = sorted((w for w in self._workers.values() if w.generation == self._generation and not w.stopping),
                         key=lambda w: w.number)
        for worker in current[: max(0, len(current) - self._target)]:
            self._retire(worker, "one worker fewer (SIGTTOU)", now)
        missing = self._target - len(current)
        while missing > 0 and now >= self._next_spawn and len(self._workers) < MAX_WORKERS:
            if self._stop:
                break  # shutdown() came during the last fork, from a signal handler: start no more
            self._spawn(run_loop, now)
            missing -= 1
            if self._boot_failures:
                break  # backing off: one at a time
        old = sorted((w for w in self._workers.values() if w.generation < self._generation and not w.stopping),
                     key=lambda w: w.number)
        if old:
            ready = sum(1 for w in current if w.ready)
            for worker in old[: max(0, len(old) - max(0, self._target - ready))]:
                self._retire(worker, "reload: replaced by a new worker", now)

    def _spawn(self, run_loop: Callable[[], None], now: float) -> None:
        assert self._slots is not None and self._selector is not None
        slot = self._free_slots.pop()
        _SLOT.pack_into(self._slots, slot * _SLOT_SIZE, now)  # boot time counts against timeout
        self._numbers += 1
        number = self._numbers
        status_read, status_write = os.pipe()
        flush_stdio()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _AROUND_FORK)
        try:
            pid = os.fork()
            if pid == 0:
                os.close(status_read)
                self._worker_main(run_loop, slot, number, status_write, mask)
        except OSError as exc:  # out of processes or memory: try again later, as for a crash
            for fd in (status_read, status_write):
                os.close(fd)
            self._free_slots.append(slot)
            self._boot_failures += 1
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (self._boot_failures - 1))
            self._next_spawn = now + delay
            log.error("cannot start a worker: fork() failed: %s; trying again in %.1f s", exc.strerror or exc, delay)
            return
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(status_write)
        os.set_blocking(status_read, False)
        worker = _Worker(pid, slot, number, self._generation, status_read, now)
        self._workers[pid] = worker
        self._selector.register(status_read, selectors.EVENT_READ, worker)
        log.debug("started worker %d (pid %d)", number, pid)
        self.server.notify("worker_started", pid=pid, number=number)

    def _read_status(self, worker: _Worker) -> None:
        try:
            data = os.read(worker.status_fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._unwatch(worker)
            return
        worker.status += data
        while worker.status:
            kind, rest = worker.status[:1], worker.status[1:]
            if kind == _ERROR:
                if b"\n" not in rest:
                    return  # the rest of the message follows
                message, _, worker.status = rest.partition(b"\n")
                worker.error = message.decode("utf-8", "replace")
                continue
            worker.status = rest
            if kind == _READY and not worker.ready:
                worker.ready = True
                self._boot_failures = 0
                self._next_spawn = 0.0
                log.debug("worker %d (pid %d) is ready", worker.number, worker.pid)
                if self.reuse_port and not self._left_groups:
                    self._leave_reuse_port_groups()
            elif kind == _RETIRING and not worker.stopping:
                worker.stopping = True
                worker.kill_at = self._drain_deadline(time.monotonic())
                log.info("worker %d (pid %d) served its max_requests; it finishes its requests and exits, "
                         "and a new one starts", worker.number, worker.pid)

    def _unwatch(self, worker: _Worker) -> None:
        if worker.status_fd >= 0 and self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(worker.status_fd)
            os.close(worker.status_fd)
            worker.status_fd = -1

    def _reap(self) -> None:
        for pid, worker in list(self._workers.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                self._exited(worker, status)

    def _exited(self, worker: _Worker, status: int) -> None:
        while worker.status_fd >= 0:  # what it said last (an error) is still in the pipe
            before = worker.status_fd
            self._read_status(worker)
            if worker.status_fd == before:
                break
        self._unwatch(worker)
        del self._workers[worker.pid]
        self._free_slots.append(worker.slot)
        code = os.waitstatus_to_exitcode(status)
        self.server.notify("worker_exited", pid=worker.pid, number=worker.number, exitcode=code)
        who = f"worker {worker.number} (pid {worker.pid})"
        if worker.error is not None and code == BOOT_ERROR_STATUS:
            # Not when it was stopped meanwhile: its reload was abandoned (one error is enough).
            if self._boot_error is None and not self._stop and not worker.stopping:
                self._boot_failed(worker, f"{who} could not start: {worker.error}")
            return
        if code < 0:
            name = _signal_name(-code)
            if worker.killed:
                log.warning("%s was killed by %s (%s)", who, name, worker.killed)
            else:
                log.warning("%s was killed by %s", who, name)
        elif worker.stopping or self._stop:
            log.info("%s exited%s", who, "" if code == 0 else f" with status {code}")
        else:
            log.warning("%s exited unexpectedly with status %d", who, code)
        if self._stop or worker.stopping:
            return
        now = time.monotonic()
        if not worker.ready:
            self._boot_failures += 1
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (self._boot_failures - 1))
            self._next_spawn = now + delay
            log.warning("%s died while starting; starting another in %.1f s", who, delay)
        else:
            log.info("replacing %s", who)

    def _boot_failed(self, worker: _Worker, message: str) -> None:
        """A worker could not start. During a reload the old workers still serve: the reload is
        abandoned. Otherwise there is nothing to serve with, and retrying would fail the same
        way: stop with the worker's message."""
        old = [w for w in self._workers.values() if w.generation < worker.generation and not w.stopping]
        if worker.generation == self._generation and old:
            log.error("reload failed, keeping the %d worker%s of before: %s", len(old), _s(len(old)), message)
            now = time.monotonic()
            for other in list(self._workers.values()):
                if other.generation == self._generation and not other.ready and not other.stopping:
                    self._retire(other, "reload abandoned", now)
            for other in old:
                other.generation = self._generation
            return
        self._boot_error = message

    def _abort_boot(self) -> None:
        now = time.monotonic()
        for worker in self._workers.values():
            if not worker.stopping:
                if worker.ready:
                    self._retire(worker, "another worker could not start", now)
                else:
                    worker.stopping = True
                    worker.killed = "another worker could not start"
                    _kill(worker.pid, signal.SIGKILL)

    def _retire(self, worker: _Worker, why: str, now: float) -> None:
        """Ask ``worker`` to stop gracefully (SIGTERM); killed if still running past the drain."""
        worker.stopping = True
        worker.kill_at = self._drain_deadline(now)
        log.info("stopping worker %d (pid %d): %s", worker.number, worker.pid, why)
        _kill(worker.pid, signal.SIGTERM)

    def _drain_deadline(self, now: float) -> float | None:
        graceful = self.server.graceful_timeout
        return None if graceful is None else now + graceful + KILL_MARGIN

    def _check_workers(self, now: float) -> None:
        """Heartbeats, memory, and the kills that are due."""
        assert self._slots is not None
        check_memory = self.max_worker_memory is not None and now >= self._next_memory_check
        if check_memory:
            self._next_memory_check = now + 1.0
        for worker in list(self._workers.values()):
            if worker.kill_at is not None and now >= worker.kill_at and not worker.killed:
                worker.killed = (f"no heartbeat for {self.timeout:g} s" if worker.dumped
                                 else "its drain took longer than graceful_timeout")
                _kill(worker.pid, signal.SIGKILL)
                continue
            if worker.stopping:
                continue
            beat = _SLOT.unpack_from(self._slots, worker.slot * _SLOT_SIZE)[0]
            if self.timeout is not None and now - beat > self.timeout:
                worker.stopping = True
                if worker.ready:
                    log.error("worker %d (pid %d) has not heartbeat for %.1f s (timeout %g s): its tracebacks "
                              "follow on stderr; killing it", worker.number, worker.pid, now - beat, self.timeout)
                    worker.dumped = True
                    worker.kill_at = now + DUMP_GRACE
                    _kill(worker.pid, signal.SIGUSR2)
                else:
                    log.error("worker %d (pid %d) did not start within timeout (%g s); killing it",
                              worker.number, worker.pid, self.timeout)
                    worker.killed = f"not started within {self.timeout:g} s"
                    _kill(worker.pid, signal.SIGKILL)
                continue
            if check_memory and worker.ready:
                rss = _rss(worker.pid)
                if rss is not None and self.max_worker_memory is not None and rss > self.max_worker_memory:
                    self._retire(worker, f"its memory ({rss // 2**20} MiB) is over max_worker_memory "
                                         f"({self.max_worker_memory // 2**20} MiB)", now)

    def _next_wait(self, now: float) -> float:
        wait = 1.0 if self.timeout is None else min(1.0, self.timeout / 4)
        if self.max_worker_memory is not None:
            wait = min(wait, max(0.0, self._next_memory_check - now))
        if self._next_spawn > now:
            wait = min(wait, self._next_spawn - now)
        for worker in self._workers.values():
            if worker.kill_at is not None and not worker.killed:
                wait = min(wait, max(0.0, worker.kill_at - now))
        return wait

    def _stop_workers(self) -> None:
        """Ask every worker to stop (SIGTERM): each stops accepting at once and drains; the
        wait for them is ``close()``'s."""
        for worker in self._workers.values():
            if not worker.stopping:
                worker.stopping = True
                _kill(worker.pid, signal.SIGTERM)

    def stats(self) -> Mapping[str, int]:
        """In the master, ``workers``: processes started and not reaped yet (starting, serving
        or draining). In a worker, its inner strategy's."""
        if self._in_worker:
            return self.inner.stats()
        return {"workers": len(self._workers)}

    def process_request(self, request: socket.socket, client_address: Address) -> None:
        """Outside a worker: ``handle_request()`` without ``serve()``, served in this process by
        the inner strategy (a worker binds its inner strategy's method over this one)."""
        self.inner.process_request(request, client_address)

    def service_actions(self) -> None:
        """In the master, for ``handle_request()``; a worker binds its own over it."""
        self.inner.service_actions()

    def close(self, timeout: float | None = None) -> None:
        """Let the workers drain (each within ``graceful_timeout``, from its SIGTERM), wait for
        them at most ``timeout`` seconds (plus :data:`KILL_MARGIN`), then kill the rest."""
        if self._in_worker:
            self.inner.close(timeout)
            return
        try:
            self.inner.close(timeout)  # what handle_request() started here, if anything
            if not self._workers:
                return
            now = time.monotonic()
            for worker in self._workers.values():
                if not worker.stopping:
                    worker.stopping = True
                    _kill(worker.pid, signal.SIGTERM)
            deadline = None if timeout is None else now + timeout + KILL_MARGIN
            while self._workers:
                self._reap()
                if not self._workers:
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    log.warning("graceful timeout (%.1f s) passed; killing %d worker%s still running: %s",
                                timeout, len(self._workers), _s(len(self._workers)),
                                ", ".join(map(str, self._workers)))
                    for worker in self._workers.values():
                        worker.killed = "its drain took longer than graceful_timeout"
                    self.terminate()
                    break
                self._wait_for_exit(0.5 if remaining is None else min(0.5, remaining))
        finally:
            self._close_master_state()

    def _wait_for_exit(self, timeout: float) -> None:
        if self._selector is None:
            time.sleep(timeout)
            return
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                _drain(key.fd)
            else:
                self._read_status(key.data)

    def _close_selector_and_wake_pipe(self) -> None:
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        if self._wake is not None:
            for fd in self._wake:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._wake = None

    def _close_master_state(self) -> None:
        for worker in list(self._workers.values()):
            self._unwatch(worker)
        self._close_selector_and_wake_pipe()
        if self._slots is not None:
            self._slots.close()
            self._slots = None
        if self._frozen:
            gc.unfreeze()
            self._frozen = False

    def terminate(self) -> int:
        """SIGKILL every worker and reap it (safe in a signal handler: no logging, no locks)."""
        if self._in_worker:
            return self.inner.terminate()
        workers = list(self._workers)
        for pid in workers:
            _kill(pid, signal.SIGKILL)
        for pid in workers:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            worker = self._workers.pop(pid, None)
            if worker is not None:
                self._free_slots.append(worker.slot)
        return len(workers)

    # -- a worker ------------------------------------------------------------------------------

    def _worker_main(self, run_loop: Callable[[], None], slot: int, number: int, status_fd: int,
                     mask: set[int | signal.Signals]) -> NoReturn:
        """A worker's whole life, in the forked child: detach from the master, set up (the
        command imports the application here), build the inner strategy, serve until asked to
        stop, drain, ``os._exit``."""
        status = 1
        server = self.server
        try:
            self._in_worker = True
            self._slot, self._status_fd = slot, status_fd
            self._detach_from_master()
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            server.after_fork(keep_listeners=True)
            if self.reuse_port:
                self._own_listeners()
            try:
                server.setup_worker()
            except Exception as exc:
                self._report(_ERROR + _one_line(exc).encode("utf-8", "replace") + b"\n")
                status = BOOT_ERROR_STATUS
                self._exit(status)
            inner = self.inner = self.inner_class(server, **self.inner_options)
            # The loop calls these for every connection: the inner strategy's own methods,
            # without a frame of ours in between, unless max_requests must count them.
            if self.max_requests is None:
                self.process_request = inner.process_request  # type: ignore[method-assign]
            else:
                self._request_limit = self.max_requests + random.randint(0, self.max_requests_jitter)
                self.process_request = self._counted  # type: ignore[method-assign]
            self.service_actions = self._worker_service_actions  # type: ignore[method-assign]
            self.service_within = self._worker_service_within  # type: ignore[method-assign]
            self._install_worker_signals()
            self._beat(time.monotonic())
            self._report(_READY)
            inner.serve(lambda: self._worker_loop(run_loop))
            if self._stop_deadline is not None:
                server.graceful_timeout = max(0.0, self._stop_deadline - time.monotonic())
            server.server_close()
            status = 0
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            with contextlib.suppress(BaseException):
                log.exception("worker %d (pid %d) failed", number, os.getpid())
        self._exit(status)

    def _exit(self, status: int) -> NoReturn:
        flush_stdio()
        for handler in log.handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        os._exit(status)

    def _detach_from_master(self) -> None:
        """Close the master's descriptors and handlers in this worker."""
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(-1)
        for worker in self._workers.values():
            if worker.status_fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(worker.status_fd)
        self._workers = {}
        self._close_selector_and_wake_pipe()
        self._signals = []
        ignored = ("SIGINT", "SIGHUP", "SIGTTIN", "SIGTTOU")
        for name in ignored:
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), signal.SIG_IGN)
        # Until it serves, a worker stopped by TERM or QUIT has nothing to finish.
        for name in ("SIGTERM", "SIGQUIT", "SIGCHLD"):
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), signal.SIG_DFL)
        usr1 = getattr(signal, "SIGUSR1", None)
        if usr1 is not None:
            # The master passes USR1 on: a handler the worker inherited (the command's, which
            # reopens its log files in the loop) acts on it; without one it must not kill.
            inherited = self._chained_usr1
            signal.signal(usr1, inherited if callable(inherited) else signal.SIG_IGN)
        # The master sends SIGUSR2 to a worker whose heartbeat stopped: every thread's
        # traceback, written from C, so even a worker stuck in C code (time.sleep) answers.
        # (Not SIGABRT, which faulthandler keeps for its fatal-error handler.)
        stderr = sys.__stderr__
        try:
            fd = stderr.fileno() if stderr is not None else 2
        except (OSError, ValueError):
            fd = 2
        faulthandler.register(signal.SIGUSR2, file=fd, all_threads=True, chain=False)

    def _own_listeners(self) -> None:
        """``reuse_port``: this worker listens on sockets of its own, bound to the addresses of
        the inherited ones, and the kernel spreads connections over the workers."""
        server = self.server
        inherited, server.listeners = server.listeners, []
        for sock in inherited:
            if not _reusable(sock):
                server.add_listener(sock)
                continue
            own = create_listener(sock.getsockname(), reuse_port=True, family=sock.family,
                                  backlog=server.request_queue_size)
            sock.close()
            server.add_listener(own, own=True)

    def _install_worker_signals(self) -> None:
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, self._worker_sigterm)
            signal.signal(signal.SIGQUIT, self._worker_sigquit)

    def _worker_sigterm(self, signum: int, frame: Any) -> None:
        self._stop_worker()

    def _worker_sigquit(self, signum: int, frame: Any) -> None:
        self.inner.terminate()
        os._exit(0)

    def _worker_loop(self, run_loop: Callable[[], None]) -> None:
        self._worker_in_loop = True
        if self._worker_stopping:
            return
        try:
            run_loop()
        except ValueError:
            if not self._worker_stopping:  # "cannot serve on a closed server": a stop just came
                raise

    def _stop_worker(self) -> None:
        """Stop accepting at once (the siblings accept from the shared listener meanwhile);
        answer every request in hand, and the next one of each keep-alive connection the loop
        holds, as the last of its connection (``begin_closing``); once the loop holds none (or
        ``graceful_timeout`` has passed) stop the loop, and ``server_close()`` drains the
        rest. Called on the loop's thread: from a signal handler, or from the loop."""
        if self._worker_stopping:
            return
        self._worker_stopping = True
        graceful = self.server.graceful_timeout
        self._stop_deadline = None if graceful is None else time.monotonic() + graceful
        server = self.server
        server.stop_accepting()
        if self._worker_in_loop:
            server.begin_closing()
        else:
            server.shutdown()  # not serving yet: nothing to finish

    def _counted(self, request: socket.socket, client_address: Address) -> None:
        self._served += 1
        limit = self._request_limit
        if limit is not None and self._served >= limit and not self._worker_stopping:
            self._report(_RETIRING)
            self._stop_worker()  # before the request: its response ends its connection
        self.inner.process_request(request, client_address)

    def _beat(self, now: float) -> None:
        if self._slots is not None:
            _SLOT.pack_into(self._slots, self._slot * _SLOT_SIZE, now)
        self._beat_at = now

    def _worker_service_within(self) -> float | None:
        # An idle loop beats once a turn: a quarter of timeout leaves three quarters for a
        # loaded machine's delays, whatever poll_interval the caller chose.
        inner = self.inner.service_within()
        if self.timeout is None:
            return inner
        beat = self.timeout / 4
        return beat if inner is None else min(beat, inner)

    def _worker_service_actions(self) -> None:
        now = time.monotonic()
        if now - self._beat_at >= HEARTBEAT_EVERY:
            self._beat(now)
            if os.getppid() != self._master_pid and not self._worker_stopping:
                log.warning("worker %d: the master process is gone; stopping", os.getpid())
                self._stop_worker()
        self.inner.service_actions()
        if self._worker_stopping:
            server = self.server
            deadline = self._stop_deadline
            drained = not server.held_connections and not server.pending_writes
            if drained or (deadline is not None and now >= deadline):
                server.shutdown()  # on the loop's thread: only asks the loop to stop

    def _report(self, message: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(self._status_fd, message)


@dataclass(eq=False)
class _Worker:
    """The master's record of one worker process."""

    pid: int
    slot: int
    number: int
    generation: int
    status_fd: int
    started: float
    ready: bool = False
    #: It was asked to stop, or stops on its own: its replacement may start.
    stopping: bool = False
    dumped: bool = False
    #: Why the master killed it (SIGKILL), once it has.
    killed: str = ""
    kill_at: float | None = None
    error: str | None = None
    status: bytes = field(default=b"", repr=False)


def _seconds_option(option: str, value: object, minimum: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not minimum <= value < float("inf"):
        raise ValueError(f"{option} must be a number of seconds >= {minimum:g}, or None for no limit, not {value!r}")
    return float(value)


def _count_option(option: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{option} must be a whole number >= 0, not {value!r}")
    return value


def _reusable(sock: socket.socket) -> bool:
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or not hasattr(socket, "SO_REUSEPORT"):
        return False
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))
    except OSError:
        return False


def _rss(pid: int) -> int | None:
    """Resident memory of ``pid`` in bytes (Linux ``/proc``); None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * mmap.PAGESIZE
    except (OSError, ValueError, IndexError):
        return None


def _drain(fd: int) -> None:
    with contextlib.suppress(OSError):
        while os.read(fd, 4096):
            pass


def _kill(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _s(count: int) -> str:
    return "" if count == 1 else "s"


def _one_line(exc: BaseException) -> str:
    from ..core.errors import GearshiftError

    text = " ".join(str(exc).split())
    if isinstance(exc, GearshiftError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _size(text: str) -> int:
    """``--max-worker-memory``: bytes, or a number with K, M or G (powers of 1024)."""
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    digits = text.strip().lower().removesuffix("b").removesuffix("i")
    scale = units.get(digits[-1:], 1)
    if scale != 1:
        digits = digits[:-1]
    if not digits.isdigit():
        import argparse

        raise argparse.ArgumentTypeError(f"expected bytes, or a number with K, M or G (e.g. 512M), not {text!r}")
    return int(digits) * scale


@hookimpl
def gearshift_strategies() -> list[type[Strategy]]:
    return [PreforkStrategy]


# First, so that a third-party plugin whose option clashes with these is the one named.
@hookimpl(tryfirst=True)
def gearshift_add_options(parser: object) -> list[Setting]:
    return [
        Setting("workers", ("-w", "--workers"), "prefork: worker processes (default: one per CPU)",
                type=int, metavar="N"),
        Setting("worker_strategy", ("--worker-strategy",),
                "prefork: the strategy each worker runs; its options pass through (default threadpool)",
                metavar="NAME"),
        Setting("timeout", ("--timeout",),
                f"prefork: kill and replace a worker whose loop has not turned for this long (default "
                f"{DEFAULT_TIMEOUT:g}); under --worker-strategy sync that includes a request this long",
                type=float, metavar="SECONDS"),
        Setting("max_requests", ("--max-requests",),
                "prefork: replace a worker after this many requests (default: never)", type=int, metavar="N"),
        Setting("max_requests_jitter", ("--max-requests-jitter",),
                "prefork: add up to N to each worker's --max-requests, so that workers do not restart "
                "together (default 0)", type=int, metavar="N"),
        Setting("max_worker_memory", ("--max-worker-memory",),
                "prefork: replace a worker whose resident memory exceeds this (bytes, or e.g. 512M; "
                "default: no limit)", type=_size, metavar="SIZE"),
        Setting("reuse_port", ("--reuse-port",),
                "prefork: each worker listens on a socket of its own (SO_REUSEPORT) instead of sharing "
                "the inherited one", kind="flag"),
    ]
