"""The ``thread`` strategy: a thread per request, no memory of finished threads, bounded drain."""

from __future__ import annotations

import contextlib
import gc
import http.client
import json
import logging
import socketserver
import subprocess
import sys
import threading
import time
import weakref

import pytest
from core_helpers import HANG_GUARD, ask, closed_by_peer, connect, read_line, serve, wait_for

import gearshift

pytestmark = pytest.mark.timeout(30)

LOCALHOST = ("127.0.0.1", 0)


@pytest.mark.timeout(60)
def test_finished_threads_are_not_retained():
    refs: list[weakref.ref] = []

    class Recording(socketserver.StreamRequestHandler):
        def handle(self):
            refs.append(weakref.ref(threading.current_thread()))
            self.wfile.write(self.rfile.readline())

    requests = 1500
    server = gearshift.Server(LOCALHOST, Recording, strategy="thread")
    with serve(server):
        for i in range(requests):
            assert ask(server.server_address, f"r{i}") == f"r{i}"
        assert len(refs) == requests
        # Each thread drops itself from the strategy's bookkeeping as it ends ...
        assert wait_for(lambda: server.strategy.active_threads == 0)

        # ... and once the last ones have really finished, nothing keeps a Thread object alive.
        def all_dead() -> bool:
            gc.collect()
            return all(ref() is None for ref in refs)

        assert wait_for(all_dead, interval=0.05), (
            f"{sum(ref() is not None for ref in refs)} of {requests} finished Thread objects retained"
        )


def test_requests_run_concurrently_and_active_threads_counts_them():
    inside = threading.Barrier(6)  # 5 handlers and the test
    release = threading.Event()

    class Blocking(socketserver.StreamRequestHandler):
        def handle(self):
            line = self.rfile.readline()
            inside.wait(HANG_GUARD)  # only passes if 5 handlers run at the same time
            release.wait(HANG_GUARD)
            self.wfile.write(line)

    server = gearshift.Server(LOCALHOST, Blocking, strategy="thread")
    replies: list[str] = []
    with serve(server):
        clients = [
            threading.Thread(target=lambda i=i: replies.append(ask(server.server_address, f"c{i}")))
            for i in range(5)
        ]
        for client in clients:
            client.start()
        try:
            inside.wait(HANG_GUARD)
            assert server.strategy.active_threads == 5
            names = {t.name for t in threading.enumerate() if t.name.startswith("gearshift-request-")}
            assert len(names) == 5
        finally:
            release.set()
            for client in clients:
                client.join(HANG_GUARD)
        assert wait_for(lambda: server.strategy.active_threads == 0)
    assert sorted(replies) == sorted(f"c{i}" for i in range(5))


class Held(socketserver.StreamRequestHandler):
    """Answers "started", then waits (at most 5 s) for the class's ``release`` event."""

    started: threading.Event
    release: threading.Event
    threads: list

    def handle(self):
        self.threads.append(threading.current_thread())
        self.rfile.readline()
        self.wfile.write(b"started\n")
        self.wfile.flush()
        self.started.set()
        self.release.wait(5)
        self.wfile.write(b"released\n")


def held_handler():
    return type("Held", (Held,), {"started": threading.Event(), "release": threading.Event(), "threads": []})


@pytest.mark.timeout(15)
def test_drain_timeout_abandons_a_slow_request_and_logs_a_warning(caplog):
    handler = held_handler()
    server = gearshift.Server(LOCALHOST, handler, strategy="thread", graceful_timeout=0.2)
    with serve(server), connect(server.server_address) as client:
        try:
            client.sendall(b"go\n")
            assert read_line(client) == b"started\n"
            server.shutdown()
            with caplog.at_level(logging.WARNING, logger="gearshift"):
                began = time.monotonic()
                server.server_close()
                elapsed = time.monotonic() - began
            assert elapsed < 4, f"server_close() waited {elapsed:.1f} s despite graceful_timeout=0.2"
            warnings = [r for r in caplog.records if r.name == "gearshift" and r.levelno == logging.WARNING]
            assert len(warnings) == 1
            assert "drain timeout" in warnings[0].getMessage()
            assert "abandoning 1 request thread" in warnings[0].getMessage()
            assert handler.threads[0].is_alive()
        finally:
            handler.release.set()
            for thread in handler.threads:
                thread.join(HANG_GUARD)
        assert read_line(client) == b"released\n"  # the abandoned request still finishes


