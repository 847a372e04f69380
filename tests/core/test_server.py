"""gearshift.Server: socketserver compatibility, configuration errors, the loop's life cycle
(shutdown, serve again, handle_request, verify_request, handle_error) and connections handed
back to the loop with resume_when_readable()."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import signal
import socket
import socketserver
import threading
import time

import pytest
from core_helpers import (
    HANG_GUARD,
    ForkServerProcess,
    LineHandler,
    ask,
    blocked_in_wait,
    closed_by_peer,
    connect,
    read_line,
    serve,
    wait_for,
)

import gearshift
from gearshift.core import check_options

pytestmark = pytest.mark.timeout(30)

LOCALHOST = ("127.0.0.1", 0)
IN_PROCESS_STRATEGIES = ["sync", "thread"]


# -- every strategy serves concurrent clients with a stdlib handler ------------------------------


def _concurrent_clients(address, server_pid: int, expect_other_pid: bool) -> None:
    texts = [f"client-{i}" for i in range(20)]
    replies: dict[str, str] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(texts))

    def client(i: int, text: str) -> None:
        try:
            start.wait(HANG_GUARD)
            line = f"sleep 0.05 {text}" if i % 2 else f"echo {text}"
            replies[text] = ask(address, line)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i, t)) for i, t in enumerate(texts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HANG_GUARD * 2)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors
    assert sorted(replies) == sorted(texts)
    for text, reply in replies.items():
        echoed, pid = reply.split()
        assert echoed == text
        assert (int(pid) != server_pid) == expect_other_pid


@pytest.mark.parametrize("strategy", ["sync", "thread", "fork"])
def test_every_strategy_serves_concurrent_clients(strategy):
    if strategy == "fork":  # never fork from the multi-threaded pytest process
        with ForkServerProcess("--max-children", "5") as server:
            _concurrent_clients(server.address, server.pid, expect_other_pid=True)
            server.terminate()
        return
    with serve(gearshift.Server(LOCALHOST, LineHandler, strategy=strategy)) as server:
        assert server.strategy.name == strategy
        _concurrent_clients(server.server_address, os.getpid(), expect_other_pid=False)


# -- socketserver's attributes and set-up methods ---------------------------------------------


def test_socketserver_attributes_and_context_manager():
    with gearshift.Server(LOCALHOST, LineHandler) as server:
        host, port = server.server_address
        assert host == "127.0.0.1" and port > 0
        assert server.RequestHandlerClass is LineHandler
        assert server.timeout is None
        assert isinstance(server.socket, socket.socket)
        assert server.fileno() == server.socket.fileno()
        assert server.address_family == socket.AF_INET
        assert server.socket_type == socket.SOCK_STREAM
        assert server.strategy.name == "sync"
        assert str(port) in repr(server) and "sync" in repr(server)
    assert server.socket.fileno() == -1  # closed by __exit__
    server.server_close()  # idempotent


class _Recorder(socketserver.BaseRequestHandler):
    seen: list = []

    def handle(self):
        self.seen.append(_describe(self.request, self.client_address))


def _describe(request, client_address):
    return type(request), request.family, request.type, request.gettimeout(), type(client_address)


def _listener(family, address):
    if family == socket.AF_UNIX:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(address)
        sock.listen()
        return sock
    return socket.create_server(address, family=family)


@pytest.mark.parametrize("case", ["inet", "inet6", "unix", "default-timeout"])
def test_accepted_connection_is_what_socket_accept_returns(case, tmp_path):
    # The loop accepts through get_request(): the handler gets exactly what socket.accept()
    # would have given it.
    if case == "inet6" and not socket.has_ipv6:
        pytest.skip("no IPv6")
    family, address = {
        "inet": (socket.AF_INET, LOCALHOST),
        "inet6": (socket.AF_INET6, ("::1", 0)),
        "unix": (socket.AF_UNIX, str(tmp_path / "s.sock")),
        "default-timeout": (socket.AF_INET, LOCALHOST),
    }[case]
    previous = socket.getdefaulttimeout()
    if case == "default-timeout":
        socket.setdefaulttimeout(7.0)
    try:
        _Recorder.seen = []
        with gearshift.Server(address, _Recorder) as server, connect(server.server_address):
            server.handle_request()
        (ours,) = _Recorder.seen
        with _listener(family, address) as listener, connect(listener.getsockname()):
            request, client_address = listener.accept()
            with request:
                theirs = _describe(request, client_address)
    finally:
        socket.setdefaulttimeout(previous)
    assert ours == theirs
    assert ours[1] == family and type(ours[1]) is socket.AddressFamily
    assert type(ours[2]) is socket.SocketKind
    assert ours[3] == (7.0 if case == "default-timeout" else None)


def test_a_listener_subclass_accepts_with_its_own_accept():
    # An ssl.SSLSocket listener wraps what it accepts in accept(): a subclass's accept() is used.
    class CountingSocket(socket.socket):
        accepts = 0

        def accept(self):
            type(self).accepts += 1
            return super().accept()

    listener = CountingSocket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(LOCALHOST)
    listener.listen()
    with serve(gearshift.Server(None, LineHandler, listener=listener)) as server:
        assert ask(server.server_address, "echo hi").startswith("hi")
    assert CountingSocket.accepts >= 1


def test_bind_and_activate_false_then_bind_by_hand():
    server = gearshift.Server(LOCALHOST, LineHandler, bind_and_activate=False)
    try:
        server.server_bind()
        server.server_activate()
    except BaseException:
        server.server_close()
        raise
    with serve(server):
        assert ask(server.server_address, "echo manual").split()[0] == "manual"


def test_bind_failure_raises_and_leaks_nothing():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            gearshift.Server(("127.0.0.1", port), LineHandler)


def test_closed_server_refuses_to_serve():
    server = gearshift.Server(LOCALHOST, LineHandler)
    server.server_close()
    with pytest.raises(ValueError):
        server.serve_forever()


# -- configuration errors -----------------------------------------------------------------------


def test_unknown_strategy_names_it_and_lists_available_ones():
    with pytest.raises(gearshift.UnknownStrategyError) as info:
        gearshift.Server(LOCALHOST, LineHandler, strategy="threads")
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "'threads'" in message
    for name in ("fork", "sync", "thread"):
        assert name in message
    assert info.value.name == "threads"
    assert {"fork", "sync", "thread"} <= set(info.value.available)


def test_misspelt_option_names_option_strategy_and_accepted_options():
    with pytest.raises(TypeError) as info:
        gearshift.Server(LOCALHOST, LineHandler, strategy="thread", daemon_thread=True)
    message = str(info.value)
    assert "'daemon_thread'" in message
    assert "'thread'" in message
    assert "daemon_threads" in message and "block_on_close" in message


def test_option_of_another_strategy_is_refused():
    with pytest.raises(TypeError) as info:
        gearshift.Server(LOCALHOST, LineHandler, strategy="sync", max_children=3)
    assert "'max_children'" in str(info.value) and "'sync'" in str(info.value)
    assert "no options" in str(info.value)


def test_several_unknown_options_are_all_named():
    with pytest.raises(TypeError) as info:
        gearshift.Server(LOCALHOST, LineHandler, strategy="fork", max_child=3, block_on_exit=True)
    message = str(info.value)
    assert "'max_child'" in message and "'block_on_exit'" in message
    assert "max_children" in message and "block_on_close" in message


@pytest.mark.parametrize(
    ("strategy", "options", "named"),
    [
        ("fork", {"max_children": 0}, "max_children"),
        ("fork", {"max_children": -3}, "max_children"),
        ("fork", {"max_children": "3"}, "max_children"),
        ("fork", {"max_children": True}, "max_children"),
        ("fork", {"block_on_close": "yes"}, "block_on_close"),
        ("thread", {"daemon_threads": 1}, "daemon_threads"),
        ("thread", {"block_on_close": None}, "block_on_close"),
        ("sync", {"graceful_timeout": -1}, "graceful_timeout"),
        ("sync", {"graceful_timeout": "1"}, "graceful_timeout"),
    ],
)
def test_invalid_option_values_raise_value_error(strategy, options, named):
    with pytest.raises(ValueError) as info:
        gearshift.Server(LOCALHOST, LineHandler, strategy=strategy, **options)
    assert named in str(info.value)


def test_the_old_drain_timeout_name_is_refused():
    with pytest.raises(TypeError, match="drain_timeout"):
        gearshift.Server(LOCALHOST, LineHandler, drain_timeout=1)
    with gearshift.Server(LOCALHOST, LineHandler, graceful_timeout=1) as server:
        assert server.graceful_timeout == 1.0


def test_invalid_address_is_refused():
    with pytest.raises(ValueError):
        gearshift.Server(12345, LineHandler)


def test_strategy_must_be_a_name_or_strategy_subclass():
    with pytest.raises(TypeError):
        gearshift.Server(LOCALHOST, LineHandler, strategy=object)


def test_strategy_given_as_a_subclass():
    calls = []

    class Inline(gearshift.Strategy):
        name = "inline-test"

        def process_request(self, request, client_address):
            calls.append(client_address)
            self.handle_connection(request, client_address)

    with serve(gearshift.Server(LOCALHOST, LineHandler, strategy=Inline)) as server:
        assert isinstance(server.strategy, Inline)
        assert server.strategy.name == "inline-test"
        assert ask(server.server_address, "echo direct").split()[0] == "direct"
    assert len(calls) == 1
    assert "inline-test" not in gearshift.available_strategies()  # passing it does not register it


# -- shutdown() ----------------------------------------------------------------------------------


@pytest.mark.timeout(10)
@pytest.mark.parametrize("strategy", IN_PROCESS_STRATEGIES)
def test_shutdown_returns_even_with_a_huge_poll_interval(strategy):
    server = gearshift.Server(LOCALHOST, LineHandler, strategy=strategy)
    with serve(server, poll_interval=30):
        # One request proves the loop is running (and now sitting in select() for up to 30 s).
        assert ask(server.server_address, "echo up").startswith("up")
        server.shutdown()  # must not wait out poll_interval; the 10 s test timeout guards it


@pytest.mark.parametrize("strategy", IN_PROCESS_STRATEGIES)
def test_no_connection_is_accepted_after_shutdown_returns(strategy):
    handled = []

    class Recording(LineHandler):
        def handle(self):
            handled.append(self.client_address)
            super().handle()

    server = gearshift.Server(LOCALHOST, Recording, strategy=strategy)
    with serve(server):
        assert ask(server.server_address, "echo before").startswith("before")
        server.shutdown()
        # The kernel still completes the handshake (the listener stays open until
        # server_close), but the handler must never run.
        with connect(server.server_address, timeout=5) as late:
            late.sendall(b"echo late\n")
            time.sleep(0.3)  # not a synchronisation: the time a loop still running would take to serve it
            assert len(handled) == 1
            server.server_close()
            assert closed_by_peer(late)
    assert len(handled) == 1


@pytest.mark.parametrize("strategy", IN_PROCESS_STRATEGIES)
def test_serve_forever_can_run_again_after_shutdown(strategy):
    server = gearshift.Server(LOCALHOST, LineHandler, strategy=strategy)
    try:
        for run in range(3):
            thread = threading.Thread(target=server.serve_forever, args=(0.05,))
            thread.start()
            try:
                assert ask(server.server_address, f"echo run{run}").startswith(f"run{run} ")
            finally:
                server.shutdown()
                thread.join(HANG_GUARD)
            assert not thread.is_alive()
    finally:
        server.server_close()


def test_shutdown_before_serve_forever_makes_it_return():
    # socketserver would deadlock here; gearshift's shutdown() returns and the next
    # serve_forever() returns at once instead of serving forever.
    server = gearshift.Server(LOCALHOST, LineHandler)
    try:
        server.shutdown()
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        thread.join(HANG_GUARD)
        assert not thread.is_alive()
    finally:
        server.server_close()


class SlowHandler(socketserver.StreamRequestHandler):
    started: threading.Event

    def handle(self):
        line = self.rfile.readline()
        self.started.set()
        time.sleep(0.5)  # slow on purpose: still in flight when shutdown() and server_close() run
        self.wfile.write(b"finished " + line)


@pytest.mark.parametrize("strategy", IN_PROCESS_STRATEGIES)
def test_in_flight_request_completes_through_shutdown_and_server_close(strategy):
    handler = type("Slow", (SlowHandler,), {"started": threading.Event()})
    server = gearshift.Server(LOCALHOST, handler, strategy=strategy)
    with serve(server), connect(server.server_address) as client:
        client.sendall(b"slow\n")
        assert handler.started.wait(HANG_GUARD)
        server.shutdown()
        server.server_close()
        assert read_line(client) == b"finished slow\n"


# -- handle_request(), verify_request(), handle_error() ---------------------------------------


def test_handle_request_serves_one_connection():
    with gearshift.Server(LOCALHOST, LineHandler) as server, connect(server.server_address) as client:
        client.sendall(b"echo once\n")
        server.handle_request()
        assert read_line(client).split()[0] == b"once"


@pytest.mark.timeout(10)
def test_handle_request_with_timeout_calls_handle_timeout():
    timeouts = []

    class TimingOut(gearshift.Server):
        timeout = 0.1

        def handle_timeout(self):
            timeouts.append(time.monotonic())

    with TimingOut(LOCALHOST, LineHandler) as server:
        server.handle_request()
        assert len(timeouts) == 1
        server.timeout = 0.05  # an instance attribute works too
        server.handle_request()
        assert len(timeouts) == 2


@pytest.mark.parametrize("strategy", IN_PROCESS_STRATEGIES)
def test_verify_request_false_closes_without_calling_handler(strategy):
    handled = []

    class Picky(gearshift.Server):
        refuse = True

        def verify_request(self, request, client_address):
            return not self.refuse

    class Recording(LineHandler):
        def handle(self):
            handled.append(1)
            super().handle()

    server = Picky(LOCALHOST, Recording, strategy=strategy)
    with serve(server), connect(server.server_address) as client:
        client.sendall(b"echo refused\n")
        assert closed_by_peer(client)
        assert handled == []
        server.refuse = False
        assert ask(server.server_address, "echo welcome").startswith("welcome")
    assert handled == [1]


@pytest.mark.parametrize("strategy", IN_PROCESS_STRATEGIES)
def test_handle_error_is_called_and_logged_and_server_keeps_serving(strategy, caplog):
    errors = []

    class Failing(LineHandler):
        def handle(self):
            raise RuntimeError("handler exploded")

    class Recording(gearshift.Server):
        def handle_error(self, request, client_address):
            errors.append(client_address)
            super().handle_error(request, client_address)

    server = Recording(LOCALHOST, Failing, strategy=strategy)
    with caplog.at_level(logging.ERROR, logger="gearshift"), serve(server):
        for _ in range(2):
            with connect(server.server_address) as client:
                client.sendall(b"echo boom\n")
                assert closed_by_peer(client)  # closed after the error
        server.RequestHandlerClass = LineHandler
        assert ask(server.server_address, "echo still-here").startswith("still-here")
    assert len(errors) == 2
    records = [r for r in caplog.records if r.name == "gearshift" and r.levelno >= logging.ERROR]
    assert len(records) == 2
    assert all(r.exc_info and r.exc_info[0] is RuntimeError for r in records)


def test_service_actions_runs_every_loop_turn():
    turns = threading.Semaphore(0)

    class Counting(gearshift.Server):
        def service_actions(self):
            super().service_actions()
            turns.release()

    with serve(Counting(LOCALHOST, LineHandler), poll_interval=0.01):
        for _ in range(5):  # turns keep coming while idle
            assert turns.acquire(timeout=HANG_GUARD)


def test_a_strategy_s_service_within_bounds_the_idle_wait_of_any_poll_interval():
    turns = threading.Semaphore(0)

    class Beating(gearshift.Strategy):
        name = "beating-test"

        def process_request(self, request, client_address):
            self.handle_connection(request, client_address)

        def service_within(self):
            return 0.01

        def service_actions(self):
            turns.release()

    # A poll_interval the test would time out waiting for: the strategy's interval is what counts.
    with serve(gearshift.Server(LOCALHOST, LineHandler, strategy=Beating), poll_interval=3600):
        for _ in range(5):
            assert turns.acquire(timeout=HANG_GUARD)


def test_process_request_can_be_overridden():
    seen = []

    class Wrapping(gearshift.Server):
        def process_request(self, request, client_address):
            seen.append(client_address)
            super().process_request(request, client_address)

    with serve(Wrapping(LOCALHOST, LineHandler, strategy="thread")) as server:
        assert ask(server.server_address, "echo wrapped").startswith("wrapped")
    assert len(seen) == 1


# -- server_close() from a signal handler on the loop thread ----------------------------------


@pytest.mark.timeout(10)
def test_shutdown_and_server_close_from_a_signal_handler_stop_serve_forever_cleanly():
    """The pattern a command-line server uses: SIGTERM's handler calls shutdown() then
    server_close() while serve_forever() runs in the main thread (here: SIGUSR1, since
    pytest-timeout owns SIGALRM). serve_forever() must return normally."""
    server = gearshift.Server(LOCALHOST, LineHandler)
    handled = []

    def on_signal(signum, frame):
        handled.append(signum)
        server.shutdown()
        server.server_close()

    def poke() -> None:
        ask(server.server_address, "echo up")  # the loop is running
        # back to waiting in select(), where a signal usually lands
        wait_for(lambda: blocked_in_wait(os.getpid(), threading.main_thread().native_id))
        os.kill(os.getpid(), signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, on_signal)
    poker = threading.Thread(target=poke)
    try:
        poker.start()
        server.serve_forever(poll_interval=5)
    finally:
        poker.join(HANG_GUARD)
        signal.signal(signal.SIGUSR1, previous)
        server.server_close()
    assert handled == [signal.SIGUSR1]


def _close_from_a_signal_at_random(strategy: str, last: int) -> gearshift.Server:
    """Serve a busy loop in this (main) thread with a SIGPROF every millisecond of CPU; the
    ``last``-th signal's handler calls shutdown() and server_close(). Returns the server, after
    serve_forever() has returned."""
    server = gearshift.Server(LOCALHOST, LineHandler, strategy=strategy)
    stop = threading.Event()
    ticks = 0

    def client() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                ask(server.server_address, "echo busy")

    def on_tick(signum: int, frame: object) -> None:
        nonlocal ticks
        ticks += 1
        if ticks == last:
            signal.setitimer(signal.ITIMER_PROF, 0)
            server.shutdown()
            server.server_close()

    clients = [threading.Thread(target=client) for _ in range(2)]
    for thread in clients:
        thread.start()
    signal.signal(signal.SIGPROF, on_tick)
    signal.setitimer(signal.ITIMER_PROF, 0.001, 0.001)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        stop.set()
        for thread in clients:
            thread.join(HANG_GUARD)
        server.server_close()
    assert ticks >= last  # a signal already on its way when the timer stopped counts too
    return server


@pytest.mark.timeout(120)
@pytest.mark.parametrize("strategy", ["sync", "threadpool"])
def test_server_close_in_a_signal_handler_never_waits_for_a_lock_the_loop_holds(strategy: str) -> None:
    """Python runs a signal handler between any two bytecodes of the main thread, so also while
    the loop holds a lock (its own, around its idle deadlines; a strategy's): a server_close()
    there must not wait for it, or it waits for ever. Trials of a busy loop signalled every
    millisecond of CPU (SIGPROF: pytest-timeout owns SIGALRM) whose handler, at a random one of
    the signals, calls shutdown() and server_close(); when that close took the loop's locks in
    the handler, one trial in 30 to 130 hung, so 100 trials catch it in most runs of each case,
    and the two cases together in nearly all. A hang fails the test through its timeout."""
    rng = random.Random(20261203)
    previous = signal.getsignal(signal.SIGPROF)
    try:
        for _ in range(100):
            server = _close_from_a_signal_at_random(strategy, rng.randint(5, 40))
            assert server.closing and server.socket.fileno() == -1  # closed as the loop returned
    finally:
        signal.signal(signal.SIGPROF, previous)


@pytest.mark.timeout(20)
def test_a_signal_delivered_to_another_thread_still_stops_serve_forever_promptly():
    """The kernel may deliver a process's signal to any of its threads (a request's, one that
    forked); Python runs the handler on the main thread only, once it runs Python code again.
    The loop must wake for it, not sit in select() for its poll_interval, and must leave no
    wake-up descriptor behind (a signal would write to whatever socket reuses the number)."""
    server = gearshift.Server(LOCALHOST, LineHandler, strategy="thread")
    stopped = threading.Event()
    late = []
    prompt = 5.0  # against poll_interval=3600

    def poke() -> None:
        ask(server.server_address, "echo up")
        wait_for(lambda: blocked_in_wait(os.getpid(), threading.main_thread().native_id))
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)  # lands on this thread
        if not stopped.wait(prompt):
            late.append(True)
            server.shutdown()  # unstick the loop, for the assertion below

    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: server.shutdown())
    poker = threading.Thread(target=poke)
    try:
        poker.start()
        server.serve_forever(poll_interval=3600)
    finally:
        stopped.set()
        poker.join(HANG_GUARD)
        signal.signal(signal.SIGUSR1, previous)
        server.server_close()
    assert not late, f"serve_forever() was still waiting {prompt} s after the signal"
    assert signal.set_wakeup_fd(-1) == -1  # given back when the loop left


# -- resume_when_readable: connections handed back to the loop --------------------------------


class ResumingHandler(socketserver.BaseRequestHandler):
    """Reads one line, answers ``LINE THREAD-ID``, then gives the connection back to the loop."""

    idle_timeout: float | None = None
    instances = 0

    def handle(self):
        type(self).instances += 1
        line = read_line(self.request)
        if not line:
            return
        self.request.sendall(line.strip() + f" {threading.get_ident()}\n".encode())
        self.resumed = self.server.resume_when_readable(self.request, self.client_address, self.idle_timeout)
        assert self.resumed


def resuming(idle_timeout=None):
    return type("Resuming", (ResumingHandler,), {"idle_timeout": idle_timeout, "instances": 0})


def test_idle_timeout_closes_a_parked_connection():
    handler = resuming(idle_timeout=0.2)
    server = gearshift.Server(LOCALHOST, handler)
    with serve(server), connect(server.server_address) as client:
        client.sendall(b"hello\n")
        assert read_line(client).startswith(b"hello ")
        assert client.recv(100) == b""  # EOF once the idle timeout passes
        # the loop is still serving others
        with connect(server.server_address) as other:
            other.sendall(b"other\n")
            assert read_line(other).startswith(b"other ")


def test_idle_connection_without_timeout_stays_open_and_is_closed_by_server_close():
    handler = resuming(idle_timeout=None)
    server = gearshift.Server(LOCALHOST, handler)
    with serve(server), connect(server.server_address) as client:
        for i in range(3):
            client.sendall(f"req{i}\n".encode())
            assert read_line(client).startswith(f"req{i} ".encode())
        assert handler.instances == 3  # a new handler instance per request
        server.shutdown()
        server.server_close()
        assert client.recv(100) == b""


class HoldingHandler(socketserver.BaseRequestHandler):
    """Answers a line; after ``hold`` it keeps the connection until ``release`` is set, then
    gives it back to the loop: bytes the client sends meanwhile arrive while a handler holds a
    connection the loop resumed (and that stays registered in its selector)."""

    holding: threading.Event
    release: threading.Event

    def handle(self):
        line = read_line(self.request)
        if not line:
            return
        self.request.sendall(line.strip() + b" ok\n")
        if line.startswith(b"hold"):
            type(self).holding.set()
            assert type(self).release.wait(HANG_GUARD)
        assert self.server.resume_when_readable(self.request, self.client_address)


class TurnCounting(gearshift.Server):
    """Counts the loop's turns (service_actions runs once per turn)."""

    turns = 0
    spinning: threading.Event

    def service_actions(self):
        super().service_actions()
        self.turns += 1
        if self.turns > 50:
            self.spinning.set()


