"""The ``threadpool`` strategy: a fixed set of threads, a bounded queue answered 503 past its
end, idle connections that hold no thread, a drain bounded by the graceful timeout."""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import resource
import signal
import socketserver
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from cli_helpers import BackgroundRequest, GearshiftProcess, holding_a_connection
from core_helpers import HANG_GUARD, ask, closed_by_peer, connect, serve, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st

import gearshift
from gearshift.core.strategy import OverloadLog
from gearshift.strategies import threadpool

pytestmark = pytest.mark.timeout(60)


class Gate:
    """A WSGI app: ``/wait`` blocks until ``release`` is set (counting the requests inside),
    ``/exit`` raises SystemExit, anything else answers at once. Every answer is JSON saying
    which thread served it and whether the environ says multithread."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.inside = 0
        self.most_inside = 0

    def __call__(self, environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/exit":
            raise SystemExit(3)
        if path == "/wait":
            with self._lock:
                self.inside += 1
                self.most_inside = max(self.most_inside, self.inside)
            try:
                self.release.wait(HANG_GUARD)
            finally:
                with self._lock:
                    self.inside -= 1
        body = json.dumps({"thread": threading.current_thread().name,
                           "multithread": environ["wsgi.multithread"]}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


def pool_server(app: Gate, **options):
    return gearshift.make_server("127.0.0.1", 0, app, strategy="threadpool", **options)


def task_count() -> int:
    """Threads of this process, from the kernel."""
    return len(os.listdir("/proc/self/task"))


def workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("gearshift-worker-")]


@contextlib.contextmanager
def clients(port: int, count: int) -> Iterator[list[http.client.HTTPConnection]]:
    connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=HANG_GUARD) for _ in range(count)]
    try:
        yield connections
    finally:
        for connection in connections:
            connection.close()


def answer(connection: http.client.HTTPConnection) -> tuple[int, dict[str, str], bytes]:
    response = connection.getresponse()
    return response.status, dict(response.getheaders()), response.read()


def test_the_bound_holds_under_five_times_more_slow_requests_than_threads():
    app = Gate()
    before = task_count()
    server = pool_server(app, threads=4)
    try:
        with serve(server), clients(server.server_address[1], 20) as connections:
            for connection in connections:
                connection.request("GET", "/wait")
            # all 20 are taken in (4 running, 16 queued), and no more than 4 threads run them
            assert wait_for(lambda: server.strategy.pending == 20 and app.inside == 4)
            assert len(workers()) == 4
            assert task_count() <= before + 4 + 1  # the workers and serve_forever's thread
            app.release.set()
            replies = [answer(connection) for connection in connections]
        assert [status for status, _, _ in replies] == [200] * 20
        served_by = {json.loads(body)["thread"] for _, _, body in replies}
        assert served_by <= {f"gearshift-worker-{n}" for n in range(1, 5)}
        assert all(json.loads(body)["multithread"] is True for _, _, body in replies)
        assert app.most_inside == 4
    finally:
        app.release.set()
    assert not workers()  # joined by server_close()


def test_past_max_queue_requests_get_503_with_retry_after_and_the_server_keeps_serving(caplog):
    app = Gate()
    server = pool_server(app, threads=1, max_queue=1)
    caplog.set_level(logging.INFO, logger="gearshift")
    try:
        # The clients close after the server: were they to close first, their EOFs would be
        # dispatched too, and refused if they came at once.
        with clients(server.server_address[1], 5) as (running, queued, over, over_too, later), serve(server):
            running.request("GET", "/wait")
            assert wait_for(lambda: app.inside == 1)
            queued.request("GET", "/wait")
            assert wait_for(lambda: server.strategy.pending == 2)
            for refused in (over, over_too):
                refused.request("GET", "/")
                status, headers, body = answer(refused)
                assert (status, headers["Retry-After"], headers["Connection"]) == (503, "1", "close"), body
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warnings) == 1, warnings  # once per burst, not once per request
            assert warnings[0].getMessage() == ("threadpool overloaded: every thread busy (threads=1) and the queue "
                                                "full (max_queue=1); refusing new requests until it clears")
            app.release.set()
            assert answer(running)[0] == 200 and answer(queued)[0] == 200
            later.request("GET", "/")
            assert answer(later)[0] == 200
        ended = [r.getMessage() for r in caplog.records if "overload over" in r.getMessage()]
        assert ended == ["threadpool overload over: refused 2 requests in " + ended[0].rsplit(" in ", 1)[1]]
        assert ended[0].endswith(" s")
    finally:
        app.release.set()


def test_the_end_of_an_overload_is_logged_while_serving(caplog, monkeypatch):
    monkeypatch.setattr(OverloadLog, "QUIET", 0.05)
    app = Gate()
    server = pool_server(app, threads=1, max_queue=0)
    caplog.set_level(logging.INFO, logger="gearshift")
    try:
        with serve(server), clients(server.server_address[1], 2) as (running, refused):
            running.request("GET", "/wait")
            assert wait_for(lambda: app.inside == 1)
            refused.request("GET", "/")
            assert answer(refused)[0] == 503
            # the loop's turns (service_actions) notice the quiet: no request or close needed
            assert wait_for(lambda: "threadpool overload over: refused 1 request in" in caplog.text)
            app.release.set()
            assert answer(running)[0] == 200
    finally:
        app.release.set()


def test_a_keep_alive_request_never_finds_its_own_thread_busy():
    # threads=1, max_queue=0: the next request on a connection may reach the loop before the
    # thread that answered the previous one has returned; that thread is free all the same.
    app = Gate()
    server = pool_server(app, threads=1, max_queue=0)
    with clients(server.server_address[1], 1) as (connection,), serve(server):
        statuses = []
        for _ in range(300):
            connection.request("GET", "/")
            statuses.append(answer(connection)[0])
    assert statuses == [200] * 300


def test_requests_queued_behind_waiting_ones_get_threads_because_the_interpreter_is_idle(monkeypatch):
    # The pool wakes a thread for a queued request when the interpreter has room, or when the
    # request has waited the switch interval: with the second rule out of reach, only the first
    # can give each waiting request a thread.
    monkeypatch.setattr(sys, "getswitchinterval", lambda: 3600.0)
    app = Gate()
    server = pool_server(app, threads=4)
    try:
        with serve(server), clients(server.server_address[1], 4) as connections:
            for connection in connections:
                connection.request("GET", "/wait")
            assert wait_for(lambda: app.inside == 4)
            app.release.set()
            assert [answer(connection)[0] for connection in connections] == [200] * 4
    finally:
        app.release.set()


def test_a_request_queued_behind_a_cpu_bound_one_gets_a_thread_while_it_runs(monkeypatch):
    # The other rule alone (the interpreter counted busy whatever it does, since another
    # program may take this machine's cores): the oldest queued request gets a thread once it
    # has waited the switch interval, so a spinning request cannot hold /quick up until it ends.
    monkeypatch.setattr(threadpool, "BUSY", 0.0)
    spinning, stop = threading.Event(), threading.Event()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/spin":
            spinning.set()
            deadline = time.monotonic() + HANG_GUARD
            while not stop.is_set() and time.monotonic() < deadline:
                sum(range(1000))
            spinning.clear()
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    server = gearshift.make_server("127.0.0.1", 0, app, strategy="threadpool", threads=2)
    try:
        with serve(server), clients(server.server_address[1], 2) as (spin, quick):
            spin.request("GET", "/spin")
            assert spinning.wait(HANG_GUARD)
            quick.request("GET", "/quick")
            assert answer(quick)[0] == 200
            assert spinning.is_set()  # answered while /spin still ran
            stop.set()
            assert answer(spin)[0] == 200
    finally:
        stop.set()


@settings(max_examples=12, deadline=None)
@given(threads=st.integers(1, 4), waiting=st.integers(0, 6), quick=st.integers(0, 8))
def test_every_request_of_a_burst_is_served_and_every_thread_ends_idle(threads, waiting, quick):
    app = Gate()
    server = pool_server(app, threads=threads)
    strategy = server.strategy
    try:
        with serve(server), clients(server.server_address[1], waiting + quick) as connections:
            for number, connection in enumerate(connections):
                connection.request("GET", "/wait" if number < waiting else "/")
            assert wait_for(lambda: app.inside == min(waiting, threads))
            app.release.set()
            assert [answer(connection)[0] for connection in connections] == [200] * (waiting + quick)
            # The bookkeeping settles: nothing pending, every thread idle and none counted running.
            assert wait_for(lambda: strategy.pending == 0 and len(strategy._idle) == threads
                            and strategy._running == 0 and not strategy._queue)
    finally:
        app.release.set()
    assert not workers()


@pytest.fixture
def many_descriptors() -> Iterator[None]:
    """Room for 1,000 connections, both ends of each in this process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096
    if soft != resource.RLIM_INFINITY and soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below {wanted}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.timeout(120)