@pytest.mark.parametrize("options", [{"daemon_threads": True}, {"block_on_close": False}])
def test_server_close_does_not_wait_for_daemon_threads_or_without_block_on_close(options, caplog):
    handler = held_handler()
    server = gearshift.Server(LOCALHOST, handler, strategy="thread", **options)
    with serve(server), connect(server.server_address) as client:
        try:
            client.sendall(b"go\n")
            assert read_line(client) == b"started\n"
            with caplog.at_level(logging.WARNING, logger="gearshift"):
                server.shutdown()
                server.server_close()  # returns although the handler is still waiting
            assert handler.threads[0].is_alive()
            assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        finally:
            handler.release.set()
            for thread in handler.threads:
                thread.join(HANG_GUARD)
        assert read_line(client) == b"released\n"


def test_server_close_waits_for_non_daemon_threads_by_default():
    handler = held_handler()
    server = gearshift.Server(LOCALHOST, handler, strategy="thread")
    with serve(server), connect(server.server_address) as client:
        client.sendall(b"go\n")
        assert read_line(client) == b"started\n"
        server.shutdown()
        releaser = threading.Timer(0.2, handler.release.set)
        releaser.start()
        server.server_close()
        releaser.join(HANG_GUARD)
        assert not handler.threads[0].is_alive()
        assert read_line(client) == b"released\n"


class Resuming(socketserver.BaseRequestHandler):
    def handle(self):
        line = read_line(self.request)
        if not line:
            return
        self.request.sendall(b"got " + line)
        self.server.resume_when_readable(self.request, self.client_address, None)


def test_idle_connections_between_requests_hold_no_thread():
    server = gearshift.Server(LOCALHOST, Resuming, strategy="thread")
    clients = []
    with serve(server):
        try:
            for _ in range(10):
                clients.append(connect(server.server_address))
            for round_ in range(3):
                for i, client in enumerate(clients):
                    client.sendall(f"{round_}-{i}\n".encode())
                for i, client in enumerate(clients):
                    assert read_line(client) == f"got {round_}-{i}\n".encode()
                # all 10 connections are open and idle: they sit in the selector, not in threads
                assert wait_for(lambda: server.strategy.active_threads == 0)
                assert not [t for t in threading.enumerate() if t.name.startswith("gearshift-request-")]
            server.shutdown()
            server.server_close()  # closes the parked connections
            for client in clients:
                assert client.recv(100) == b""
        finally:
            for client in clients:
                client.close()


# -- max_threads ---------------------------------------------------------------------------------


def test_past_max_threads_requests_get_503_and_the_server_keeps_serving(caplog):
    inside = threading.Semaphore(0)
    release = threading.Event()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/wait":
            inside.release()
            release.wait(HANG_GUARD)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    def get(connection):
        response = connection.getresponse()
        return response.status, response.getheader("Retry-After"), response.read()

    caplog.set_level(logging.INFO, logger="gearshift")
    server = gearshift.make_server("127.0.0.1", 0, app, strategy="thread", max_threads=2)
    port = server.server_address[1]
    connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=HANG_GUARD) for _ in range(5)]
    try:
        with serve(server):
            for connection in connections[:2]:
                connection.request("GET", "/wait")
                assert inside.acquire(timeout=HANG_GUARD)
            for connection in connections[2:4]:
                connection.request("GET", "/")
                status, retry_after, _ = get(connection)
                assert (status, retry_after) == (503, "1")
            assert server.strategy.active_threads == 2
            warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            assert warnings == ["thread overloaded: every thread busy (max_threads=2); refusing new requests "
                                "until it clears"]
            release.set()
            assert [get(c)[0] for c in connections[:2]] == [200, 200]
            assert wait_for(lambda: server.strategy.active_threads == 0)
            connections[4].request("GET", "/")
            assert get(connections[4])[0] == 200
    finally:
        release.set()
        for connection in connections:
            connection.close()
    assert "thread overload over: refused 2 requests in" in caplog.text


