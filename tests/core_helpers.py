"""Helpers shared by the core and strategy tests: run a server in a thread, talk to it, and run
a ``fork`` server in a subprocess (the pytest process is multi-threaded, so it never forks).

Importable as ``core_helpers`` because tests/conftest.py puts tests/ on sys.path (pytest's
default "prepend" import mode).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gearshift.testing import children_of as proc_children  # noqa: F401  (for the tests)

#: Generous bound for anything that should take milliseconds; only there to turn a hang into a failure.
HANG_GUARD = 15.0

FORK_SERVER_SCRIPT = Path(__file__).parent / "strategies" / "fork_server_script.py"

#: The fork tests need a platform with os.fork and /proc/<pid>/task/<tid>/children.
FORK_AND_PROC = hasattr(os, "fork") and os.path.exists("/proc/self/task")


def ipv6_loopback_available() -> bool:
    """Whether this machine can bind ::1 (containers without IPv6 cannot)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def wait_for(predicate: Callable[[], Any], timeout: float = HANG_GUARD, interval: float = 0.01) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned) or ``timeout`` passes
    (then return its last, falsy, value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


@contextlib.contextmanager
def serve(server: Any, poll_interval: float = 0.05) -> Iterator[Any]:
    """Run ``server.serve_forever`` in a thread; on exit shut it down, join the thread, close the
    server, and re-raise anything serve_forever raised."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            server.serve_forever(poll_interval)
        except BaseException as exc:  # reported in the test's thread below
            errors.append(exc)

    thread = threading.Thread(target=run, name="serve_forever", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        try:
            server.shutdown()
            # Joined before server_close(): if shutdown() ran before serve_forever() started, the
            # thread still has to start and return, and must not race with server_close().
            thread.join(HANG_GUARD)
            assert not thread.is_alive(), "serve_forever() did not return after shutdown()"
        finally:
            server.server_close()
    if errors:
        raise errors[0]


def connect(address: Any, timeout: float = HANG_GUARD) -> socket.socket:
    """A client socket connected to a server address (Unix path, IPv4 or IPv6)."""
    if isinstance(address, (str, bytes, os.PathLike)):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(os.fspath(address))
        except BaseException:
            sock.close()
            raise
        return sock
    return socket.create_connection(address[:2], timeout=timeout)


def read_line(sock: socket.socket) -> bytes:
    """Read one line (or up to EOF) byte by byte, so nothing after it is consumed."""
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return bytes(data)


def closed_by_peer(sock: socket.socket) -> bool:
    """True if the server closed the connection: EOF, or a reset (a socket closed with unread
    data in its buffer, or still in the listen backlog, is reset rather than shut down)."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def ask(address: Any, line: str, timeout: float = HANG_GUARD) -> str:
    """Send one line on a new connection and return the first line of the reply (stripped)."""
    with connect(address, timeout) as sock:
        sock.sendall(line.encode() + b"\n")
        return read_line(sock).decode().strip()


class LineHandler(socketserver.StreamRequestHandler):
    """A plain stdlib handler: reads one line, ``echo TEXT`` or ``sleep SECS TEXT``; replies
    ``TEXT PID`` (the same protocol as strategies/fork_server_script.py)."""

    def handle(self) -> None:
        command, _, rest = self.rfile.readline().decode().strip().partition(" ")
        if command == "sleep":
            secs, _, rest = rest.partition(" ")
            time.sleep(float(secs))
        self.wfile.write(f"{rest} {os.getpid()}\n".encode())


# -- /proc inspection of a process's children ----------------------------------------------------


def open_files_in(directory: Path) -> list[str]:
    """This process's open descriptors on files in ``directory``: unnamed temporary files too,
    whose descriptors still point into the directory they were made in."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory) + "/"):
            found.append(target)
    return found


def proc_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` ('R', 'S', 'Z', ...), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def proc_zombies(pid: int) -> list[int]:
    return [child for child in proc_children(pid) if proc_state(child) == "Z"]


def blocked_in_wait(pid: int, tid: int | None = None) -> bool:
    """Whether thread ``tid`` (default: the main thread) of process ``pid`` is blocked in a
    select/poll/epoll wait, as a server loop with nothing to do is, from its kernel wait channel.
    True where the kernel does not tell (the caller cannot wait for it there)."""
    try:
        with open(f"/proc/{pid}/task/{tid or pid}/wchan") as f:
            channel = f.read()
    except OSError:
        return True
    if channel in ("", "0"):
        return True
    return "poll" in channel or "select" in channel


class ForkServerProcess:
    """strategies/fork_server_script.py running in a subprocess; use as a context manager.

    stdout and stderr go to files (shared with the forked children, like a terminal would be),
    read back with :meth:`stdout` and :meth:`stderr`.
    """

    def __init__(self, *args: str) -> None:
        if not FORK_AND_PROC:
            pytest.skip("needs os.fork and Linux /proc")
        self._dir = tempfile.TemporaryDirectory(prefix="gearshift-fork-test-")
        self.stdout_path = Path(self._dir.name) / "stdout"
        self.stderr_path = Path(self._dir.name) / "stderr"
        env = dict(os.environ)
        env.pop("PYTHONUNBUFFERED", None)  # the output tests rely on a block-buffered stdout
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(FORK_SERVER_SCRIPT), *args],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
            )
        self.pid = self.proc.pid
        try:
            first_line = wait_for(self._first_line, timeout=30)
            if not first_line:
                raise RuntimeError(f"fork server did not start; stderr:\n{self.stderr()}")
            self.port = int(first_line)
        except BaseException:
            self.close()
            raise
        self.address = ("127.0.0.1", self.port)

    def _first_line(self) -> str | None:
        text = self.stdout()
        if "\n" in text:
            return text.split("\n", 1)[0]
        if self.proc.poll() is not None:
            raise RuntimeError(f"fork server exited with {self.proc.returncode}; stderr:\n{self.stderr()}")
        return None

    def stdout(self) -> str:
        return self.stdout_path.read_text()

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def children(self) -> list[int]:
        return proc_children(self.pid)

    def zombies(self) -> list[int]:
        return proc_zombies(self.pid)

    def terminate(self, timeout: float = HANG_GUARD) -> int:
        """SIGTERM (the script shuts down and drains), wait for the exit, return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.close()
            raise

    def close(self) -> None:
        """Kill whatever is left (the server and its children) and remove the output files."""
        if self.proc.poll() is None:
            for child in self.children():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            self.proc.kill()
        self.proc.wait()
        self._dir.cleanup()

    def __enter__(self) -> ForkServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