def test_a_thousand_idle_keep_alive_connections_hold_no_thread(many_descriptors):
    app = Gate()
    before = task_count()
    server = pool_server(app, threads=4, keep_alive_timeout=60)
    with serve(server), clients(server.server_address[1], 1000) as idle:
        for connection in idle:
            connection.request("GET", "/")
            status, headers, _ = answer(connection)
            assert status == 200 and "close" not in headers.get("Connection", "")
        # every connection is open and idle: parked in the loop's selector, not in a thread
        assert wait_for(lambda: server.strategy.pending == 0)
        assert len(workers()) == 4 and task_count() <= before + 4 + 1
        with clients(server.server_address[1], 1) as (newcomer,):
            newcomer.request("GET", "/")
            assert answer(newcomer)[0] == 200
        # and the idle ones are still served when they speak again
        for connection in (idle[0], idle[499], idle[-1]):
            connection.request("GET", "/")
            assert answer(connection)[0] == 200


def test_drain_lets_queued_and_running_requests_finish():
    app = Gate()
    server = pool_server(app, threads=2, graceful_timeout=HANG_GUARD)
    closer = threading.Thread(target=server.server_close)
    try:
        with clients(server.server_address[1], 4) as connections:
            with serve(server):
                for connection in connections:
                    connection.request("GET", "/wait")
                assert wait_for(lambda: server.strategy.pending == 4 and app.inside == 2)
                server.shutdown()
                closer.start()  # server_close() waits for the four requests
                assert wait_for(lambda: server.closing)
                assert closer.is_alive()
                app.release.set()
                replies = [answer(connection) for connection in connections]
                closer.join(HANG_GUARD)
                assert not closer.is_alive()
            # the last of their connections: the server is closing
            assert [(status, headers["Connection"]) for status, headers, _ in replies] == [(200, "close")] * 4
    finally:
        app.release.set()
        if closer.is_alive():
            closer.join(HANG_GUARD)
    assert not workers()


