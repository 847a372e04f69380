"""``wsgi.input`` has the semantics of a buffered binary file (``io.BufferedReader``, as PEP 3333
asks): ``read(n)`` blocks until ``n`` bytes or the end of the body, ``readline`` and iteration
return whole lines, and nothing reads past the body, however the body's bytes arrive.

Every sequence of reads is checked against the same reads on ``io.BytesIO(body)``
(``input_ops``), first on an InputStream fed by a parser alone, then over real sockets on every
strategy with the body cut into random TCP segments.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from itertools import pairwise

import pytest
from client import READS_BODY_AHEAD, STRATEGIES, Client, server_process
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from input_ops import apply_ops

from gearshift.http.parser import RequestParser
from gearshift.http.wsgi import InputStream

pytestmark = pytest.mark.timeout(120)

OPS = st.lists(
    st.one_of(
        st.integers(0, 700).map(lambda k: f"r{k}"),
        st.sampled_from(["r", "rN", "r-1", "l", "lN", "l-1", "n", "I", "s", "s0"]),
        st.integers(0, 120).map(lambda k: f"l{k}"),
        st.integers(1, 300).map(lambda k: f"s{k}"),
    ),
    max_size=8,
)
BODIES = st.one_of(
    st.binary(max_size=3000),
    st.lists(st.one_of(st.sampled_from([b"\n", b"\r\n", b"\n\n"]), st.binary(max_size=60)), max_size=80).map(b"".join),
)


@st.composite
def framed(draw, body: bytes) -> tuple[bytes, bytes]:
    """(framing headers, encoded body): Content-Length, or chunked in random chunk sizes."""
    if not draw(st.booleans()):
        return b"Content-Length: %d\r\n" % len(body), body
    pieces, at = [], 0
    while at < len(body):
        size = draw(st.integers(1, max(1, len(body) - at)))
        pieces.append(b"%x\r\n%b\r\n" % (size, body[at:at + size]))
        at += size
    trailer = draw(st.sampled_from([b"", b"X-Trailer: t\r\n"]))
    return b"Transfer-Encoding: chunked\r\n", b"".join(pieces) + b"0\r\n" + trailer + b"\r\n"


def expected(body: bytes, ops: list[str]) -> list[list[bytes]]:
    return apply_ops(io.BytesIO(body), [*ops, "r"])


# -- without a socket: an InputStream fed by the parser, piece by piece ---------------------------


def stream_of(wire: bytes, cuts: list[int]) -> tuple[InputStream, Callable[[], RequestParser]]:
    """The InputStream of the first request in ``wire``, fed in the pieces ``cuts`` make (it is
    an error for the stream to ask for more once the body has ended), and a function that feeds
    the rest of ``wire`` and returns the parser."""
    bounds = [0, *cuts, len(wire)]
    pieces = iter([wire[a:b] for a, b in pairwise(bounds) if b > a])
    parser = RequestParser()
    while not parser.requests:
        parser.feed(next(pieces))
    request = parser.requests.popleft()

    def fetch(req):
        assert req is request and not req.complete, "asked for more than the body"
        parser.feed(next(pieces))

    def rest():
        for piece in pieces:
            parser.feed(piece)
        return parser

    return InputStream(request, fetch), rest


@settings(max_examples=300, deadline=None)
@given(body=BODIES, ops=OPS, data=st.data())
def test_reads_match_a_buffered_file(body, ops, data):
    headers, encoded = data.draw(framed(body))
    wire = b"POST / HTTP/1.1\r\nHost: t\r\n" + headers + b"\r\n" + encoded + b"GET /next HTTP/1.1\r\nHost: t\r\n\r\n"
    cuts = sorted(data.draw(st.sets(st.integers(1, len(wire) - 1), max_size=20)))
    stream, rest = stream_of(wire, cuts)
    assert apply_ops(stream, [*ops, "r"]) == expected(body, ops)
    assert stream.read() == b"" and stream.readline() == b"" and list(stream) == []
    requests = rest().requests  # the next request is intact: nothing was read past the body
    assert [r.target for r in requests] == [b"/next"]


def test_stream_api():
    stream, _ = stream_of(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 12\r\n\r\nab\ncd\nefghij", [30, 40, 43])
    assert stream.readable()
    assert next(stream) == b"ab\n"
    buffer = bytearray(5)
    assert stream.readinto(buffer) == 5 and buffer == b"cd\nef"
    with pytest.raises(TypeError, match="size must be an int or None"):
        stream.read(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="size must be an int or None"):
        stream.readline("3")  # type: ignore[arg-type]
    assert stream.readlines(None) == [b"ghij"]
    assert stream.readinto(buffer) == 0


# -- over sockets, on every strategy --------------------------------------------------------------


@pytest.fixture(scope="module", params=STRATEGIES)
def server(request):
    with server_process(request.param, app="input_app:app") as proc:
        yield proc


class ShapedSender:
    """Sends pieces from a thread of its own, each in its own TCP segment (TCP_NODELAY), with a
    pause after each: the pauses shape the traffic, nothing waits on them."""

    def __init__(self, sock: socket.socket, pieces: list[bytes], pauses: list[float]) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(sock, pieces, pauses), daemon=True)
        self._thread.start()

    def _run(self, sock: socket.socket, pieces: list[bytes], pauses: list[float]) -> None:
        try:
            for piece, pause in zip(pieces, pauses, strict=False):
                sock.sendall(piece)
                if pause:
                    time.sleep(pause)
        except OSError as exc:
            self.error = exc

    def join(self) -> None:
        self._thread.join(30)
        assert not self._thread.is_alive()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODIES, ops=OPS, data=st.data())
def test_any_reads_of_any_body_in_any_segments(server, body, ops, data):
    headers, encoded = data.draw(framed(body))
    wire = (b"POST /ops HTTP/1.1\r\nHost: t\r\nX-Ops: %b\r\n%b\r\n%b" % (" ".join(ops).encode(), headers, encoded)
            + b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n")
    cuts = sorted(data.draw(st.sets(st.integers(1, len(wire) - 1), max_size=12)))
    bounds = [0, *cuts, len(wire)]
    pieces = [wire[a:b] for a, b in pairwise(bounds)]
    pauses = data.draw(st.lists(st.sampled_from([0.0, 0.0005, 0.002]), min_size=len(pieces), max_size=len(pieces)))
    with Client(server.port) as c:
        sender = ShapedSender(c.sock, pieces, pauses)
        try:
            first, after = c.response(), c.response()
        finally:
            sender.join()
    assert sender.error is None
    assert first.status == 200, first.body
    got = [[bytes.fromhex(piece) for piece in result] for result in json.loads(first.body)]
    assert got == expected(body, ops)
    assert after.body == b"after"  # the next request was intact: nothing read past the body


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_one_read_of_a_large_body_gets_all_of_it(server, chunked):
    body = os.urandom(300_000)
    with Client(server.port) as c:
        if chunked:
            step = 70_000
            encoded = b"".join(b"%x\r\n%b\r\n" % (len(body[i:i + step]), body[i:i + step])
                               for i in range(0, len(body), step))
            c.send(b"POST /once HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nX-Size: %d\r\n\r\n%b0\r\n\r\n"
                   % (len(body), encoded))
            r = c.response()
        else:
            r = c.request("POST", "/once", body=body)
        assert r.status == 200, r.body
        assert json.loads(r.body) == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest(), "rest": 0}
        assert c.request("GET", "/after").body == b"after"  # and the connection is still usable


# -- what the app leaves unread -------------------------------------------------------------------


def _upload(port: int, head: bytes, body: bytes) -> tuple[Client, ShapedSender]:
    c = Client(port)
    return c, ShapedSender(c.sock, [head, body], [0.0, 0.0])


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("path", ["/after", "/partial?100000"])
def test_a_large_unread_body_gets_its_response_then_a_clean_close(server, chunked, path):
    """More than can be discarded is left unread: the client still reads its whole response and
    then EOF, never a reset, and can finish sending its body."""
    body = os.urandom(5_000_000)  # more than the socket buffers hold: the client is still sending
    if chunked:
        head = b"POST %b HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" % path.encode()
        body = b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)
    else:
        head = b"POST %b HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (path.encode(), len(body))
    c, sender = _upload(server.port, head, body)
    with c:
        try:
            r = c.response("POST")
            assert r.status == 200
            assert r.body == (b"after" if path == "/after" else b"read 100000")
            if server.strategy in READS_BODY_AHEAD:
                # The whole body was received before the app ran: nothing is left to skip.
                assert "Connection" not in r.headers
                assert c.request("GET", "/after").body == b"after"
                return
            if not chunked:  # the length says at once that the body is too large to skip
                assert r.headers["Connection"] == "close"
            c.sock.settimeout(20)
            assert c.file.read() == b""  # EOF: a reset would raise ConnectionResetError here
        finally:
            sender.join()
    assert sender.error is None


def test_a_small_unread_rest_is_skipped_and_the_connection_kept(server):
    with Client(server.port) as c:
        r = c.request("POST", "/partial?10", body=os.urandom(60_000))
        assert r.body == b"read 10" and "Connection" not in r.headers
        assert c.request("GET", "/after").body == b"after"


def _curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "60", *args], capture_output=True, text=True, timeout=90,
                          check=False)


@pytest.mark.skipif(not os.path.exists("/usr/bin/curl"), reason="needs /usr/bin/curl")
@pytest.mark.parametrize("expect", ["Expect: 100-continue", "Expect:"], ids=["100-continue", "no-expect"])
def test_curl_uploads_5mb(server, tmp_path, expect):
    body = os.urandom(5_000_000)
    upload = tmp_path / "upload.bin"
    upload.write_bytes(body)
    url = f"http://127.0.0.1:{server.port}"
    common = ["-H", expect, "-H", "Content-Type: application/octet-stream", "--data-binary", f"@{upload}"]
    # An app that reads the body gets all of it; curl sees no error.
    done = _curl(*common, f"{url}/once")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest(), "rest": 0}
    # An app that reads part of it, or none: curl gets the answer, and no broken pipe.
    for path, answer in [("/partial?100000", "read 100000"), ("/partial?10", "read 10"), ("/after", "after")]:
        done = _curl(*common, url + path)
        assert (done.returncode, done.stdout, done.stderr) == (0, answer, "")


def test_an_error_after_the_body_does_not_cost_the_request_its_response(server):
    """Bytes that cannot be a request arrive with the end of a body the app is reading: the app
    still gets its whole body and its response goes out, then the 400 for what followed."""
    with Client(server.port) as c:
        c.send(b"POST /once HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        assert c.file.readline() == b"HTTP/1.1 100 Continue\r\n"  # the app is reading the body
        assert c.file.readline() == b"\r\n"
        c.send(b"hello" + b"NOT HTTP\r\n\r\n")
        first = c.response("POST")
        assert first.status == 200, first.body
        assert json.loads(first.body)["sha256"] == hashlib.sha256(b"hello").hexdigest()
        assert c.response().status == 400