def _holding_server(strategy):
    handler = type("Holding", (HoldingHandler,), {"holding": threading.Event(), "release": threading.Event()})
    server = TurnCounting(LOCALHOST, handler, strategy=strategy)
    server.spinning = threading.Event()
    return server, handler


@pytest.mark.parametrize("strategy", ["thread", "threadpool"])
@pytest.mark.parametrize("then", ["send", "close"])
def test_bytes_arriving_while_a_handler_holds_a_resumed_connection(strategy, then):
    # The loop leaves a resumed connection registered while its handler runs (so handing it
    # back costs no system call); bytes or an EOF arriving meanwhile must neither spin the loop
    # (level-triggered readiness) nor be lost when the handler hands the connection back.
    server, handler = _holding_server(strategy)
    with serve(server, poll_interval=HANG_GUARD), connect(server.server_address) as client:
        client.sendall(b"first\n")
        assert read_line(client) == b"first ok\n"
        client.sendall(b"hold\n")  # read by a handler of the resumed connection
        assert read_line(client) == b"hold ok\n"
        assert handler.holding.wait(HANG_GUARD)
        if then == "send":
            client.sendall(b"next\n")
        else:
            client.shutdown(socket.SHUT_WR)
        # A spinning loop makes its 50 turns within milliseconds; an idle one makes none.
        assert not server.spinning.wait(0.5), f"the loop spun: {server.turns} turns"
        handler.release.set()
        if then == "send":
            assert read_line(client) == b"next ok\n"
        else:
            assert client.recv(100) == b""  # the handler read the EOF and closed


