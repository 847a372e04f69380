"""``threadpool`` receives each request in the loop before a thread is spent on it.

The loop reads the head and, by default, the whole body ahead (in memory up to
``max_body_in_memory``, in a temporary file past it), so slow clients wait in the selector and
never hold one of the pool's threads; ``wsgi.input`` then never waits for the network. With
``buffer_request_body=False`` only the head is read ahead and the body streams to the app.

Servers run in this process (``threads=2``) so that a test can see the app's calls, the log and
the temporary files; every temporary file the server opens is under a directory of the test's
own (``tempfile.tempdir``), so that "no file left" can be checked from ``/proc/self/fd``.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from client import read_until_closed, serving, status_of, tls_contexts, wait_until
from core_helpers import open_files_in
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gearshift
from gearshift.http.connection import WSGIRequestHandler
from gearshift.http.wsgi import InputStream, SpooledInput

pytestmark = pytest.mark.timeout(120)

#: Bound on how long a normal client may wait while slow clients hold connections: far beyond a
#: normal answer on a loaded machine, far below the timeouts that would free a held thread.
PROMPT = 15.0
#: Timeouts that never fire within a test unless the test means them to.
PATIENT = {"head_timeout": 300.0, "body_timeout": 300.0, "min_body_rate": 0}
#: A small memory limit, so that bodies of a few kilobytes are spooled.
IN_MEMORY = 1024


class Calls:
    """What the echo app saw (each call's wsgi.input type, an event per call), and how many
    turns the handler ran, each in one of the pool's threads."""

    def __init__(self) -> None:
        self.inputs: list[type] = []
        self.called = threading.Event()
        self.lock = threading.Lock()
        self.turns = 0

    def handler(self) -> type[WSGIRequestHandler]:
        calls = self

        class CountingHandler(WSGIRequestHandler):
            def handle(self) -> None:
                with calls.lock:
                    calls.turns += 1
                super().handle()

        return CountingHandler


def echo_app(calls: Calls):  # type: ignore[no-untyped-def]
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        stream = environ["wsgi.input"]
        with calls.lock:
            calls.inputs.append(type(stream))
        calls.called.set()
        path = environ["PATH_INFO"]
        if path == "/fail":
            stream.read(10)
            raise RuntimeError("the app fails after reading part of the body")
        query = environ["QUERY_STRING"]
        if query.startswith("read="):  # in pieces of that size
            pieces = iter(lambda: stream.read(int(query[5:])), b"")
            body = b"".join(pieces)
        elif query == "lines":
            body = b"".join(iter(stream.readline, b""))
        else:
            body = stream.read()
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        if path == "/sha":
            return [hashlib.sha256(body).hexdigest().encode()]
        return [body]

    return app



@pytest.fixture
def spool_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    directory = tmp_path / "spool"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    yield directory
    assert wait_until(lambda: not open_files_in(directory), PROMPT), open_files_in(directory)
    assert not list(directory.iterdir())


@contextmanager
def threadpool(calls: Calls, **options: Any) -> Iterator[gearshift.WSGIServer]:
    options = {**PATIENT, "max_body_in_memory": IN_MEMORY, **options}
    server = gearshift.make_server("127.0.0.1", 0, echo_app(calls), strategy="threadpool", threads=2,
                                   request_handler=calls.handler(), **options)
    with serving(server):
        yield server


def connect(server: gearshift.WSGIServer) -> socket.socket:
    return socket.create_connection(server.server_address[:2], timeout=PROMPT)


def post(target: str, body: bytes, *, close: bool = True, extra: str = "") -> tuple[bytes, bytes]:
    """A POST head for ``body``, and the body."""
    head = (f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}"
            + ("Connection: close\r\n" if close else "") + "\r\n")
    return head.encode(), body


def body_of(response: bytes) -> bytes:
    return response.partition(b"\r\n\r\n")[2]


def normal_request(server: gearshift.WSGIServer) -> bytes:
    with connect(server) as sock:
        sock.sendall(b"%b%b" % post("/", b"hello"))
        return read_until_closed(sock)


class Trickler:
    """Sends ``data`` on many connections, one byte each in turn, from a thread of its own,
    until stopped; the slow clients a test keeps going while it checks something else."""

    def __init__(self, socks: list[socket.socket], data: bytes) -> None:
        self.socks = socks
        self.data = data
        self.sent = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while self.sent < len(self.data) and not self.stop.is_set():
            byte = self.data[self.sent:self.sent + 1]
            try:
                for sock in self.socks:
                    sock.sendall(byte)
            except OSError:  # the server cut a slow client off
                return
            self.sent += 1
            self.stop.wait(0.02)  # the slowness being tested, not a synchronisation

    def __enter__(self) -> Trickler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(PROMPT)


