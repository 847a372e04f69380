"""Write-behind in the core: a plain socketserver-style handler running in a thread hands a
large payload to the loop (``Server.write_behind``) and returns before a slow client has read
it; the loop writes it, in order, as the client reads, then does what the handler asked.

The payload is far larger than what the kernel buffers on a connection (the client's receive
buffer is made small; the server's send buffer grows to a few MB at most), so "the client has
not read it yet" really means bytes are waiting in gearshift.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from core_helpers import HANG_GUARD, serve, wait_for

from gearshift import Server

PAYLOAD = os.urandom(16 * 1024 * 1024)
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
CHUNK = 64 * 1024


class Writer(socketserver.BaseRequestHandler):
    """Writes PAYLOAD through the loop with the server's ``options``, records what happened."""

    server: Any

    def handle(self) -> None:
        server = self.server
        state = server.resumed_state(self.request)
        if state == "again":
            self.request.sendall(b"second turn\n")
            server.turns_done.set()
            return
        output = server.write_behind(self.request, self.client_address, **server.options)
        server.output = output
        if output is None:
            self.request.sendall(b"no write-behind here\n")
            server.returned.set()
            return
        try:
            for start in range(0, len(PAYLOAD), CHUNK):
                output.write(PAYLOAD[start:start + CHUNK])
                server.kept_after_write = max(server.kept_after_write, output.buffered)
        except OSError as exc:
            server.error = exc
        if server.park:
            server.resume_when_readable(self.request, self.client_address, HANG_GUARD, state="again")
        server.returned.set()


class WriterServer(Server):
    """Records when a handler's turn is over: ``returned`` is set inside the handler, before
    shutdown_request() hands what it left to the loop, which a test of server_close() needs."""

    turn_over: threading.Event

    def shutdown_request(self, request: socket.socket) -> None:
        super().shutdown_request(request)
        self.turn_over.set()


def make_server(strategy: str = "threadpool", **options: Any) -> Any:
    graceful_timeout = options.pop("graceful_timeout", None)
    server: Any = WriterServer(("127.0.0.1", 0), Writer, strategy, graceful_timeout=graceful_timeout,
                         **({"threads": 2} if strategy == "threadpool" else {}))
    server.options = {"timeout": HANG_GUARD, **options}
    server.output = None
    server.error = None
    server.kept_after_write = 0
    server.park = False
    server.returned = threading.Event()
    server.turns_done = threading.Event()
    server.turn_over = threading.Event()
    return server


def slow_client(address: Any) -> socket.socket:
    """A client that reads nothing until told to: a small receive buffer, so the kernel holds
    little of the response."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    sock.settimeout(HANG_GUARD)
    sock.connect(address)
    return sock


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(size - len(data), 1 << 20))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def read_all(sock: socket.socket) -> bytes:
    data = bytearray()
    try:
        while chunk := sock.recv(1 << 20):
            data += chunk
    except ConnectionResetError:
        pass
    return bytes(data)


@pytest.fixture
def spool_dir(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Temporary files in a directory of the test's own, to check that none is left."""
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    yield tmp_path
    assert list(tmp_path.iterdir()) == []


def test_the_handler_returns_before_the_client_reads_and_every_byte_arrives(spool_dir: Any) -> None:
    with serve(make_server(limit=64 * 1024 * 1024)) as server, slow_client(server.server_address) as client:
        assert server.returned.wait(HANG_GUARD), "the handler waited for the client"
        assert server.output.spool_peak > 0  # beyond `memory`, kept in a temporary file
        data = read_all(client)
        assert server.error is None
        assert len(data) == len(PAYLOAD)
        assert hashlib.sha256(data).hexdigest() == DIGEST
        assert wait_for(lambda: server.pending_writes == 0)


def test_a_write_waits_only_while_more_than_the_limit_is_kept(spool_dir: Any) -> None:
    limit = 256 * 1024
    with serve(make_server(limit=limit)) as server, slow_client(server.server_address) as client:
        # Over the limit only while the handler waits in write() for the loop.
        assert wait_for(lambda: server.output is not None and server.output.buffered > limit)
        assert not server.returned.is_set()
        data = read_all(client)
        assert server.returned.wait(HANG_GUARD)
        assert hashlib.sha256(data).hexdigest() == DIGEST
        assert server.kept_after_write <= limit


def test_the_connection_is_parked_for_its_next_turn_once_written(spool_dir: Any) -> None:
    server = make_server(limit=64 * 1024 * 1024)
    server.park = True
    with serve(server), slow_client(server.server_address) as client:
        assert server.returned.wait(HANG_GUARD)
        assert hashlib.sha256(read_exactly(client, len(PAYLOAD))).hexdigest() == DIGEST
        client.sendall(b"next\n")
        assert client.recv(100) == b"second turn\n"
        assert server.turns_done.wait(HANG_GUARD)


def test_a_client_that_stops_reading_is_closed_after_the_send_timeout(
    spool_dir: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gearshift")
    with serve(make_server(limit=64 * 1024 * 1024, timeout=0.3)) as server, \
            slow_client(server.server_address) as client:
        assert server.returned.wait(HANG_GUARD)
        assert wait_for(lambda: "did not take the response in time" in caplog.text), "the loop kept the slow client"
        assert wait_for(lambda: server.pending_writes == 0)
        assert len(read_all(client)) < len(PAYLOAD)  # then EOF: closed


def test_a_handler_waiting_on_a_client_too_slow_gets_the_timeout(spool_dir: Any) -> None:
    with serve(make_server(limit=256 * 1024, timeout=0.3)) as server, slow_client(server.server_address):
        assert server.returned.wait(HANG_GUARD)
        assert isinstance(server.error, TimeoutError)
        assert wait_for(lambda: server.pending_writes == 0)


def test_server_close_writes_what_finished_handlers_left(spool_dir: Any) -> None:
    server = make_server(limit=64 * 1024 * 1024, graceful_timeout=HANG_GUARD)
    received: list[bytes] = []
    with slow_client(server.server_address) as client:
        try:
            with serve(server):
                assert server.turn_over.wait(HANG_GUARD)
                assert server.pending_writes == 1
                reader = threading.Thread(target=lambda: received.append(read_all(client)))
                reader.start()
            # serve() has shut the loop down and called server_close(), which wrote the rest.
        finally:
            server.server_close()
        reader.join(HANG_GUARD)
        assert hashlib.sha256(received[0]).hexdigest() == DIGEST


def test_server_close_drops_what_is_unwritten_after_the_graceful_timeout(
    spool_dir: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    server = make_server(limit=64 * 1024 * 1024, graceful_timeout=0.3)
    with slow_client(server.server_address) as client:
        with serve(server):
            assert server.turn_over.wait(HANG_GUARD)
        assert "dropping the unwritten responses of 1 connection" in caplog.text
        assert server.pending_writes == 0
        assert len(read_all(client)) < len(PAYLOAD)


def test_no_write_behind_where_the_handler_runs_in_the_loop() -> None:
    with serve(make_server("sync")) as server, slow_client(server.server_address) as client:
        assert read_all(client) == b"no write-behind here\n"
        assert server.returned.wait(HANG_GUARD)


def test_write_behind_options_are_checked() -> None:
    with serve(make_server()) as server:
        sock_a, sock_b = socket.socketpair()
        with sock_a, sock_b:
            with pytest.raises(ValueError, match="limit"):
                server.write_behind(sock_a, "peer", limit=-1)
            with pytest.raises(ValueError, match="timeout"):
                server.write_behind(sock_a, "peer", timeout=0)