@pytest.mark.parametrize("strategy", IN_PROCESS_STRATEGIES + ["threadpool"])
def test_descriptors_of_closed_resumed_connections_are_reused_safely(strategy):
    # A connection closed by its handler after the loop resumed it must leave the selector
    # first: a new connection gets the same descriptor number, and must be watched afresh.
    server = gearshift.Server(LOCALHOST, StatefulHandler, strategy=strategy)
    with serve(server):
        for _ in range(20):
            with connect(server.server_address) as client:
                assert read_line_after(client, b"a\n") == b"a\n"
                assert read_line_after(client, b"b\n") == b"a b\n"  # resumed by the loop
            # closed by the client: the handler of the resumed connection reads EOF and closes
        with connect(server.server_address) as client:
            assert read_line_after(client, b"c\n") == b"c\n"


class PeekingHandler(socketserver.BaseRequestHandler):
    """Notes whether its resumed connection had bytes to read when the handler started, then
    answers one line and gives the connection back to the loop."""

    dispatched_empty = 0

    def handle(self):
        # Only a resumed connection (one the loop found readable) carries state; a new one is
        # dispatched when accepted, before its client need have sent anything.
        if self.server.resumed_state(self.request) is not None:
            try:
                self.request.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                type(self).dispatched_empty += 1
        line = read_line(self.request)
        if line:
            self.request.sendall(b"got " + line)
            self.server.resume_when_readable(self.request, self.client_address, state="resumed")


