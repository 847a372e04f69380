"""The ``thread`` strategy: a thread per request, no memory of finished threads, bounded drain."""

from __future__ import annotations

import gc
import logging
import socketserver
import threading
import time
import weakref

import pytest
from core_helpers import HANG_GUARD, ask, connect, read_line, serve, wait_for

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
