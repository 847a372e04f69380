"""``gearshift --reload``: restart the server when a source file changes.

    gearshift --reload myapp:app [--reload-dir DIR] [--reload-include PATTERN] [--reload-exclude PATTERN]

The process the user started is the *reloader*. It binds the listeners itself, through the
command's own code (:func:`gearshift.cli.binds_from`, :func:`gearshift.cli.open_listener`), and
runs the server as a child process: the same command line, started by :func:`serve_child`, which
hands it the listeners through socket activation (``LISTEN_FDS``/``LISTEN_PID``). The listening
sockets therefore outlive every server: while one stops and the next starts, connections wait in
the kernel's backlog instead of being refused, and the port is never free for another process.

The reloader watches the directories with ``watchfiles`` (an optional dependency:
``pip install 'gearshift[reload]'``). On a change it logs which files changed, stops the server
gracefully (SIGTERM; SIGKILL if it is still running after :data:`STOP_GRACE` seconds) and starts a
new one. A server that exits on its own (the application no longer imports: a syntax error in an
edit) has logged why; the reloader says it is waiting and starts the next server on the next
change. A server that exits with status 2 was given a command line that cannot work, which no edit
fixes: the reloader exits with that status too.

Every strategy works under the reloader, ``prefork`` included: the child is then the whole
prefork master, and a change restarts it with its workers.

Signals to the reloader: TERM and INT stop the server gracefully and exit 0 (a second one kills
the server at once); QUIT is passed on (the server's fast stop), then the reloader exits 0; HUP,
USR1, USR2, TTIN and TTOU are passed on to the server, which does what the command does with them.
The server ignores SIGINT: Ctrl+C reaches the whole process group, and the reloader decides (as a
``prefork`` master does for its workers).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import fnmatch
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, NoReturn

from . import __version__, cli
from .core.server import _UnixFile
from .signals import Signals

log = logging.getLogger("gearshift.reload")

#: Seconds a server has to stop after SIGTERM before it is killed: a restart should not wait for
#: a long request (the server's own --graceful-timeout applies within this).
STOP_GRACE = 5.0
#: Watched unless excluded; ``--reload-include`` adds to it.
DEFAULT_INCLUDES = ("*.py",)
#: Hidden files and directories (.git, .venv, editors' temporary files), compiled Python,
#: backups, and the directories of installed packages; ``--reload-exclude`` adds to it.
DEFAULT_EXCLUDES = (".*", "*.py[cod]", "*~", "__pycache__", "venv", "node_modules", "site-packages")
#: The descriptor of the server's first listener, as socket activation numbers them.
FIRST_LISTEN_FD = 3
#: watchfiles' wait for changes, in milliseconds, before it hands the loop an empty batch: the first
#: one says the directories are watched (so the server starts then), the others are ignored.
WATCH_TIMEOUT_MS = 50
PR_SET_PDEATHSIG = 1  # linux/prctl.h
#: What the reloader passes on to the server rather than acting on.
PASSED_ON = tuple(
    getattr(signal, name) for name in ("SIGHUP", "SIGUSR1", "SIGUSR2", "SIGTTIN", "SIGTTOU") if hasattr(signal, name)
)
INSTALL_HINT = "pip install 'gearshift[reload]'"


def run_reloader(args: cli.Arguments, argv: Sequence[str], environ: Any) -> int:
    """``gearshift --reload``: bind, then run the server in a child until a stop signal,
    restarting it on every change. ``argv`` is the command line, which the child gets as it is."""
    watch = _import_watch()
    cli.setup_logging(args.log_level, None)  # the access log is the server's
    watched = WatchedFiles.from_args(args)
    listeners: list[socket.socket] = []
    unix_files: list[_UnixFile] = []
    try:
        for bind in cli.binds_from(args, environ):
            sock = cli.open_listener(bind, args.umask)
            listeners.append(sock)
            if bind.path is not None:
                unix_files.append(_UnixFile(bind.path, os.stat(bind.path).st_ino))
        return Reloader(watch, watched, argv, listeners, dict(environ)).run()
    finally:
        for sock in listeners:
            sock.close()
        for unix_file in unix_files:
            unix_file.remove()


def serve_child(fds: list[int], reloader: int) -> NoReturn:
    """The server's process: move the listeners it inherited to the descriptors socket activation
    uses (3, 4, ...) and run the command as the server of the reloader (pid ``reloader``).
    Started by the reloader as ``python -c`` so that ``LISTEN_PID`` can be this process's own pid."""
    _stop_with(reloader)
    count = len(fds)
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, FIRST_LISTEN_FD + count) for fd in fds]
    for fd in fds:
        os.close(fd)
    for index, fd in enumerate(moved):
        os.dup2(fd, FIRST_LISTEN_FD + index)
        os.close(fd)
    os.environ["LISTEN_FDS"] = str(count)
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.environ.pop("LISTEN_FDNAMES", None)
    sys.exit(cli.main(sys.argv[1:], under_reloader=True))