@pytest.mark.parametrize("strategy", ["thread", "threadpool"])
def test_a_resumed_connection_is_dispatched_only_with_bytes_to_read(strategy):
    # Readiness the selector reports for a connection while a handler still holds it (its
    # request not read yet) must not dispatch it again once that handler has handed it back.
    handler = type("Peeking", (PeekingHandler,), {"dispatched_empty": 0})
    server = gearshift.Server(LOCALHOST, handler, strategy=strategy)
    with serve(server):
        clients = [connect(server.server_address) for _ in range(10)]
        try:
            for round_ in range(30):
                for i, client in enumerate(clients):
                    client.sendall(f"{round_}-{i}\n".encode())
                for i, client in enumerate(clients):
                    assert read_line(client) == f"got {round_}-{i}\n".encode()
        finally:
            for client in clients:
                client.close()
    assert handler.dispatched_empty == 0


def test_wait_readable_ends_on_bytes_timeout_or_closing():
    # What a handler that keeps an idle connection itself (a forked child's) waits with.
    server = gearshift.Server(LOCALHOST, LineHandler)
    a, b = socket.socketpair()
    with a, b:
        try:
            assert server.wait_readable(a, 0.01) is False  # timed out
            b.sendall(b"x")
            assert server.wait_readable(a, HANG_GUARD) is True
            assert a.recv(1) == b"x"
            woken = threading.Event()
            results = []

            def waiter():
                woken.set()
                results.append(server.wait_readable(a, None))

            thread = threading.Thread(target=waiter)
            thread.start()
            assert woken.wait(HANG_GUARD)
            server.begin_closing()  # as a worker's signal handler would: no wait survives it
            thread.join(HANG_GUARD)
            assert results == [False]
            assert server.closing is True
            assert server.wait_readable(a, None) is False  # closing: no waiting at all
            b.sendall(b"y")  # bytes already there are a request in hand
            assert server.wait_readable(a, None) is True
        finally:
            server.server_close()
    assert server.socket.fileno() == -1  # begin_closing() did not make server_close() a no-op


