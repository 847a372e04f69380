"""The ``sync`` strategy: requests run in the loop itself, one at a time."""

from __future__ import annotations

import socketserver
import threading
import time

import pytest
from core_helpers import HANG_GUARD, ask, connect, read_line, serve

import gearshift

pytestmark = pytest.mark.timeout(20)

LOCALHOST = ("127.0.0.1", 0)


def test_requests_run_one_at_a_time_on_the_loop_thread():
    lock = threading.Lock()
    state = {"active": 0, "max": 0}
    threads = set()

    class Counting(socketserver.StreamRequestHandler):
        def handle(self):
            with lock:
                state["active"] += 1
                state["max"] = max(state["max"], state["active"])
            threads.add(threading.get_ident())
            line = self.rfile.readline()
            time.sleep(0.01)  # a handler that takes a while, so overlapping requests would show
            with lock:
                state["active"] -= 1
            self.wfile.write(line)

    server = gearshift.Server(LOCALHOST, Counting, strategy="sync")
    replies = []
    with serve(server):
        clients = [
            threading.Thread(target=lambda i=i: replies.append(ask(server.server_address, f"c{i}")))
            for i in range(10)
        ]
        for client in clients:
            client.start()
        for client in clients:
            client.join(HANG_GUARD)
    assert sorted(replies) == sorted(f"c{i}" for i in range(10))
    assert state["max"] == 1
    assert len(threads) == 1 and threading.get_ident() not in threads


@pytest.mark.timeout(10)
def test_shutdown_from_inside_a_handler_does_not_deadlock():
    class Stopping(socketserver.StreamRequestHandler):
        def handle(self):
            line = self.rfile.readline()
            if line.strip() == b"stop":
                self.server.shutdown()  # on the loop's own thread: only asks the loop to stop
            self.wfile.write(b"ok " + line)

    server = gearshift.Server(LOCALHOST, Stopping, strategy="sync")
    thread = threading.Thread(target=server.serve_forever, args=(0.05,))
    thread.start()
    try:
        assert ask(server.server_address, "hello") == "ok hello"
        assert ask(server.server_address, "stop") == "ok stop"
        thread.join(HANG_GUARD)
        assert not thread.is_alive()
    finally:
        server.shutdown()
        thread.join(HANG_GUARD)
        server.server_close()


class Resuming(socketserver.BaseRequestHandler):
    """Reads one line, answers it with the serving thread, gives the connection back to the loop."""

    def handle(self):
        line = read_line(self.request)
        if not line:
            return
        self.request.sendall(line.strip() + f" {threading.get_ident()}\n".encode())
        self.server.resume_when_readable(self.request, self.client_address, None)


def test_resume_when_readable_interleaves_clients_on_one_loop():
    server = gearshift.Server(LOCALHOST, Resuming, strategy="sync")
    with serve(server), connect(server.server_address) as a, connect(server.server_address) as b:
        served_by = set()
        # Were the loop still inside A's handler waiting for A's next line, B would never be answered.
        for client, text in [(a, "a1"), (b, "b1"), (a, "a2"), (b, "b2"), (a, "a3"), (b, "b3")]:
            client.sendall(text.encode() + b"\n")
            answer, ident = read_line(client).split()
            assert answer == text.encode()
            served_by.add(ident)
        assert len(served_by) == 1  # all on the one loop thread


def test_resume_when_readable_with_handle_request():
    server = gearshift.Server(LOCALHOST, Resuming, strategy="sync")
    with server, connect(server.server_address) as a, connect(server.server_address) as b:
        a.sendall(b"a1\n")
        server.handle_request()
        assert read_line(a).startswith(b"a1 ")
        b.sendall(b"b1\n")
        server.handle_request()
        assert read_line(b).startswith(b"b1 ")
        a.sendall(b"a2\n")
        server.handle_request()  # a resumed connection counts as one request
        assert read_line(a).startswith(b"a2 ")


def test_a_resumed_client_that_disconnects_is_closed_quietly():
    server = gearshift.Server(LOCALHOST, Resuming, strategy="sync")
    with serve(server):
        with connect(server.server_address) as client:
            client.sendall(b"x\n")
            assert read_line(client).startswith(b"x ")
        # closed while parked: the loop hands it to a handler that reads EOF and closes it
        assert ask(server.server_address, "still-serving").startswith("still-serving ")


def test_sync_has_no_options():
    assert gearshift.available_strategies()["sync"].option_defaults() == {}
    server = gearshift.Server(LOCALHOST, Resuming, strategy="sync")
    with server:
        assert server.strategy.multithread is False and server.strategy.multiprocess is False
