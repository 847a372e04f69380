"""Property tests over real sockets: random TCP splits change nothing; random corruption never
crashes the server and always gets a well-formed answer."""

from __future__ import annotations

import json
import socket
import time

import pytest
from client import STRATEGIES, Client, raw_exchange, server_process
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.timeout(120)

TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-", min_size=1, max_size=12)
VALUE = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30)
#: Chunk extensions, with the optional whitespace RFC 9112 §7.1.1 allows around ";" and "=".
CHUNK_EXT = st.sampled_from([b"", b";a=b", b"; some; parameters=stuff", b" ;x", b"\t;x=y", b' ; q = "a \\" b"'])
SEGMENT = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._~%20", max_size=10)


@st.composite
def requests(draw):
    path = "/environ/" + "/".join(draw(st.lists(SEGMENT, max_size=3)))
    query = draw(st.one_of(st.just(""), st.text(alphabet="abc=&%20", max_size=12)))
    headers = draw(st.lists(st.tuples(TOKEN.map(lambda t: "X-" + t), VALUE), max_size=5))
    body = draw(st.binary(max_size=300))
    chunked = draw(st.booleans())
    lines = [f"POST {path}{'?' + query if query else ''} HTTP/1.1", "Host: example"]
    lines += [f"{name}: {value}" for name, value in headers]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        sizes = draw(st.lists(st.integers(1, 50), max_size=6))
        pieces, at = [], 0
        for size in sizes:
            piece = body[at:at + size]
            at += size
            if piece:
                pieces.append(b"%x%b\r\n%b\r\n" % (len(piece), draw(CHUNK_EXT), piece))
        if at < len(body):
            pieces.append(b"%x%b\r\n%b\r\n" % (len(body) - at, draw(CHUNK_EXT), body[at:]))
        encoded = b"".join(pieces) + b"0%b\r\n\r\n" % draw(CHUNK_EXT)
    else:
        lines.append(f"Content-Length: {len(body)}")
        encoded = body
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + encoded


@pytest.fixture(scope="module", params=STRATEGIES)
def server(request):
    with server_process(request.param) as proc:
        yield proc


def _environ(raw_response_body: bytes) -> dict:
    env = json.loads(raw_response_body)
    env.pop("REMOTE_PORT")
    env.pop("pid")
    return env


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=requests(), data=st.data())
def test_random_splits_change_nothing(server, request, data):
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(request) - 1)), max_size=8)))
    with Client(server.port) as whole:
        whole.send(request)
        expected = whole.response()
    assert expected.status == 200, expected.body
    with Client(server.port) as split:
        split.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = 0
        for cut in [*cuts, len(request)]:
            split.send(request[start:cut])
            start = cut
            time.sleep(0.001)  # let each piece leave as its own segment
        got = split.response()
    assert got.status == 200
    assert _environ(got.body) == _environ(expected.body)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=requests(), data=st.data())
def test_random_corruption_gets_a_clean_answer(server, request, data):
    mutated = bytearray(request)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(mutated) - 1))
        action = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if action == "flip":
            mutated[at] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "insert":
            mutated.insert(at, data.draw(st.integers(0, 255)))
        elif len(mutated) > 1:
            del mutated[at]
    raw = raw_exchange(server.port, bytes(mutated), half_close=True)
    # Whatever happened, the answer is a well-formed HTTP/1.1 response: the app's (2xx, 404) or a
    # rejection (4xx, 501, 505). A 500 would mean the server or the environ broke; silence means a
    # request was swallowed.
    assert raw.startswith(b"HTTP/1.1 "), raw[:100]
    status = int(raw[9:12])
    assert status < 500 or status in (501, 505), raw[:300]
    with Client(server.port) as c:  # and the server is still serving
        assert c.request("GET", "/length?n=1").body == b"x"


def test_no_tracebacks_for_client_errors(server):
    assert "Traceback" not in server.log()