def test_resume_when_readable_is_refused_by_a_closed_server():
    server = gearshift.Server(LOCALHOST, LineHandler)
    server.server_close()
    a, b = socket.socketpair()
    with a, b:
        assert server.resume_when_readable(a, "peer", 1.0) is False


class _State:
    """A resumed connection's state: what it has served (a plain object, to watch it with weakref)."""

    def __init__(self) -> None:
        self.lines: list[str] = []


class StatefulHandler(socketserver.BaseRequestHandler):
    """Reads one line and answers every line its connection has carried so far: the state that
    travels with the connection through resume_when_readable(state=) and resumed_state()."""

    def handle(self):
        state = self.server.resumed_state(self.request)
        if state is None:
            state = _State()
        line = read_line(self.request)
        if not line:
            return
        state.lines.append(line.strip().decode())
        self.request.sendall((" ".join(state.lines) + "\n").encode())
        assert self.server.resume_when_readable(self.request, self.client_address, None, state=state)


@pytest.mark.parametrize("strategy", IN_PROCESS_STRATEGIES)
def test_a_resumed_connection_gets_its_state_back(strategy):
    server = gearshift.Server(LOCALHOST, StatefulHandler, strategy=strategy)
    with serve(server), connect(server.server_address) as one, connect(server.server_address) as two:
        for word in ("a", "b", "c"):
            one.sendall(f"{word}\n".encode())
            assert read_line(one) == {"a": b"a\n", "b": b"a b\n", "c": b"a b c\n"}[word]
            two.sendall(f"x{word}\n".encode())  # interleaved: each connection has its own state
            assert read_line(two).split()[-1] == f"x{word}".encode()
        assert len(read_line_after(two, b"y\n").split()) == 4