def test_after_the_drain_timeout_queued_requests_get_503_and_running_ones_are_abandoned(caplog):
    app = Gate()
    server = pool_server(app, threads=1, graceful_timeout=0.2)
    try:
        with clients(server.server_address[1], 2) as (stuck, queued):
            with serve(server):
                stuck.request("GET", "/wait")
                assert wait_for(lambda: app.inside == 1)
                queued.request("GET", "/")
                assert wait_for(lambda: server.strategy.pending == 2)
                server.shutdown()
                with caplog.at_level(logging.WARNING, logger="gearshift"):
                    began = time.monotonic()
                    server.server_close()
                    took = time.monotonic() - began
                assert took < HANG_GUARD / 2, f"server_close() took {took:.1f} s with graceful_timeout=0.2"
                status, headers, _ = answer(queued)
                assert (status, headers["Retry-After"]) == (503, "1")
                warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
                assert warnings == ["drain timeout (0.2 s) passed; abandoning 1 request still running "
                                    "and refusing 1 still queued"]
                # the abandoned request still runs, and finishes if it can
                assert len(workers()) == 1
                app.release.set()
                assert answer(stuck)[0] == 200
            assert wait_for(lambda: not workers())  # its worker ends once its request is done
    finally:
        app.release.set()


def test_handle_request_without_serve_forever():
    app = Gate()
    with pool_server(app, threads=2) as server, clients(server.server_address[1], 1) as (connection,):
        assert not workers()  # started by the first request, not by the constructor
        connection.request("GET", "/", headers={"Connection": "close"})
        server.handle_request()  # accepts and dispatches; a worker answers
        status, _, body = answer(connection)
        assert status == 200 and json.loads(body)["thread"].startswith("gearshift-worker-")
        assert len(workers()) == 2
    assert not workers()


def test_a_handler_that_raises_system_exit_does_not_shrink_the_pool(caplog):
    class Exiting(socketserver.StreamRequestHandler):
        def handle(self):
            line = self.rfile.readline()
            if line == b"exit\n":
                raise SystemExit(3)
            self.wfile.write(threading.current_thread().name.encode() + b"\n")

    server = gearshift.Server(("127.0.0.1", 0), Exiting, strategy="threadpool", threads=1)
    with serve(server):
        with connect(server.server_address) as exiting:
            exiting.sendall(b"exit\n")
            assert closed_by_peer(exiting)
        assert ask(server.server_address, "again") == "gearshift-worker-1"
    assert "a request raised a BaseException in gearshift-worker-1; the thread serves on" in caplog.text


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"threads": 0}, "threads must be a whole number >= 1, not 0"),
        ({"threads": True}, "threads must be a whole number >= 1, not True"),
        ({"max_queue": -1}, "max_queue must be a whole number >= 0 or None for no limit, not -1"),
        ({"max_queue": 1.5}, "max_queue must be a whole number >= 0 or None for no limit, not 1.5"),
    ],
)
def test_bad_options_are_refused_naming_the_option(options, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        pool_server(Gate(), **options)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("strategy", ["threadpool", "thread"])
def test_the_command_exits_after_the_drain_timeout_whatever_a_request_does(strategy):
    with GearshiftProcess(["-b", "127.0.0.1:0", "-s", strategy, "--graceful-timeout", "0.5"]) as command:
        address = command.address()
        stuck = BackgroundRequest(address, "/slow?seconds=30")
        assert wait_for(lambda: holding_a_connection(command.pid, address[1]), timeout=HANG_GUARD)
        command.send(signal.SIGTERM)
        # far less than the 30 s the request takes: the process does not wait for it
        assert command.wait(HANG_GUARD) == 0, command.stderr
        stuck.join(HANG_GUARD)
    assert "drain timeout (0.5 s) passed; abandoning 1 request" in command.stderr
    assert "gearshift 0.1.0: stopped" in command.stderr and "Traceback" not in command.stderr
    assert stuck.result is None  # cut off with the process