def test_a_keep_alive_request_never_finds_its_own_thread_counted_against_max_threads():
    # The next request on a connection may reach the loop before the thread that answered the
    # previous one has ended; that thread is done with its request all the same.
    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    server = gearshift.make_server("127.0.0.1", 0, app, strategy="thread", max_threads=1)
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=HANG_GUARD)
    statuses = []
    try:
        with serve(server):
            for _ in range(300):
                connection.request("GET", "/")
                response = connection.getresponse()
                response.read()
                statuses.append(response.status)
    finally:
        connection.close()
    assert statuses == [200] * 300


@pytest.mark.parametrize("value", [0, -1, 2.0, True])
def test_max_threads_must_be_a_whole_number_or_none(value):
    message = rf"^max_threads must be a whole number >= 1 or None for no limit, not {value!r}$"
    with pytest.raises(ValueError, match=message):
        gearshift.Server(LOCALHOST, socketserver.BaseRequestHandler, strategy="thread", max_threads=value)


# -- what keeps the process alive at exit ----------------------------------------------------------

EXITING_SERVER = """
import json, socketserver, sys, threading, atexit
import gearshift

class Held(socketserver.StreamRequestHandler):
    def handle(self):
        self.rfile.readline()
        self.wfile.write(b"started\\n")
        self.wfile.flush()
        self.wfile.write(self.rfile.readline().replace(b"release", b"released"))

# registered after gearshift's own exit hook, so it runs before it (atexit is last in, first out)
atexit.register(lambda: print("exiting", flush=True))
options = json.loads(sys.argv[1])
later = options.pop("later", {})
server = gearshift.Server(("127.0.0.1", 0), Held, strategy="thread", **options)
for name, value in later.items():  # what gearshift.socketserver does when its attribute is set
    setattr(server.strategy, name, value)
threading.Thread(target=server.serve_forever, daemon=True).start()
print(server.server_address[1], flush=True)
sys.stdin.readline()
server.shutdown()
server.server_close()
print("closed", flush=True)
"""


@contextlib.contextmanager
def exiting_server(options):
    proc = subprocess.Popen([sys.executable, "-c", EXITING_SERVER, json.dumps(options)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        with connect(("127.0.0.1", port)) as client:
            client.sendall(b"go\n")
            assert read_line(client) == b"started\n"
            proc.stdin.write("close\n")
            proc.stdin.flush()
            assert proc.stdout.readline() == "closed\n"
            yield proc, client
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()


@pytest.mark.parametrize("options", [{"graceful_timeout": 0.2}, {"daemon_threads": True},
                                     {"later": {"daemon_threads": True}}],
                         ids=["abandoned-after-the-drain-timeout", "daemon_threads", "daemon_threads-set-later"])
def test_a_request_thread_nobody_waits_for_does_not_keep_the_process_alive(options):
    with exiting_server(options) as (proc, client):
        assert proc.wait(HANG_GUARD) == 0  # although the request never ends
        assert closed_by_peer(client)


def test_without_block_on_close_the_process_still_waits_for_request_threads_at_exit():
    # socketserver's daemon_threads=False: server_close() returns at once, the interpreter waits
    with exiting_server({"block_on_close": False}) as (proc, client):
        assert proc.stdout.readline() == "exiting\n"  # the interpreter is exiting ...
        client.sendall(b"release\n")
        assert read_line(client) == b"released\n"  # ... and the request thread still runs
        assert proc.wait(HANG_GUARD) == 0