def read_line_after(sock, data):
    sock.sendall(data)
    return read_line(sock)


def test_a_stdlib_handler_never_gets_the_state_and_the_connection_closes_as_usual():
    class OnceStateful(StatefulHandler):
        resumed = 0

        def handle(self):
            if type(self).resumed:  # a handler that does not ask for the state
                self.request.sendall(b"plain\n")
                return
            type(self).resumed += 1
            super().handle()

    server = gearshift.Server(LOCALHOST, OnceStateful)
    with serve(server), connect(server.server_address) as client:
        assert read_line_after(client, b"a\n") == b"a\n"
        assert read_line_after(client, b"b\n") == b"plain\n"
        assert closed_by_peer(client)
        assert wait_for(lambda: server.resumed_state(client) is None)


@pytest.mark.parametrize("how", ["client EOF", "idle timeout", "server_close"])
def test_the_state_is_released_with_its_connection(how):
    import gc
    import weakref

    states: list[weakref.ref[_State]] = []

    idle_timeout = 0.2 if how == "idle timeout" else None

    class Server(gearshift.Server):
        def resume_when_readable(self, request, client_address, timeout=None, state=None):
            states.append(weakref.ref(state))
            return super().resume_when_readable(request, client_address, idle_timeout, state)

    server = Server(LOCALHOST, StatefulHandler)
    with serve(server), connect(server.server_address) as client:
        assert read_line_after(client, b"a\n") == b"a\n"
        assert wait_for(lambda: states)
        if how == "client EOF":
            client.shutdown(socket.SHUT_WR)
        if how != "server_close":
            assert closed_by_peer(client)
            assert wait_for(lambda: gc.collect() is not None and states[0]() is None)
            return
    gc.collect()
    assert states[0]() is None


