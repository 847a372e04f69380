"""Slow downloads never hold a thread: under ``threadpool`` the application's thread hands what
the client has not read yet to the loop and goes on to the next request.

The responses are larger than the kernel buffers on a connection (the clients' receive buffers
are made small, the server's send buffer grows to 4 MB at most), so a client that does not read
really keeps bytes waiting in gearshift.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from core_helpers import HANG_GUARD, open_files_in, serve, wait_for

from gearshift import make_server
from gearshift.http.wsgi import FileWrapper

BIG = os.urandom(6 * 1024 * 1024)
DIGEST = hashlib.sha256(BIG).hexdigest()
CHUNK = 256 * 1024


def app(environ: dict[str, Any], start_response: Any) -> Any:
    path = environ["PATH_INFO"]
    if path == "/big":
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(BIG)))])
        return [BIG[i:i + CHUNK] for i in range(0, len(BIG), CHUNK)]
    if path == "/chunked":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return (BIG[i:i + CHUNK] for i in range(0, len(BIG), CHUNK))
    if path == "/file":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return FileWrapper(open(environ["big.file"], "rb"))  # noqa: SIM115 - closed by the server
    if path == "/echo":
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [body]
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
    return [b"ok\n"]


@pytest.fixture
def spool_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The server's temporary files go here, so that a test can see them open, and none is left."""
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(spool))
    yield spool
    assert wait_for(lambda: not open_files_in(spool)), "temporary files left open"
    assert list(spool.iterdir()) == []



@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    path = tmp_path / "big.bin"
    path.write_bytes(BIG)
    return path


def threadpool_server(big_file: Path, **options: Any) -> Any:
    server = make_server("127.0.0.1", 0, app, strategy="threadpool", threads=2, **options)
    server.base_environ["big.file"] = str(big_file)
    return server


class SlowClient:
    """A connection with a small receive buffer that sends ``request`` and then reads nothing
    until the test reads responses, all through one buffered file (pipelined responses)."""

    def __init__(self, port: int, request: bytes) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        self.sock.settimeout(HANG_GUARD)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(request)
        self.file = self.sock.makefile("rb")

    def makefile(self, *args: Any) -> Any:  # for http.client.HTTPResponse
        return _KeepOpen(self.file)

    def response(self, method: str = "GET") -> tuple[http.client.HTTPResponse, bytes]:
        response = http.client.HTTPResponse(self, method=method)  # type: ignore[arg-type]
        response.begin()
        return response, response.read()

    def read_to_end(self) -> bytes:
        data = bytearray()
        try:
            while chunk := self.file.read1(1 << 20):
                data += chunk
        except ConnectionResetError:
            pass
        return bytes(data)

    def __enter__(self) -> SlowClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class _KeepOpen:
    """The client's file, which HTTPResponse may not close (the next response follows)."""

    def __init__(self, file: Any) -> None:
        self._file = file

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    def close(self) -> None:
        pass


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode()


def test_fifty_slow_readers_do_not_hold_the_two_threads(spool_dir: Path, big_file: Path) -> None:
    # send_timeout is long, so that a thread held by a slow reader would be held past HANG_GUARD.
    server = threadpool_server(big_file, send_timeout=60.0)
    with serve(server):
        port = server.server_address[1]
        readers = [SlowClient(port, get("/big")) for _ in range(50)]
        try:
            # Every response was handed to the loop: no thread waits for its client.
            assert wait_for(lambda: server.pending_writes == 50), f"{server.pending_writes} handed off"
            assert open_files_in(spool_dir)  # beyond send_buffer, in temporary files
            with SlowClient(port, get("/small")) as normal:  # it reads at once
                response, body = normal.response()
                assert (response.status, body) == (200, b"ok\n")
            for reader in readers:
                response, body = reader.response()
                assert response.status == 200
                assert hashlib.sha256(body).hexdigest() == DIGEST
        finally:
            for reader in readers:
                reader.close()
        assert wait_for(lambda: server.pending_writes == 0)


def test_a_chunked_response_arrives_whole(spool_dir: Path, big_file: Path) -> None:
    server = threadpool_server(big_file)
    with serve(server), SlowClient(server.server_address[1], get("/chunked")) as client:
        assert wait_for(lambda: server.pending_writes == 1)
        response, body = client.response()
        assert response.getheader("Transfer-Encoding") == "chunked"
        assert hashlib.sha256(body).hexdigest() == DIGEST