def _stop_with(reloader: int) -> None:
    """Get SIGTERM when the reloader dies (Linux): killed with SIGKILL, it cannot stop this server,
    which would go on serving the old code on its port."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != reloader:  # died before prctl()
        os.kill(os.getpid(), signal.SIGTERM)


def _import_watch() -> Any:
    try:
        from watchfiles import watch
    except ImportError:
        raise cli.CommandError(f"--reload needs the watchfiles package: {INSTALL_HINT}") from None
    return watch


# -- what is watched -----------------------------------------------------------------------------


@dataclass(frozen=True)
class WatchedFiles:
    """Which changes restart the server: a file whose name matches an include pattern, unless an
    exclude pattern matches its name or that of a directory it is in, below the watched directory.
    A pattern the user includes also overrides the default excludes for the files it matches
    (``--reload-include .env`` watches ``.env``, which ``.*`` excludes by default), not for the
    directories. A pattern with a ``/`` is matched against the end of the path relative to the
    watched directory (``templates/*.html``); the others against one name."""

    dirs: tuple[Path, ...]
    includes: tuple[str, ...] = DEFAULT_INCLUDES
    user_includes: tuple[str, ...] = ()
    excludes: tuple[str, ...] = DEFAULT_EXCLUDES
    user_excludes: tuple[str, ...] = ()

    @classmethod
    def from_args(cls, args: cli.Arguments) -> WatchedFiles:
        flag = cli.source_name(args, "reload_dir")
        dirs = []
        for text in args.reload_dir or [args.chdir or "."]:
            path = Path(text).absolute()
            if not path.is_dir():
                reason = "not a directory" if path.exists() else "no such directory"
                raise cli.CommandError(f"{flag} {text}: {reason}")
            dirs.append(path)
        for name in ("reload_include", "reload_exclude"):
            if any(not pattern for pattern in getattr(args, name) or ()):
                raise cli.UsageError(f"{cli.source_name(args, name)}: empty pattern; expected a glob such as *.html")
        return cls(tuple(dirs), user_includes=tuple(args.reload_include or ()),
                   user_excludes=tuple(args.reload_exclude or ()))

    def __call__(self, change: Any, path: str) -> bool:
        """watchfiles' ``watch_filter``."""
        return self.watches(Path(path))

    def watches(self, path: Path) -> bool:
        relative = self._relative(path)
        parents = [PurePath(*relative.parts[:end]) for end in range(1, len(relative.parts))]
        excludes = (*self.excludes, *self.user_excludes)
        if any(_matches(parent, excludes) for parent in parents) or _matches(relative, self.user_excludes):
            return False
        if _matches(relative, self.user_includes):
            return True
        return _matches(relative, self.includes) and not _matches(relative, self.excludes)

    def _relative(self, path: Path) -> PurePath:
        # The deepest watched directory holding it: with --reload-dir . --reload-dir src, a file
        # in src is judged from src.
        for directory in sorted(self.dirs, key=lambda d: len(d.parts), reverse=True):
            if path.is_relative_to(directory):
                return path.relative_to(directory)
        return PurePath(path.name)

    def describe(self) -> str:
        includes = ", ".join((*self.includes, *self.user_includes))
        excludes = ", ".join((*self.excludes, *self.user_excludes))
        return f"{', '.join(map(str, self.dirs))} for {includes} (excluding {excludes})"


def _matches(path: PurePath, patterns: Sequence[str]) -> bool:
    return any(path.match(pattern) if "/" in pattern else fnmatch.fnmatch(path.name, pattern)
               for pattern in patterns)


def describe_changes(paths: Sequence[str], limit: int = 3) -> str:
    """``app.py``, ``app.py, views.py``, ``a.py, b.py, c.py and 2 more``: relative to the current
    directory when below it."""
    cwd = Path.cwd()
    shown = []
    for text in sorted(paths)[:limit]:
        path = Path(text)
        shown.append(str(path.relative_to(cwd)) if path.is_relative_to(cwd) else text)
    more = len(paths) - limit
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


# -- the reloader --------------------------------------------------------------------------------


class _StopRequest:
    """Why the reloader stops, as watchfiles' ``stop_event``: the stop signal received, or the exit
    status to end with; set by a signal handler, which must not take a lock (threading.Event's
    set() does), and read by watch() between its steps."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.status = 0

    def is_set(self) -> bool:
        return self.signum is not None or self.status != 0


class Reloader:
    """Runs one server at a time in a child process and restarts it on every change."""

    def __init__(self, watch: Any, watched: WatchedFiles, argv: Sequence[str], listeners: list[socket.socket],
                 env: dict[str, str]) -> None:
        self.watch = watch
        self.watched = watched
        self.argv = list(argv)
        self.listeners = listeners
        self.env = env
        self.stop = _StopRequest()
        self.child: subprocess.Popen[bytes] | None = None
        # One thread per server, waiting for it to exit (and reporting it unless it was stopped).
        self._waiter: threading.Thread | None = None
        # The child being stopped on purpose: its exit is expected, not reported.
        self._stopping: subprocess.Popen[bytes] | None = None
        self._previous: dict[int, Any] = {}

    def run(self) -> int:
        self._install_signals()
        try:
            log.info("gearshift %s: reloader: watching %s", __version__, self.watched.describe())
            started = False
            for changes in self.watch(*self.watched.dirs, watch_filter=self.watched, stop_event=self.stop,
                                      raise_interrupt=False, yield_on_timeout=True, rust_timeout=WATCH_TIMEOUT_MS):
                if self.stop.is_set():
                    break
                if not started:
                    # The first batch: the directories are watched from now on, so that no edit
                    # made once the server serves goes unnoticed. It imports the files as they are.
                    self._start()
                    started = True
                    continue
                if not changes:
                    continue
                log.info("reloader: %s changed: restarting the server", describe_changes([p for _, p in changes]))
                self._stop_child(signal.SIGTERM)
                if not self.stop.is_set():
                    self._start()
            if self.stop.signum is not None:
                name = signal.Signals(self.stop.signum).name
                log.info("reloader: %s: stopping the server", name)
                self._stop_child(signal.SIGQUIT if self.stop.signum == getattr(signal, "SIGQUIT", None)
                                 else signal.SIGTERM)
            log.info("gearshift %s: reloader: stopped", __version__)
            return self.stop.status
        finally:
            self._stop_child(signal.SIGTERM)
            self._uninstall_signals()

    def _start(self) -> None:
        fds = [sock.fileno() for sock in self.listeners]
        code = f"from gearshift.reload import serve_child; serve_child({fds!r}, {os.getpid()})"
        child = subprocess.Popen([sys.executable, "-c", code, *self.argv], pass_fds=fds, env=self.env)
        self.child = child
        self._waiter = threading.Thread(target=self._report_exit, args=(child,), name=f"reloader-wait-{child.pid}",
                                        daemon=True)
        self._waiter.start()

    def _report_exit(self, child: subprocess.Popen[bytes]) -> None:
        status = child.wait()
        if child is self._stopping:
            return
        if status == 2:
            log.error("reloader: the server exited with status 2 (its command line cannot work): stopping")
            self.stop.status = 2
            return
        log.warning("reloader: the server exited with status %d; it restarts when a watched file changes", status)

    def _stop_child(self, signum: int) -> None:
        child, waiter = self.child, self._waiter
        if child is None or waiter is None:
            return
        self._stopping = child
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)
        waiter.join(STOP_GRACE)
        if waiter.is_alive():
            log.warning("reloader: the server did not stop within %g s: killing it", STOP_GRACE)
            child.kill()
            waiter.join()
        self.child = self._waiter = None

    # -- signals ---------------------------------------------------------------------------------

    def _install_signals(self) -> None:
        for signum in (*Signals.STOP, *PASSED_ON):
            self._previous[signum] = signal.signal(signum, self._handle)

    def _uninstall_signals(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        child = self.child
        if signum in PASSED_ON:
            if child is not None:
                child.send_signal(signum)
            return
        if self.stop.signum is None:
            self.stop.signum = signum  # watch() returns at its next step
            return
        # A second stop signal: the server is being stopped; kill it now. os.write, not logging:
        # the interrupted frame may hold the logging lock.
        with contextlib.suppress(OSError):
            os.write(2, f"{cli.PROG}: reloader: {signal.Signals(signum).name} while stopping: killing the server\n"
                     .encode())
        if child is not None:
            child.kill()