def test_handle_idle_timeout_gets_the_state():
    seen = []

    class Server(gearshift.Server):
        def resume_when_readable(self, request, client_address, timeout=None, state=None):
            return super().resume_when_readable(request, client_address, 0.1, state)

        def handle_idle_timeout(self, request, client_address):
            state = self.resumed_state(request)
            seen.append(state.lines)
            request.sendall(b"bye " + " ".join(state.lines).encode() + b"\n")
            super().handle_idle_timeout(request, client_address)

    server = Server(LOCALHOST, StatefulHandler)
    with serve(server), connect(server.server_address) as client:
        assert read_line_after(client, b"a\n") == b"a\n"
        assert read_line_after(client, b"b\n") == b"a b\n"
        assert read_line(client) == b"bye a b\n"
        assert closed_by_peer(client)
    assert seen == [["a", "b"]]


def test_handle_request_processes_one_connection_per_call_and_resumes_with_state():
    server = gearshift.Server(LOCALHOST, StatefulHandler)
    server.timeout = HANG_GUARD
    try:
        with connect(server.server_address) as one, connect(server.server_address) as two:
            one.sendall(b"a\n")
            two.sendall(b"b\n")
            server.handle_request()  # one of the two: the other waits in the backlog
            server.handle_request()
            assert read_line(one) == b"a\n" and read_line(two) == b"b\n"
            one.sendall(b"c\n")
            server.handle_request()  # the resumed connection, with its state
            assert read_line(one) == b"a c\n"
            server.timeout = 0.05
            timeouts = []
            server.handle_timeout = lambda: timeouts.append(1)
            server.handle_request()
            assert timeouts == [1]
    finally:
        server.server_close()


