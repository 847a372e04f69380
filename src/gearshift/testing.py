"""``gearshift.testing``: the strategy contract as a pytest test class, for strategy authors.

Subclass :class:`StrategyContract` in a test module, name the strategy, and pytest collects the
whole contract of ``gearshift/core/strategy.py`` as tests against it::

    from gearshift.testing import StrategyContract

    class TestMine(StrategyContract):
        strategy = "mine"              # a registered name, or the Strategy class itself
        options = {"workers": 2}       # keyword options for the strategy

Each test starts a real server with the strategy on 127.0.0.1 and talks to it over real sockets.
The server runs in a subprocess the kit starts (:func:`serve_for_kit`), in that process's main
thread, as the ``gearshift`` command runs it: a strategy that forks then forks from a process
with no thread but its own, never from pytest's, and handlers running in child processes are
observed as well as those in threads. The server is a :class:`gearshift.Server` subclass that
appends a line per ``process_request`` / ``finish_request`` / ``handle_error`` /
``shutdown_request`` to a record file (``O_APPEND``, one ``write()`` a line, so lines from
threads and child processes never interleave), naming the connection (its client port) and
where the call ran (pid, thread). After ``shutdown()`` and ``server_close()`` the tests read the
record and check the rules; the subprocess compares its threads, file descriptors and child
processes (from ``/proc``) with what it had before the server existed.

A strategy declares the capabilities it lacks (``Strategy.lacks``, names from
``gearshift.core.strategy.CAPABILITIES``): the tests that need one are then skipped, with the
reason, rather than failed. Every failure message names the rule that was broken, in the words
of :data:`RULES`.

The module is registered as a pytest plugin (entry point group ``pytest11``) so that pytest
rewrites its assertions; importing it imports the standard library only: gearshift itself is
imported by the tests, when they run.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from .core.server import Server
    from .core.strategy import Strategy

__all__ = ["RULES", "StrategyContract", "children_of", "serve_for_kit"]

#: The rules the kit checks, by key; each failure message quotes its rule.
RULES: Mapping[str, str] = {
    "served": "a connection handed to process_request() is served",
    "concurrent": "clients are served concurrently (a strategy without the 'concurrent' capability "
                  "declares it in lacks)",
    "shutdown_request": "shutdown_request() is called exactly once for each connection handed to process_request()",
    "finish_request": "finish_request() is called exactly once for each connection handed to process_request()",
    "handle_error": "handle_error() is called exactly once for each handler that raised, and never for one "
                    "that returned",
    "order": "finish_request(), then handle_error() if it raised, then shutdown_request()",
    "keeps_serving": "the server keeps serving after a handler raised",
    "drain": "a request in flight completes through shutdown() and server_close()",
    "close_timeout": "server_close() returns within graceful_timeout (close(timeout)) even with a stuck handler",
    "terminate": "terminate() stops a stuck handler at once",
    "shutdown_latency": "shutdown() stops serve_forever() promptly, whatever its poll_interval",
    "keep_alive": "a connection handed back with resume_when_readable() is served again when it is readable",
    "multiprocess": "multiprocess = False: every handler runs in the server's process",
    "multithread": "multithread = False: handlers run in the loop's thread (in a child process, its main thread)",
    "leaks": "nothing is left after server_close(): no thread, child process, socket or file descriptor",
    "init": "a strategy starts no thread or process in __init__ (a prefork worker builds its strategy after the fork)",
    "handle_request": "handle_request() serves without serve_forever(): what serve() starts also starts on first use",
}

#: Bound on anything that should take milliseconds: there to turn a hang into a failure.
HANG_GUARD = 15.0
#: How long a client waits for a reply or the end of its connection that the contract promises.
PROMPT = 5.0
#: Added to a bound the contract states (graceful_timeout) before a test calls it broken: shared,
#: loaded CI machines must not fail a strategy that is merely slow.
MARGIN = 5.0
#: How long the server's process waits, after server_close(), for threads and descriptors to go.
LEAK_GRACE = 3.0

_SHUTDOWN_SIGNAL = signal.SIGUSR1
_TERMINATE_SIGNAL = signal.SIGUSR2


class StrategyContract:
    """The strategy contract as tests. Subclass it as ``Test<Something>`` and set ``strategy``.

    Class attributes to set:

    ``strategy``
        The strategy: a name registered through a plugin, or a ``Strategy`` subclass (whose
        module the server's subprocess imports again: define it in an importable module, not in
        the test module's body if that module does work at import).
    ``options``
        Keyword options passed to the strategy (as to ``gearshift.Server(..., **options)``).
    ``concurrency``
        How many clients the concurrency tests hold in their handlers at once; the strategy with
        ``options`` must be able to run that many handlers at the same time.
    """

    strategy: ClassVar[str | type[Strategy]] = ""
    options: ClassVar[Mapping[str, Any]] = {}
    concurrency: ClassVar[int] = 3
    #: graceful_timeout of the server in the test with a stuck handler.
    stuck_graceful_timeout: ClassVar[float] = 0.5

    # -- serving -------------------------------------------------------------------------------

    def test_serves_a_connection(self, tmp_path: Path) -> None:
        with self._server(tmp_path) as server, server.client() as client:
            reply = client.ask("echo hello")
            assert reply.text == "hello", _broken("served", f"the reply to 'echo hello' was {reply.line!r}")

    def test_serves_clients_concurrently(self, tmp_path: Path) -> None:
        self._require("concurrent")
        with self._server(tmp_path) as server:
            clients = [server.client() for _ in range(self.concurrency)]
            try:
                started = _hold(clients)
                assert started == len(clients), _broken(
                    "concurrent", f"{started} of {len(clients)} clients got into their handlers at the same "
                    f"time (waited {PROMPT:.0f} s for the others)",
                )
                _release(clients)
            finally:
                _close_all(clients)

    def test_starts_nothing_in_init(self, tmp_path: Path) -> None:
        with self._server(tmp_path) as server:
            started = server.record.wait_for("constructed")
        assert started is not None and started == ["0", "0"], _broken(
            "init", f"new threads, child processes after Server(..., strategy=...): {started}",
        )

    def test_handle_request_serves_without_serve_forever(self, tmp_path: Path) -> None:
        with self._server(tmp_path, mode="handle_request") as server:
            with server.client() as client:
                reply = client.ask("echo one")
                assert reply.text == "one", _broken("handle_request", f"the reply was {reply.line!r}")
            with server.client() as client:
                reply = client.ask("keep")
                assert reply.text in ("loop", "handler"), _broken("handle_request", f"the reply was {reply.line!r}")
                reply = client.ask("echo two")
                assert reply.text == "two", _broken("handle_request", f"after 'keep', the reply was {reply.line!r}")

    # -- the exactly-once rules ----------------------------------------------------------------

    def test_finish_request_and_shutdown_request_once_per_connection(self, tmp_path: Path) -> None:
        with self._server(tmp_path) as server:
            ports = _one_request_each(server, ["echo a", "raise", "echo b", "raise", "echo c"])
        record = server.record
        for port in ports:
            assert record.count("finish", port) == 1, _broken(
                "finish_request", f"connection {port} saw finish_request() {record.count('finish', port)} times",
            )
            assert record.count("shutdown", port) == 1, _broken(
                "shutdown_request",
                f"connection {port} saw shutdown_request() {record.count('shutdown', port)} times",
            )

    def test_handle_error_exactly_for_handlers_that_raised(self, tmp_path: Path) -> None:
        commands = ["echo a", "raise", "echo b", "raise", "echo c"]
        with self._server(tmp_path) as server:
            ports = _one_request_each(server, commands)
            with server.client() as client:
                reply = client.ask("echo after")
                assert reply.text == "after", _broken("keeps_serving", f"the reply was {reply.line!r}")
        record = server.record
        for command, port in zip(commands, ports, strict=True):
            expected = 1 if command == "raise" else 0
            seen = record.count("error", port)
            assert seen == expected, _broken(
                "handle_error", f"the handler of {command!r} (connection {port}) "
                f"{'raised' if expected else 'returned'}, and handle_error() was called {seen} times",
            )
            order = [event for event in record.events_of(port) if event in ("finish", "error", "shutdown")]
            wanted = ["finish", "error", "shutdown"] if expected else ["finish", "shutdown"]
            assert order == wanted, _broken("order", f"connection {port} saw {order}")

    # -- stopping ------------------------------------------------------------------------------

    def test_in_flight_request_completes_through_shutdown_and_close(self, tmp_path: Path) -> None:
        self._require("concurrent")
        with self._server(tmp_path) as server, server.client() as client:
            assert _hold([client]) == 1, _broken("served", "the handler did not start")
            server.begin_stop()
            assert server.record.wait_for("closing") is not None, _broken(
                "drain", "serve_forever() did not return after shutdown()",
            )
            client.send("go")
            reply = client.read_reply()
            assert reply.text == "done", _broken(
                "drain", f"the request in flight was not answered during server_close(): got {reply.line!r}",
            )
            assert server.finish_stop(), _broken("drain", "server_close() did not return")
        port = client.port
        shut = server.record.count("shutdown", port)
        assert shut == 1, _broken("shutdown_request", f"connection {port} saw shutdown_request() {shut} times")

    def test_close_returns_within_the_graceful_timeout_with_a_stuck_handler(self, tmp_path: Path) -> None:
        self._require("concurrent")
        timeout = self.stuck_graceful_timeout
        with self._server(tmp_path, graceful_timeout=timeout) as server, server.client() as client:
            assert _hold([client]) == 1, _broken("served", "the handler did not start")
            server.begin_stop()
            closed = server.record.wait_for("closed", timeout + MARGIN)
            client.close()  # unsticks a handler left running (an abandoned thread)
            assert closed, _broken(
                "close_timeout", f"server_close() with graceful_timeout={timeout} s had not returned after "
                f"{timeout + MARGIN:.1f} s",
            )
            elapsed = float(closed[0])
            assert elapsed <= timeout + MARGIN, _broken(
                "close_timeout", f"server_close() took {elapsed:.1f} s with graceful_timeout={timeout} s",
            )
            server.finish_stop()

    def test_terminate_stops_a_stuck_handler(self, tmp_path: Path) -> None:
        self._require("concurrent")
        self._require("terminate")
        with self._server(tmp_path) as server, server.client() as client:
            assert _hold([client]) == 1, _broken("served", "the handler did not start")
            server.signal(_TERMINATE_SIGNAL)
            terminated = server.record.wait_for("terminated")
            assert terminated, _broken("terminate", "terminate() did not return")
            assert int(terminated[0]) >= 1, _broken("terminate", f"terminate() returned {terminated[0]}")
            assert client.closed_by_peer(PROMPT), _broken(
                "terminate", f"the stuck handler's connection was still open {PROMPT:.0f} s after terminate()",
            )

    def test_shutdown_returns_promptly_with_a_huge_poll_interval(self, tmp_path: Path) -> None:
        with self._server(tmp_path, poll_interval=3600.0) as server:
            with server.client() as client:
                assert client.ask("echo x").text == "x", _broken("served", "no reply")
                assert client.closed_by_peer(PROMPT), _broken("shutdown_request", "the connection was not closed")
            started = time.monotonic()
            server.begin_stop()
            stopped = server.record.wait_for("stopped", HANG_GUARD) is not None
            elapsed = time.monotonic() - started
            assert stopped and elapsed <= MARGIN, _broken(
                "shutdown_latency", f"serve_forever(poll_interval=3600) "
                f"{'took' if stopped else 'had not returned after'} {elapsed:.1f} s after shutdown()",
            )

    # -- keep-alive ----------------------------------------------------------------------------

    def test_keep_alive_connections_are_served_again(self, tmp_path: Path) -> None:
        kept: dict[int, str] = {}

        def step(client: _Client, command: str) -> None:
            reply = client.ask(command)
            expected = command[len("echo "):] if command.startswith("echo ") else ("loop", "handler")
            assert reply.text in expected, _broken(
                "keep_alive" if client.port in kept else "served",
                f"connection {client.port}, handed back by '{kept.get(client.port)}', answered "
                f"{reply.line!r} to {command!r}",
            )
            kept.setdefault(client.port, reply.text)

        with self._server(tmp_path) as server, server.client() as first:
            step(first, "keep")
            # Connected once the first is parked: a strategy that serves one handler at a time
            # may block on a connection that is open and has sent nothing yet.
            with server.client() as second:
                # Interleaved, so that a connection waiting to be served again holds up no other.
                for command, client in (("keep", second), ("keep", second), ("keep", first),
                                        ("echo two", second), ("echo one", first)):
                    step(client, command)
        record = server.record
        for port, where in kept.items():
            processed = record.count("process", port)
            if where == "loop":  # handed back to the loop: it comes back through process_request
                assert processed == 3, _broken(
                    "keep_alive", f"connection {port} was handed back, but process_request() saw it {processed} times",
                )
            finished, shut = record.count("finish", port), record.count("shutdown", port)
            assert finished == processed, _broken(
                "finish_request", f"connection {port}: process_request() {processed} times, finish_request() "
                f"{finished}",
            )
            assert shut == processed, _broken(
                "shutdown_request", f"connection {port}: process_request() {processed} times, shutdown_request() "
                f"{shut}",
            )

    def _exercise(self, server: _KitServer, commands: list[str], *, then: list[str]) -> None:
        """Some of everything: concurrent requests (if the strategy has them), one connection
        per command, then the ``then`` commands on one kept-alive connection."""
        if self._has("concurrent"):
            clients = [server.client() for _ in range(self.concurrency)]
            try:
                _hold(clients)
                _release(clients)
            finally:
                _close_all(clients)
        _one_request_each(server, commands)
        with server.client() as client:
            for command in then:
                client.ask(command)

    # -- the flags -----------------------------------------------------------------------------

    def test_multithread_and_multiprocess_flags_are_honest(self, tmp_path: Path) -> None:
        with self._server(tmp_path) as server:
            self._exercise(server, ["echo a", "raise", "echo b"], then=["keep", "echo again"])
        record = server.record
        ran = record.where("finish")
        assert ran, _broken("served", "no finish_request() was recorded")
        if not server.multiprocess:
            elsewhere = sorted({pid for pid, _, _ in ran if pid != server.pid})
            assert not elsewhere, _broken(
                "multiprocess", f"handlers ran in processes {elsewhere}, not only in the server's ({server.pid})",
            )
        if not server.multithread:
            in_threads = sorted({
                (pid, tid) for pid, tid, main in ran
                if (pid == server.pid and tid != server.loop_thread) or (pid != server.pid and not main)
            })
            assert not in_threads, _broken(
                "multithread", f"handlers ran in threads {in_threads} (pid, thread) other than the loop's "
                f"({server.pid}, {server.loop_thread}) or a child's main thread",
            )

    # -- leaks ---------------------------------------------------------------------------------

    def test_nothing_leaks_after_server_close(self, tmp_path: Path) -> None:
        with self._server(tmp_path) as server:
            self._exercise(server, ["echo a", "raise", "echo b", "echo c"], then=["keep"])
        leaks = server.record.wait_for("leaks")
        assert leaks, _broken("leaks", "the server's process did not report")
        left = json.loads(" ".join(leaks))
        if left is None:
            _skip("the leak check needs Linux /proc")
        for kind in ("threads", "children", "fds"):
            assert not left[kind], _broken("leaks", f"{kind} left after server_close(): {left[kind]}")

    # -- helpers -------------------------------------------------------------------------------

    @classmethod
    def _strategy_class(cls) -> type[Strategy]:
        from .core.plugins import resolve_strategy

        if not cls.strategy:
            raise TypeError(f"{cls.__name__} must set strategy = a strategy name or Strategy subclass")
        return resolve_strategy(cls.strategy)

    def _has(self, capability: str) -> bool:
        return capability not in self._strategy_class().lacks

    def _require(self, capability: str) -> None:
        if not self._has(capability):
            from .core.strategy import CAPABILITIES

            _skip(f"strategy {self._strategy_class().name!r} lacks {capability!r}: {CAPABILITIES[capability]}")

    @contextlib.contextmanager
    def _server(
        self, tmp_path: Path, *, graceful_timeout: float = HANG_GUARD, poll_interval: float = 0.05,
        mode: str = "serve_forever",
    ) -> Iterator[_KitServer]:
        strategy = self._strategy_class()
        spec = strategy.name if isinstance(self.strategy, str) else f"{strategy.__module__}:{strategy.__qualname__}"
        server = _KitServer(tmp_path, {
            "strategy": spec, "options": dict(self.options), "graceful_timeout": graceful_timeout,
            "poll_interval": poll_interval, "mode": mode,
        })
        try:
            yield server
            server.begin_stop()
            assert server.finish_stop(), (
                f"the server did not stop: shutdown() or server_close() did not return\n"
                f"what it recorded:\n{server.record.text()}\nits output:\n{server.stderr()}"
            )
        finally:
            server.kill()


# -- the client side ---------------------------------------------------------------------------


class _Reply:
    """One reply line: ``TEXT PID THREAD MAIN`` (where the handler ran), or '' at EOF."""

    def __init__(self, line: str) -> None:
        self.line = line
        self.text = line.rsplit(" ", 3)[0] if line.count(" ") >= 3 else line


class _Client:
    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=HANG_GUARD)
        self.port: int = self.sock.getsockname()[1]
        self._buffer = b""

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\n")

    def ask(self, line: str, timeout: float = PROMPT) -> _Reply:
        self.send(line)
        return self.read_reply(timeout)

    def read_reply(self, timeout: float = PROMPT) -> _Reply:
        """The next line from the server, or an empty reply at EOF or after ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            while b"\n" not in self._buffer:
                chunk = self.sock.recv(4096)
                if not chunk:
                    break
                self._buffer += chunk
        except (TimeoutError, ConnectionError):
            pass
        line, _, self._buffer = self._buffer.partition(b"\n")
        return _Reply(line.decode(errors="replace"))

    def closed_by_peer(self, timeout: float) -> bool:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(100) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> _Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _hold(clients: list[_Client]) -> int:
    """Send ``wait`` on each client and count those whose handler started within PROMPT."""
    for client in clients:
        client.send("wait")
    deadline = time.monotonic() + PROMPT
    return sum(
        client.read_reply(max(0.01, deadline - time.monotonic())).text == "started" for client in clients
    )


def _release(clients: list[_Client]) -> None:
    for client in clients:
        client.send("go")
    for client in clients:
        client.read_reply()


def _close_all(clients: list[_Client]) -> None:
    for client in clients:
        client.close()


def _one_request_each(server: _KitServer, commands: list[str]) -> list[int]:
    """One connection per command, one after the other; waits (at most PROMPT in all) for the
    server to close each. Returns their ports."""
    clients = []
    try:
        for command in commands:
            client = server.client()
            clients.append(client)
            client.ask(command)
        deadline = time.monotonic() + PROMPT
        for client in clients:
            client.closed_by_peer(max(0.01, deadline - time.monotonic()))
        return [client.port for client in clients]
    finally:
        _close_all(clients)


class _Record:
    """The record file, read by the tests: one event a line, ``EVENT FIELD...``."""

    def __init__(self, path: Path, alive: Callable[[], bool]) -> None:
        self.path = path
        self._alive = alive

    def text(self) -> str:
        try:
            return self.path.read_text()
        except FileNotFoundError:
            return ""

    def lines(self) -> list[list[str]]:
        return [line.split(" ") for line in self.text().splitlines() if line]

    def wait_for(self, event: str, timeout: float = HANG_GUARD) -> list[str] | None:
        """The fields of the first ``event`` line, waiting for it at most ``timeout`` seconds
        (less if the server's process exits without writing it)."""
        deadline = time.monotonic() + timeout
        while True:
            alive = self._alive()
            for fields in self.lines():
                if fields[0] == event:
                    return fields[1:]
            if not alive or time.monotonic() >= deadline:
                return None
            time.sleep(0.005)

    def events_of(self, port: int) -> list[str]:
        return [fields[0] for fields in self.lines() if len(fields) == 5 and fields[1] == str(port)]

    def count(self, event: str, port: int) -> int:
        return self.events_of(port).count(event)

    def where(self, event: str) -> list[tuple[int, int, bool]]:
        return [
            (int(fields[2]), int(fields[3]), fields[4] == "1")
            for fields in self.lines() if fields[0] == event and len(fields) == 5
        ]


class _KitServer:
    """The server under test, in a subprocess running :func:`serve_for_kit`."""

    def __init__(self, tmp_path: Path, config: dict[str, Any]) -> None:
        directory = Path(tempfile.mkdtemp(prefix="kit-", dir=tmp_path))
        config["record"] = str(directory / "record")
        self._stderr_path = directory / "stderr"
        # The subprocess imports what this process can (a strategy class from a test's module).
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        with open(self._stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "import gearshift.testing as t; t.serve_for_kit()", json.dumps(config)],
                stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, env=env,
            )
        self.record = _Record(Path(config["record"]), lambda: self.proc.poll() is None)
        ready = self.record.wait_for("ready", 30.0)
        if ready is None:
            self.kill()
            raise AssertionError(f"the server did not start; its output:\n{self.stderr()}")
        port, pid, loop_thread, multithread, multiprocess = ready
        self.address = ("127.0.0.1", int(port))
        self.pid, self.loop_thread = int(pid), int(loop_thread)
        self.multithread, self.multiprocess = multithread == "1", multiprocess == "1"

    def client(self) -> _Client:
        return _Client(self.address)

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def begin_stop(self) -> None:
        """``shutdown()`` in the server's process; ``server_close()`` follows there."""
        self.signal(_SHUTDOWN_SIGNAL)

    def finish_stop(self) -> bool:
        """Wait until the server's process has closed the server and exited (True), or not."""
        if self.record.wait_for("leaks", HANG_GUARD + LEAK_GRACE) is None:
            return False
        try:
            self.proc.wait(HANG_GUARD)
        except subprocess.TimeoutExpired:
            return False
        return True

    def stderr(self) -> str:
        try:
            return self._stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        """Kill the server's process and the children it left (they would outlive it)."""
        if self.proc.poll() is None:
            for child in children_of(self.proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            self.proc.kill()
        self.proc.wait()


def _broken(rule: str, detail: str) -> str:
    return f"broken rule: {RULES[rule]}: {detail}"


def _skip(reason: str) -> None:
    import pytest

    pytest.skip(reason)


# -- the server side ---------------------------------------------------------------------------


def serve_for_kit(argv: list[str] | None = None) -> None:
    """The server's process of a kit test: ``argv[1]`` is the test's JSON configuration.

    Serves in the main thread until SIGUSR1 (``shutdown()``, from the signal handler as the
    command does), then calls ``server_close()``, then reports what it left behind. SIGUSR2
    calls ``strategy.terminate()``, from the signal handler too (the contract allows it).
    Writes to the record file: ``ready PORT PID LOOP_THREAD MULTITHREAD MULTIPROCESS``, the
    events of :class:`_RecordingServer`, ``terminated N``, ``stopped``, ``closing``,
    ``closed SECONDS`` and ``leaks JSON``.
    """
    global _record
    config = json.loads((sys.argv if argv is None else argv)[1])
    record = _record = _RecordFile(config["record"])
    before = _Resources()
    _serve_and_close(config, record)
    record.write("leaks", json.dumps(before.left_behind(LEAK_GRACE)))


def _serve_and_close(config: dict[str, Any], record: _RecordFile) -> None:
    before = _Resources()
    server = _recording_server_class()(
        ("127.0.0.1", 0), _KitHandler, strategy=_load_strategy(config["strategy"]),
        graceful_timeout=config["graceful_timeout"], **config["options"],
    )
    record.write("constructed", len(_tasks() - before.threads),
                 len(set(children_of(os.getpid())) - before.children))
    strategy = server.strategy
    stopping: list[bool] = []  # not an Event: a signal handler must not take its lock
    kit_pid = os.getpid()

    def shutdown(signum: int, frame: object) -> None:
        if os.getpid() != kit_pid:
            # A worker process that inherited this handler (prefork passes USR1 on to its
            # workers, for their log files): the stop is the master's to make, not the worker's.
            return
        stopping.append(True)
        server.shutdown()

    signal.signal(_SHUTDOWN_SIGNAL, shutdown)
    signal.signal(_TERMINATE_SIGNAL, lambda signum, frame: record.write("terminated", strategy.terminate()))
    record.write("ready", server.server_address[1], os.getpid(), threading.get_ident(),
                 int(bool(strategy.multithread)), int(bool(strategy.multiprocess)))
    try:
        if config["mode"] == "handle_request":
            server.timeout = config["poll_interval"]
            while not stopping:
                server.handle_request()
        else:
            server.serve_forever(config["poll_interval"])
        record.write("stopped")
    finally:
        record.write("closing")
        started = time.monotonic()
        server.server_close()
        record.write("closed", f"{time.monotonic() - started:.3f}")
        # A test may ask for the stop twice (its own, then the kit's at the end): nothing to
        # stop now, and the server must go, for the leak check.
        signal.signal(_SHUTDOWN_SIGNAL, signal.SIG_IGN)
        signal.signal(_TERMINATE_SIGNAL, signal.SIG_IGN)


def _load_strategy(spec: str) -> str | type[Strategy]:
    """A registered name as it is; ``module:qualname`` imported."""
    if ":" not in spec:
        return spec
    import importlib

    module_name, _, qualname = spec.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target  # type: ignore[no-any-return]


class _RecordFile:
    """The record file, written by the server's process and its threads and children."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def write(self, event: str, *fields: object) -> None:
        os.write(self.fd, " ".join([event, *map(str, fields)]).encode() + b"\n")

    def event(self, event: str, port: object) -> None:
        """``EVENT PORT PID THREAD MAIN``: what happened to which connection, and where."""
        main = threading.current_thread() is threading.main_thread()
        self.write(event, port, os.getpid(), threading.get_ident(), int(main))


def _recording_server_class() -> type[Server]:
    from .core.server import Server

    class RecordingServer(Server):
        """Records the life-cycle calls the contract counts, by the connection's client port."""

        def process_request(self, request: socket.socket, client_address: Any) -> None:
            _PORTS[request] = _port(client_address)
            _event("process", _port(client_address))
            super().process_request(request, client_address)

        def finish_request(self, request: socket.socket, client_address: Any) -> None:
            _event("finish", _port(client_address))
            super().finish_request(request, client_address)

        def handle_error(self, request: socket.socket, client_address: Any) -> None:
            _event("error", _port(client_address))
            super().handle_error(request, client_address)

        def shutdown_request(self, request: socket.socket) -> None:
            # Looked up before the call closes it; a second call on a closed socket still counts.
            port = _PORTS.get(request)
            if port is None:
                with contextlib.suppress(OSError):
                    port = _PORTS[request] = request.getpeername()[1]
            _event("shutdown", port)
            super().shutdown_request(request)

    return RecordingServer


#: The record file of the server's process (serve_for_kit).
_record: _RecordFile | None = None


def _event(event: str, port: object) -> None:
    if _record is not None:
        _record.event(event, port)


#: Connection -> client port, so that shutdown_request() names a socket already closed.
_PORTS: dict[socket.socket, int] = {}


def _port(client_address: Any) -> Any:
    return client_address[1] if isinstance(client_address, tuple) else client_address


class _KitHandler:
    """The kit's handler: reads one line, a command, and replies ``TEXT PID THREAD MAIN``.

    ``echo TEXT``  reply TEXT.
    ``raise``      reply ``raising``, then raise (the contract: handle_error is called).
    ``wait``       reply ``started``, then wait for a line (``go``) and reply ``done``: a handler
                   in flight as long as the client wants (stuck, if it never sends).
    ``keep``       ask the loop to resume the connection (resume_when_readable) and reply
                   ``loop``; where that is refused (a child process), reply ``handler`` and wait
                   for the next command here, as a protocol handler would.
    """

    def __init__(self, request: socket.socket, client_address: Any, server: Any) -> None:
        server.resumed_state(request)
        _PORTS[request] = _port(client_address)
        while True:
            command = _read_line(request)
            if command == "raise":
                _reply(request, "raising")
                raise RuntimeError("the kit's handler raises on purpose (a handler error)")
            if command == "wait":
                _reply(request, "started")
                _reply(request, "done" if _read_line(request) else "eof")
            elif command == "keep":
                if server.resume_when_readable(request, client_address):
                    _reply(request, "loop")
                    return
                _reply(request, "handler")
                if server.wait_readable(request, HANG_GUARD):
                    continue
            elif command.startswith("echo "):
                _reply(request, command[len("echo "):])
            elif command:
                _reply(request, f"unknown command {command!r}")
            return


def _read_line(sock: socket.socket) -> str:
    """One line, byte by byte, so that nothing of the next command is consumed; '' at EOF."""
    data = bytearray()
    while not data.endswith(b"\n"):
        try:
            chunk = sock.recv(1)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


def _reply(sock: socket.socket, text: str) -> None:
    main = threading.current_thread() is threading.main_thread()
    with contextlib.suppress(OSError):
        sock.sendall(f"{text} {os.getpid()} {threading.get_ident()} {int(main)}\n".encode())


class _Resources:
    """This process's threads, file descriptors and child processes, from /proc."""

    def __init__(self) -> None:
        self.threads, self.fds, self.children = _tasks(), _fds(), set(children_of(os.getpid()))

    def left_behind(self, grace: float) -> dict[str, list[str]] | None:
        """What is new since the snapshot once it has had ``grace`` seconds to go (None without
        /proc)."""
        if not os.path.isdir("/proc/self/fd"):
            return None
        deadline = time.monotonic() + grace
        while True:
            gc.collect()  # a socket dropped in a reference cycle is closed by the collector
            left = {
                "threads": [_describe_thread(t) for t in sorted(_tasks() - self.threads)],
                "fds": [_describe_fd(fd) for fd in sorted(_fds() - self.fds)],
                "children": [str(pid) for pid in sorted(set(children_of(os.getpid())) - self.children)],
            }
            if not any(left.values()) or time.monotonic() >= deadline:
                return left
            time.sleep(0.01)


def _tasks() -> set[int]:
    try:
        return {int(tid) for tid in os.listdir("/proc/self/task")}
    except FileNotFoundError:
        return set()


def _fds() -> set[int]:
    try:
        names = os.listdir("/proc/self/fd")
    except FileNotFoundError:
        return set()
    open_now = set()
    for name in names:  # listdir's own descriptor is listed, and closed by now
        with contextlib.suppress(OSError):
            os.fstat(int(name))
            open_now.add(int(name))
    return open_now


def _describe_thread(tid: int) -> str:
    names = [t.name for t in threading.enumerate() if t.native_id == tid]
    return f"{tid} ({names[0]})" if names else str(tid)


def _describe_fd(fd: int) -> str:
    try:
        return f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}"
    except OSError:
        return str(fd)


def children_of(pid: int) -> list[int]:
    """Every child (running or zombie) of every thread of ``pid``, from /proc: what a strategy's
    own tests check for leaked processes with (Linux)."""
    children: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return children
    for tid in tasks:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as f:
            children.extend(int(child) for child in f.read().split())
    return children