SLOW = 20  # slow clients: ten times the pool's threads


def test_slowloris_heads_take_no_thread(spool_dir: Path) -> None:
    calls = Calls()
    with threadpool(calls) as server, ExitStack() as stack:
        socks = [stack.enter_context(connect(server)) for _ in range(SLOW)]
        head, _ = post("/", b"")
        with Trickler(socks, head[:-4]) as trickler:
            assert wait_until(lambda: trickler.sent >= 3, PROMPT)
            # Every slow connection has started its head and none has finished it: none has
            # been given to a thread, not even for a turn, and a normal client is served.
            response = normal_request(server)
            assert status_of(response) == 200 and body_of(response) == b"hello"
            assert calls.turns == 1
        for sock in socks:  # the slow heads end: each is served
            sock.sendall(head[trickler.sent:])
        for sock in socks:
            assert status_of(read_until_closed(sock)) == 200


def test_slow_bodies_take_no_thread(spool_dir: Path) -> None:
    calls = Calls()
    body = bytes(range(256)) * 20  # past max_body_in_memory: spooled
    with threadpool(calls) as server, ExitStack() as stack:
        socks = [stack.enter_context(connect(server)) for _ in range(SLOW)]
        head, _ = post("/sha", body)
        for sock in socks:
            sock.sendall(head + body[:IN_MEMORY + 100])  # spooling has begun
        with Trickler(socks, body[IN_MEMORY + 100:]) as trickler:
            assert wait_until(lambda: trickler.sent >= 3, PROMPT)
            assert wait_until(lambda: len(server.spooling) == SLOW, PROMPT)
            response = normal_request(server)
            assert status_of(response) == 200 and body_of(response) == b"hello"
            assert calls.inputs == [InputStream], "an app ran before its body had arrived"
            assert calls.turns == 1  # and no thread waited for a body
        for sock in socks:
            sock.sendall(body[IN_MEMORY + 100 + trickler.sent:])
        expected = hashlib.sha256(body).hexdigest().encode()
        for sock in socks:
            response = read_until_closed(sock)
            assert status_of(response) == 200 and body_of(response) == expected
        assert calls.inputs.count(SpooledInput) == SLOW
    assert not server.spooling