class _StopsBeforeItsLoop(gearshift.Strategy):
    """A supervisor-like strategy: shutdown() arrives on the serving thread before run_loop()."""

    name = "stops-before-its-loop"

    steps: list[str]

    def serve(self, run_loop):
        self.steps = []
        self.server.shutdown()  # as a signal handler on this thread would: must not wait for itself
        self.steps.append("shutdown returned")
        run_loop()
        self.steps.append("loop returned")

    def process_request(self, request, client_address):
        self.handle_connection(request, client_address)


@pytest.mark.timeout(10)
def test_shutdown_on_the_serving_thread_outside_the_loop_does_not_hang():
    with gearshift.Server(("127.0.0.1", 0), socketserver.BaseRequestHandler, strategy=_StopsBeforeItsLoop) as server:
        server.serve_forever(poll_interval=30)  # returns at once: the stop was recorded
        assert server.strategy.steps == ["shutdown returned", "loop returned"]


class _Logged(gearshift.Strategy):
    """An ``__init__`` behind a decorator: options are read through ``inspect.signature``."""

    name = "logged-test"

    @staticmethod
    def _logged(init):
        @functools.wraps(init)
        def wrapper(self, server, **options):
            return init(self, server, **options)

        return wrapper

    @_logged
    def __init__(self, server, *, level: int = 1, label: str) -> None:
        super().__init__(server)
        self.level, self.label = level, label


class _AnyOptions(gearshift.Strategy):
    name = "any-options-test"

    def __init__(self, server, **options) -> None:
        super().__init__(server)
        self.options = options


class _Plain(gearshift.Strategy):
    name = "plain-test"

    def __init__(self, server, positional=None, *, level: int = 1, label: str) -> None:
        super().__init__(server)


@pytest.mark.parametrize("strategy", [_Logged, _Plain])
def test_keyword_only_parameters_are_the_options(strategy):
    defaults = strategy.option_defaults()
    assert list(defaults) == ["level", "label"]
    assert defaults["level"] == 1
    assert repr(defaults["label"]) == "<required>"
    with pytest.raises(TypeError) as info:
        check_options(strategy, {"level": 2, "lable": "x"})
    assert "'lable'" in str(info.value) and "label, level" in str(info.value)
    check_options(strategy, {"level": 2, "label": "x"})


def test_an_unknown_option_suggests_a_close_name_and_lists_the_accepted_ones():
    with pytest.raises(TypeError) as info:
        gearshift.Server(LOCALHOST, LineHandler, strategy="thread", deamon_threads=True)
    assert str(info.value) == (
        "unexpected option 'deamon_threads' (did you mean 'daemon_threads'?): "
        "strategy 'thread' accepts: block_on_close, daemon_threads, max_threads"
    )
    with pytest.raises(TypeError, match="^unexpected options 'a', 'b': strategy 'sync' accepts no options$"):
        gearshift.Server(LOCALHOST, LineHandler, b=1, a=2)


def test_check_options_takes_the_options_of_a_layer_above_the_core():
    check_options(_Plain, {"label": "x", "colour": "red"}, ["colour", "size"], extra_label="paint options")
    with pytest.raises(TypeError) as info:
        check_options(_Plain, {"label": "x", "sise": 1}, ["colour", "size"], extra_label="paint options")
    assert str(info.value) == (
        "unexpected option 'sise' (did you mean 'size'?): strategy 'plain-test' accepts: label, level; "
        "paint options: colour, size"
    )
    with pytest.raises(TypeError, match="^option 'color' was renamed: use colour$"):
        check_options(_Plain, {"color": "red"}, ["colour"], renamed={"color": "colour"})
    with pytest.raises(TypeError, match="strategy 'plain-test' declares the option 'level', which is also one of "
                                        "the paint options"):
        check_options(_Plain, {}, ["level"], extra_label="paint options")


def test_a_strategy_taking_any_keyword_accepts_every_option():
    check_options(_AnyOptions, {"whatever": 1})
    with gearshift.Server(LOCALHOST, LineHandler, strategy=_AnyOptions, whatever=1) as server:
        assert server.strategy.options == {"whatever": 1}
