"""Run the ``gearshift`` command in a subprocess for tests: start it, read its banner, talk HTTP
to it, signal it, and always kill it in the end."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

#: ``gearshift 0.1.0: serving http://127.0.0.1:8000 with strategy fork (...) — Ctrl+C to quit``
BANNER = re.compile(r"serving (?P<url>\S+) with strategy (?P<strategy>\S+)")
START_TIMEOUT = 15.0

GEARSHIFT = [sys.executable, "-m", "gearshift"]


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ without GEARSHIFT_* and LISTEN_* variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GEARSHIFT_", "LISTEN_"))}
    env.pop("PYTHONPATH", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def run_gearshift(args: Sequence[str], *, command: Sequence[str] | None = None, timeout: float = 20.0,
                  **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command that is expected to exit on its own (errors, --list-strategies)."""
    kwargs.setdefault("env", clean_env())
    return subprocess.run(
        [*(command or GEARSHIFT), *args],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, **kwargs,
    )


class GearshiftProcess:
    """A running ``gearshift`` process. Use as a context manager: it is killed on exit."""

    def __init__(self, args: Sequence[str], *, command: Sequence[str] | None = None, env: dict[str, str] | None = None,
                 cwd: str | Path | None = None, pass_fds: Iterable[int] = ()) -> None:
        self.command = [*(command or GEARSHIFT), *args]
        self.proc = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env if env is not None else clean_env(), cwd=cwd, pass_fds=tuple(pass_fds),
        )
        self.pid = self.proc.pid
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self.stdout = ""
        self._readers = [
            threading.Thread(target=self._read_stderr, daemon=True),
            threading.Thread(target=self._read_stdout, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._changed:
                self._lines.append(raw.decode("utf-8", "replace"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        self.stdout = self.proc.stdout.read().decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        with self._changed:
            return "".join(self._lines)

    def wait_for(
        self, pattern: str | re.Pattern[str], timeout: float = START_TIMEOUT, count: int = 1
    ) -> list[re.Match[str]]:
        """Wait until ``count`` stderr lines match ``pattern``; fail if the process exits first."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                matches = [m for line in self._lines if (m := regex.search(line))]
                if len(matches) >= count:
                    return matches[:count]
                if self.proc.poll() is not None and not self._readers[0].is_alive():
                    raise AssertionError(
                        f"gearshift exited with {self.proc.returncode} before printing {regex.pattern!r}:\n"
                        f"{self.stderr_unlocked()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"no {regex.pattern!r} on stderr within {timeout} s:\n{self.stderr_unlocked()}"
                    )
                self._changed.wait(min(remaining, 0.1))

    def stderr_unlocked(self) -> str:
        return "".join(self._lines)

    def wait_ready(self, listeners: int = 1) -> list[str]:
        """The URLs of the banner lines (one per listener)."""
        return [m["url"] for m in self.wait_for(BANNER, count=listeners)]

    def address(self, index: int = 0) -> tuple[str, int]:
        url = self.wait_ready(index + 1)[index]
        match = re.fullmatch(r"https?://\[?(?P<host>[^\]]+?)\]?:(?P<port>\d+)", url)
        assert match, url
        return match["host"], int(match["port"])

    def send(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 15.0) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"gearshift did not exit within {timeout} s:\n{self.stderr}") from None
        for reader in self._readers:
            reader.join(5)
        return code

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.send(signum)
        return self.wait(timeout)

    def kill(self) -> None:
        """Kill the process and every child it left (by pid, read from /proc before killing)."""
        if self.proc.poll() is None:
            for pid in children_of(self.pid):
                with _suppress_lookup():
                    os.kill(pid, signal.SIGKILL)
            self.proc.kill()
        self.proc.wait(10)
        for reader in self._readers:
            reader.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> GearshiftProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        self.kill()
        if exc_type is not None:
            # Captured by pytest and shown with the failure: what the server logged, up to then.
            print(f"--- gearshift's stderr ---\n{self.stderr}")


class _suppress_lookup:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        return exc_type is not None and issubclass(exc_type, (ProcessLookupError, PermissionError))


def children_of(pid: int) -> list[int]:
    """Pids whose parent is ``pid``, from /proc."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if int(fields[1]) == pid:
            children.append(int(entry))
    return children


def _established_on(port: int) -> set[bytes]:
    """Inodes of the established TCP sockets whose local port is ``port`` (the server's side of
    its accepted connections), from /proc/net/tcp{,6}."""
    return _sockets_on(port, b"01")


def _sockets_on(port: int, state: bytes) -> set[bytes]:
    """Inodes of the TCP sockets in ``state`` (/proc's hex: 01 established, 0A listening) whose
    local port is ``port``. A regular expression rather than a split of every row: on a busy
    test machine the tables hold thousands of TIME_WAIT rows."""
    row = re.compile(rb"^ *\d+: [0-9A-F]+:%04X [0-9A-F]+:[0-9A-F]+ %s (?:\S+ +){5}(\d+)" % (port, state), re.M)
    inodes: set[bytes] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, "rb") as f:
                inodes.update(row.findall(f.read()))
        except OSError:
            continue
    return inodes


def _direct_children(pid: int) -> list[int]:
    """Children of ``pid`` from /proc/PID/task/*/children: much cheaper than children_of()'s
    scan of every process, for a check repeated in a loop."""
    children = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return children
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                children += [int(child) for child in f.read().split()]
        except OSError:
            continue
    return children


def holding_a_connection(pid: int, port: int) -> list[int]:
    """``pid`` and those of its children that hold an accepted connection on ``port``: the
    process (or the forked child) that has taken a client off the listen backlog."""
    return _holders((pid, *_direct_children(pid)), _established_on(port))


def holding_the_listener(pids: Iterable[int], port: int) -> list[int]:
    """Those of ``pids`` that hold a socket listening on ``port`` (a copy inherited over a fork
    counts: it keeps the port taken)."""
    return _holders(pids, _sockets_on(port, b"0A"))


def _holders(pids: Iterable[int], inodes: set[bytes]) -> list[int]:
    holders = []
    for candidate in pids:
        try:
            fds = os.listdir(f"/proc/{candidate}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{candidate}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1].encode() in inodes:
                holders.append(candidate)
                break
    return holders


def is_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:].split()[0] != b"Z"


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def request(address: tuple[str, int] | str, path: str = "/", method: str = "GET", body: bytes | None = None,
            timeout: float = 10.0, context: Any = None) -> tuple[int, dict[str, str], bytes]:
    """One request on its own connection: (status, headers, body). ``address`` str is a Unix path."""
    if isinstance(address, str):
        conn: http.client.HTTPConnection = UnixHTTPConnection(address, timeout=timeout)
    elif context is not None:
        conn = http.client.HTTPSConnection(address[0], address[1], timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(address[0], address[1], timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Connection": "close"})
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        conn.close()


class BackgroundRequest(threading.Thread):
    """A request running in a thread, for signalling the server while it is in flight."""

    def __init__(self, address: tuple[str, int], path: str, timeout: float = 30.0) -> None:
        super().__init__(daemon=True)
        self.address, self.path, self.timeout = address, path, timeout
        self.result: tuple[int, dict[str, str], bytes] | None = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.result = request(self.address, self.path, timeout=self.timeout)
        except BaseException as exc:
            self.error = exc


def port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def connection_refused(address: tuple[str, int], within: float = 3.0) -> bool:
    """True once a new connection to ``address`` is refused (polled for ``within`` seconds)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(address, timeout=1.0):
                pass
        except ConnectionRefusedError:
            return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def socket_activation_command(listen_fds: int = 1) -> list[str]:
    """Like systemd: the sockets at fds 3.., LISTEN_FDS, and LISTEN_PID set to the server's own pid."""
    code = textwrap.dedent(f"""
        import fcntl, os, sys
        fds = [int(fd) for fd in sys.argv[1].split(",")]
        # out of the way first (above 100), in case one of them already is 3 or 4
        moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
        for index, fd in enumerate(moved):
            os.dup2(fd, 3 + index)
            os.close(fd)
        for fd in fds:
            if fd >= 3 + len(fds):
                os.close(fd)
        os.environ["LISTEN_FDS"] = "{listen_fds}"
        os.environ["LISTEN_PID"] = str(os.getpid())
        os.execv(sys.executable, [sys.executable, "-m", "gearshift", *sys.argv[2:]])
    """)
    return [sys.executable, "-c", code]


def assert_error(result: subprocess.CompletedProcess[str], status: int, message: str) -> None:
    """The command failed with ``status`` and one error line containing ``message``, no traceback."""
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("gearshift: error: ")]
    assert len(errors) == 1, result.stderr
    assert message.lower() in errors[0].lower(), result.stderr


def write_module(directory: Path, name: str, source: str) -> Path:
    path = directory / f"{name}.py"
    path.write_text(source)
    return path


#: A strategy plugin whose options are declared as Settings (a value with a check, and a flag).
GREETER_PLUGIN = '''
import gearshift
from gearshift.settings import Setting


class GreeterStrategy(gearshift.Strategy):
    """Like sync, with options declared as Settings."""
    name = "greeter"

    def __init__(self, server, *, greeting="hi", loud=False):
        super().__init__(server)
        self.greeting, self.loud = greeting, loud

    def process_request(self, request, client_address):
        self.handle_connection(request, client_address)


@gearshift.hookimpl
def gearshift_strategies():
    return [GreeterStrategy]


@gearshift.hookimpl
def gearshift_add_options(parser):
    return [
        Setting("greeting", ("--greeting",), "greeter: the greeting", metavar="WORD",
                check=lambda word: None if word.isalpha() else "must be letters only"),
        Setting("loud", ("--loud",), "greeter: shout", kind="flag"),
    ]
'''


def write_dist_info(directory: Path, dist: str, version: str, entry_points: dict[str, str]) -> None:
    """A minimal installed distribution with ``gearshift.strategies`` entry points."""
    info = directory / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = ["[gearshift.strategies]", *(f"{name} = {target}" for name, target in entry_points.items())]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