def access_log(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gearshift.access"]


def test_a_head_too_slow_gets_408_and_an_access_line(spool_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    calls = Calls()
    caplog.set_level(logging.INFO, logger="gearshift.access")
    with threadpool(calls, head_timeout=0.5) as server, connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost")
        response = read_until_closed(sock)
        assert status_of(response) == 408
        assert wait_until(lambda: any('"-" 408' in line for line in access_log(caplog)), PROMPT)
    assert not calls.inputs


def test_a_body_too_slow_gets_408_and_an_access_line(spool_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    calls = Calls()
    caplog.set_level(logging.INFO, logger="gearshift.access")
    body = b"x" * (IN_MEMORY * 3)
    with threadpool(calls, body_timeout=0.5) as server, connect(server) as sock:
        head, _ = post("/upload", body)
        sock.sendall(head + body[: IN_MEMORY * 2])  # spooling, then nothing more
        assert wait_until(lambda: server.spooling, PROMPT)
        response = read_until_closed(sock)
        assert status_of(response) == 408
        assert wait_until(lambda: any('"POST /upload HTTP/1.1" 408' in line for line in access_log(caplog)), PROMPT)
        assert wait_until(lambda: not server.spooling, PROMPT)
    assert not calls.inputs  # the app never ran for a body that never came


def test_a_body_pace_below_min_body_rate_gets_408(spool_dir: Path) -> None:
    """Each wait well within body_timeout, but far below min_body_rate on the whole: the loop
    counts the waits across its turns."""
    calls = Calls()
    body = b"x" * 1000
    with threadpool(calls, body_timeout=0.5, min_body_rate=1000) as server, connect(server) as sock:
        head, _ = post("/", body)
        sock.sendall(head)
        response = b""
        with Trickler([sock], body) as trickler:
            response = read_until_closed(sock)
        assert status_of(response) == 408
        assert trickler.sent < len(body)
    assert not calls.inputs


def test_100_continue_comes_from_the_loop_before_the_app_runs(spool_dir: Path) -> None:
    calls = Calls()
    body = b"y" * (IN_MEMORY * 4)
    with threadpool(calls) as server, connect(server) as sock:
        head, _ = post("/sha", body, extra="Expect: 100-continue\r\n")
        sock.sendall(head)
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):
            interim += sock.recv(1)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        assert not calls.called.is_set()
        sock.sendall(body)
        response = read_until_closed(sock)
        assert status_of(response) == 200 and body_of(response) == hashlib.sha256(body).hexdigest().encode()
    assert calls.inputs == [SpooledInput]


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_100_continue_with_curl(spool_dir: Path, tmp_path: Path) -> None:
    calls = Calls()
    upload = tmp_path / "upload.bin"
    data = os.urandom(200_000)
    upload.write_bytes(data)
    with threadpool(calls) as server:
        port = server.server_address[1]
        result = subprocess.run(
            ["curl", "-sS", "--max-time", str(PROMPT), "-H", "Expect: 100-continue", "--expect100-timeout", "30",
             "--data-binary", f"@{upload}", f"http://127.0.0.1:{port}/sha"],
            capture_output=True, timeout=PROMPT * 2,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == hashlib.sha256(data).hexdigest().encode()


def test_pipelined_requests_wait_in_the_loop_for_their_bodies(spool_dir: Path) -> None:
    """After a response, the worker serves the next pipelined request only if it is all there;
    the rest of it is received in the loop."""
    calls = Calls()
    first, second = b"a" * 10, b"b" * (IN_MEMORY * 3)
    with threadpool(calls) as server, connect(server) as sock:
        head1, _ = post("/", first, close=False)
        head2, _ = post("/sha", second)
        sock.sendall(head1 + first + head2 + second[:100])
        response = b""
        while response.count(b"\r\n\r\n") < 1 or not response.endswith(first):
            response += sock.recv(65536)
        assert status_of(response) == 200
        sock.sendall(second[100:])
        rest = read_until_closed(sock)
        assert body_of(rest) == hashlib.sha256(second).hexdigest().encode()
    assert calls.inputs == [InputStream, SpooledInput]


def test_a_pipelined_request_waiting_for_100_continue_gets_it(spool_dir: Path) -> None:
    """Its head came with the request before it: the 100 Continue is sent once that one is
    answered, without waiting for bytes the client will not send before it."""
    calls = Calls()
    with threadpool(calls) as server, connect(server) as sock:
        head1, _ = post("/", b"first", close=False)
        head2, _ = post("/", b"second", extra="Expect: 100-continue\r\n")
        sock.sendall(head1 + b"first" + head2)
        response = b""
        while not response.endswith(b"HTTP/1.1 100 Continue\r\n\r\n"):
            data = sock.recv(65536)
            assert data, response
            response += data
        assert status_of(response) == 200 and b"first" in response
        sock.sendall(b"second")
        assert body_of(read_until_closed(sock)) == b"second"


def test_without_buffer_request_body_the_app_streams_the_upload(spool_dir: Path) -> None:
    seen = []
    got_first = threading.Event()

    def streaming_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        stream = environ["wsgi.input"]
        seen.append(stream.read(5))
        got_first.set()  # the rest of the body has not been sent yet
        seen.append(stream.read())
        start_response("200 OK", [])
        return [b"|".join(seen)]

    server = gearshift.make_server("127.0.0.1", 0, streaming_app, strategy="threadpool", threads=2,
                                   buffer_request_body=False, **PATIENT)
    with serving(server), connect(server) as sock:
        head, _ = post("/", b"12345" + b"z" * 50_000)
        sock.sendall(head + b"12345")
        assert got_first.wait(PROMPT)
        sock.sendall(b"z" * 50_000)
        response = read_until_closed(sock)
        assert status_of(response) == 200 and body_of(response) == b"12345|" + b"z" * 50_000


def test_the_temporary_file_goes_when_the_app_fails(spool_dir: Path) -> None:
    calls = Calls()
    with threadpool(calls) as server, connect(server) as sock:
        head, body = post("/fail", b"q" * (IN_MEMORY * 5))
        sock.sendall(head + body)
        assert status_of(read_until_closed(sock)) == 500
        assert wait_until(lambda: not open_files_in(spool_dir), PROMPT)
    assert calls.inputs == [SpooledInput]


def test_the_temporary_file_goes_when_the_client_leaves_mid_body(spool_dir: Path) -> None:
    calls = Calls()
    with threadpool(calls) as server:
        with connect(server) as sock:
            head, body = post("/", b"q" * (IN_MEMORY * 5))
            sock.sendall(head + body[: IN_MEMORY * 2])
            assert wait_until(lambda: open_files_in(spool_dir), PROMPT)
        assert wait_until(lambda: not open_files_in(spool_dir), PROMPT)
        assert not server.spooling
    assert not calls.inputs


def test_the_temporary_file_goes_when_the_server_closes_mid_body(spool_dir: Path) -> None:
    calls = Calls()
    with threadpool(calls) as server, connect(server) as sock:
        head, body = post("/", b"q" * (IN_MEMORY * 5))
        sock.sendall(head + body[: IN_MEMORY * 2])
        assert wait_until(lambda: open_files_in(spool_dir), PROMPT)
        server.shutdown()
        server.server_close()
        assert not open_files_in(spool_dir)
        assert read_until_closed(sock) == b""
    assert not calls.inputs


def test_a_chunked_body_past_max_body_size_is_refused_before_the_app_runs(spool_dir: Path) -> None:
    calls = Calls()
    with threadpool(calls, max_body_size=IN_MEMORY * 2) as server, connect(server) as sock:
        chunk = b"c" * IN_MEMORY
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + (b"%x\r\n%b\r\n" % (len(chunk), chunk)) * 3)
        assert status_of(read_until_closed(sock)) == 413
    assert not calls.inputs


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_an_upload_over_tls_is_read_ahead_whole(spool_dir: Path, tmp_path: Path) -> None:
    """TLS records are decrypted a record per read: a body of many records takes several turns of
    the loop, bytes the socket already decrypted included."""
    context, client_context = tls_contexts(tmp_path)
    calls = Calls()
    body = os.urandom(2_000_000)
    with threadpool(calls, ssl_context=context) as server, connect(server) as raw, \
            client_context.wrap_socket(raw, server_hostname="localhost") as tls:
        head, _ = post("/sha", body)
        tls.sendall(head + body)
        response = read_until_closed(tls)
        assert status_of(response) == 200 and body_of(response) == hashlib.sha256(body).hexdigest().encode()
    assert calls.inputs == [SpooledInput] and calls.turns == 1


# -- any body, any segmentation --------------------------------------------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[gearshift.WSGIServer, Path]]:
    directory = tmp_path_factory.mktemp("spool")
    saved, tempfile.tempdir = tempfile.tempdir, str(directory)
    try:
        with threadpool(Calls()) as server:
            normal_request(server)  # the pool starts its threads: they belong to the module
            yield server, directory
    finally:
        tempfile.tempdir = saved


def frame(target: str, body: bytes, chunked: bool, chunk_sizes: list[int]) -> bytes:
    if not chunked:
        head, _ = post(target, body)
        return head + body
    out = [b"POST %b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
           % target.encode()]
    pos = 0
    sizes = iter(chunk_sizes)
    while pos < len(body):
        size = max(1, next(sizes, len(body)))
        piece = body[pos:pos + size]
        out.append(b"%x\r\n%b\r\n" % (len(piece), piece))
        pos += size
    out.append(b"0\r\n\r\n")
    return b"".join(out)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    size=st.one_of(st.integers(0, 64), st.integers(IN_MEMORY - 64, IN_MEMORY + 64), st.integers(0, IN_MEMORY * 8)),
    chunked=st.booleans(),
    chunk_sizes=st.lists(st.integers(1, IN_MEMORY * 2), max_size=20),
    cuts=st.lists(st.integers(0, IN_MEMORY * 10), max_size=8),
    pauses=st.lists(st.sampled_from([0.0, 0.0, 0.001, 0.01]), min_size=8, max_size=8),
    seed=st.binary(min_size=1, max_size=16),
    reads=st.sampled_from(["", "?read=1", "?read=7", "?read=1000", "?read=100000", "?lines"]),
)
def test_any_body_in_any_segments_arrives_whole(
    shared: tuple[gearshift.WSGIServer, Path], size: int, chunked: bool, chunk_sizes: list[int],
    cuts: list[int], pauses: list[float], seed: bytes, reads: str,
) -> None:
    server, directory = shared
    body = (seed * (size // len(seed) + 1))[:size]
    if reads == "?lines":
        body = body.replace(seed[:1], b"\n")  # lines of all lengths
    data = frame("/sha" + reads, body, chunked, chunk_sizes)
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    with connect(server) as sock:
        for (start, end), pause in zip(itertools.pairwise(bounds), pauses + [0.0] * len(bounds), strict=False):
            sock.sendall(data[start:end])
            if pause:
                time.sleep(pause)  # the segmentation being tested, not a synchronisation
        response = read_until_closed(sock)
    assert status_of(response) == 200
    assert body_of(response) == hashlib.sha256(body).hexdigest().encode()
    assert wait_until(lambda: not open_files_in(directory), PROMPT)