def test_a_file_response_is_left_to_the_loop_without_a_copy(spool_dir: Path, big_file: Path) -> None:
    server = threadpool_server(big_file)
    with serve(server), SlowClient(server.server_address[1], get("/file")) as client:
        assert wait_for(lambda: server.pending_writes == 1)
        assert open_files_in(spool_dir) == []  # a range of the file itself, not a temporary copy
        response, body = client.response()
        assert response.getheader("Content-Length") == str(len(BIG))
        assert hashlib.sha256(body).hexdigest() == DIGEST


def test_head_of_a_big_response(spool_dir: Path, big_file: Path) -> None:
    server = threadpool_server(big_file)
    with serve(server), SlowClient(server.server_address[1], get("/big", "HEAD") + get("/small")) as client:
        response, body = client.response("HEAD")
        assert (response.status, response.getheader("Content-Length"), body) == (200, str(len(BIG)), b"")
        response, body = client.response()
        assert body == b"ok\n"


def test_keep_alive_and_pipelining_after_a_buffered_response(spool_dir: Path, big_file: Path) -> None:
    server = threadpool_server(big_file)
    port = server.server_address[1]
    # Pipelined: the second and third responses follow the first, buffered one, in order.
    with serve(server), SlowClient(port, get("/big") + get("/file") + get("/small")) as client:
        assert wait_for(lambda: server.pending_writes == 1)
        for _ in range(2):
            response, body = client.response()
            assert response.status == 200
            assert hashlib.sha256(body).hexdigest() == DIGEST
        assert client.response()[1] == b"ok\n"
        # The connection went back to the loop once written, and serves the next request.
        client.sock.sendall(get("/big"))
        response, body = client.response()
        assert hashlib.sha256(body).hexdigest() == DIGEST
        assert not response.will_close


def test_a_pipelined_100_continue_waits_behind_a_buffered_response(spool_dir: Path, big_file: Path) -> None:
    # The second request's head arrives with the first: its 100 Continue is due while the loop
    # still writes the first response, and must follow it, not cut into it.
    server = threadpool_server(big_file)
    post = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    with serve(server), SlowClient(server.server_address[1], get("/big") + post) as client:
        assert wait_for(lambda: server.pending_writes == 1)
        response, body = client.response()
        assert hashlib.sha256(body).hexdigest() == DIGEST
        assert client.file.readline() == b"HTTP/1.1 100 Continue\r\n" and client.file.readline() == b"\r\n"
        client.sock.sendall(b"hello")
        assert client.response("POST")[1] == b"hello"


def test_a_client_that_stops_reading_is_closed_and_its_temporary_file_freed(
    spool_dir: Path, big_file: Path,
) -> None:
    server = threadpool_server(big_file, send_timeout=1.0, min_send_rate=0)
    with serve(server), SlowClient(server.server_address[1], get("/big")) as client:
        assert wait_for(lambda: server.pending_writes == 1)
        assert wait_for(lambda: server.pending_writes == 0)
        assert wait_for(lambda: not open_files_in(spool_dir))
        assert len(client.read_to_end()) < len(BIG)


def test_server_close_delivers_buffered_responses(spool_dir: Path, big_file: Path) -> None:
    server = threadpool_server(big_file, graceful_timeout=HANG_GUARD)
    got: list[bytes] = []
    with SlowClient(server.server_address[1], get("/big")) as client:
        try:
            with serve(server):
                assert wait_for(lambda: server.pending_writes == 1)
                reader = threading.Thread(target=lambda: got.append(client.response()[1]))
                reader.start()
        finally:
            server.server_close()
        reader.join(HANG_GUARD)
        assert hashlib.sha256(got[0]).hexdigest() == DIGEST


def test_send_buffer_options_are_checked() -> None:
    with pytest.raises(ValueError, match="send_spool"):
        make_server("127.0.0.1", 0, app, send_spool=-1)
    with pytest.raises(ValueError, match="send_buffer"):
        make_server("127.0.0.1", 0, app, send_buffer=1.5)


def test_under_thread_the_request_thread_ends_before_the_client_has_read(spool_dir: Path, big_file: Path) -> None:
    server = make_server("127.0.0.1", 0, app, strategy="thread")
    with serve(server), SlowClient(server.server_address[1], get("/big")) as client:
        assert wait_for(lambda: server.pending_writes == 1 and server.strategy.active_threads == 0)
        response, body = client.response()
        assert hashlib.sha256(body).hexdigest() == DIGEST


def test_under_sync_the_handler_writes_itself(spool_dir: Path, big_file: Path) -> None:
    server = make_server("127.0.0.1", 0, app, strategy="sync")
    with serve(server), SlowClient(server.server_address[1], get("/big")) as client:
        response, body = client.response()
        assert hashlib.sha256(body).hexdigest() == DIGEST
        assert server.pending_writes == 0
