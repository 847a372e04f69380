"""HTTP/1.1 and WSGI over real sockets, on every strategy.

Each strategy's server runs in a subprocess of its own (``app_server.py``), serving the
validator-wrapped app of ``apps.py``: a 200 from it also means the environ passed
``wsgiref.validate``.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
from client import READS_BODY_AHEAD, STRATEGIES, Client, raw_exchange, server_process, status_of

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module", params=STRATEGIES)
def server(request):
    with server_process(request.param, {"keep_alive_timeout": 5}) as proc:
        yield proc


def environ_of(response):
    assert response.status == 200, response.body
    return json.loads(response.body)


def test_environ(server):
    with Client(server.port) as c:
        sock_port = c.sock.getsockname()[1]
        r = c.request("POST", "/environ/a%20b/%C3%A9?x=1&y=%20", {
            "Content-Type": "text/plain", "X-Multi": "one", "x-multi": "two",
            "Cookie": "a=1", "cookie": "b=2", "X_Underscore": "dropped",
        }, body=b"hello")
    env = environ_of(r)
    assert env["PATH_INFO"] == "/environ/a b/\xc3\xa9"  # latin-1 decoded bytes, per PEP 3333
    assert env["QUERY_STRING"] == "x=1&y=%20"
    assert env["SCRIPT_NAME"] == ""
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["REMOTE_PORT"] == str(sock_port)
    assert env["SERVER_PORT"] == str(server.port)
    assert env["CONTENT_TYPE"] == "text/plain"
    assert env["CONTENT_LENGTH"] == "5"
    assert env["body"] == "hello"
    assert env["headers"]["HTTP_X_MULTI"] == "one, two"
    assert env["headers"]["HTTP_COOKIE"] == "a=1; b=2"
    assert "HTTP_CONTENT_TYPE" not in env["headers"] and "HTTP_X_UNDERSCORE" not in env["headers"]
    assert env["wsgi.url_scheme"] == "http"
    assert env["gearshift.strategy"] == server.strategy
    # prefork runs threadpool in its workers (the default worker_strategy)
    assert env["wsgi.multithread"] is (server.strategy in ("thread", "threadpool", "prefork"))
    assert env["wsgi.multiprocess"] is (server.strategy in ("fork", "prefork"))
    assert env["wsgi.input_terminated"] is True


def test_keep_alive_and_pipelining(server):
    with Client(server.port) as c:
        for i in range(3):
            assert c.request("GET", f"/length?n={i}").body == b"x" * i
        c.send(b"".join(b"GET /length?n=%d HTTP/1.1\r\nHost: t\r\n\r\n" % n for n in (1, 2, 3)))
        assert [c.response().body for _ in range(3)] == [b"x", b"xx", b"xxx"]
        c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
               b"GET /length?n=4 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert c.response().body == b"abc"
        assert c.response().body == b"xxxx"


def test_http10(server):
    with Client(server.port) as c:
        r = c.request("GET", "/length?n=2", version="1.0")
        assert r.body == b"xx" and r.headers["Connection"] == "close"
        assert c.at_eof()
    with Client(server.port) as c:
        r = c.request("GET", "/length?n=2", {"Connection": "keep-alive"}, version="1.0")
        assert r.headers["Connection"] == "keep-alive"
        assert c.request("GET", "/length?n=1", {"Connection": "keep-alive"}, version="1.0").body == b"x"
    # Without a length, an HTTP/1.0 body is delimited by closing the connection.
    raw = raw_exchange(server.port, b"GET /stream HTTP/1.0\r\n\r\n")
    assert b"Transfer-Encoding" not in raw and raw.endswith(b"chunk0\nchunk1\nchunk2\n")


def test_chunked_request_body(server):
    with Client(server.port) as c:
        c.send(b"POST /environ HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\nTrailer: x\r\n\r\n")
        env = environ_of(c.response())
        assert env["body"] == "hello world" and env["CONTENT_LENGTH"] in (None, "")
        assert c.request("GET", "/length?n=1").body == b"x"


def test_readline_and_readlines(server):
    with Client(server.port) as c:
        r = c.request("POST", "/lines", body=b"first\nsecond line\nthird\nlast")
    assert json.loads(r.body) == ["first\n", "secon", "d line\n", "third\n", "last"]


def test_unread_body_is_discarded(server):
    with Client(server.port) as c:
        assert c.request("POST", "/noread", body=b"x" * 5000).body == b"ok"
        assert c.request("GET", "/length?n=3").body == b"xxx"
        c.send(b"POST /noread HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        assert c.response().body == b"ok"
        assert c.request("GET", "/length?n=2").body == b"xx"


def test_expect_100_continue(server):
    with Client(server.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        c.sock.settimeout(5)
        assert c.file.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert c.file.readline() == b"\r\n"
        c.send(b"body")
        assert c.response().body == b"body"
    with Client(server.port) as c:
        c.send(b"POST /noread HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        if server.strategy in READS_BODY_AHEAD:
            # The body is received before the app runs: the server asks for it at once.
            c.sock.settimeout(5)
            assert c.file.readline() == b"HTTP/1.1 100 Continue\r\n" and c.file.readline() == b"\r\n"
            c.send(b"body")
        # Else the app answers without reading: no 100, no waiting for a body that may never come.
        r = c.response()
        assert r.status == 200 and r.body == b"ok"


def test_response_framing(server):
    with Client(server.port) as c:
        r = c.request("GET", "/stream?n=4")
        assert r.headers["Transfer-Encoding"] == "chunked"
        assert r.body == b"chunk0\nchunk1\nchunk2\nchunk3\n"
        r = c.request("GET", "/write")
        assert r.body == b"written;returned"
        r = c.request("GET", "/length?n=5")
        assert r.headers["Content-Length"] == "5" and r.headers["Date"] and r.headers["Server"].startswith("gearshift/")
        r = c.request("HEAD", "/length?n=5")
        assert r.headers["Content-Length"] == "5" and r.body == b""
        r = c.request("GET", "/empty")
        assert r.status == 204 and r.body == b"" and "Transfer-Encoding" not in r.headers
        r = c.request("GET", "/file?n=300000")
        assert r.body == bytes(range(256)) * (300000 // 256) + b"z" * (300000 % 256)
        assert c.request("GET", "/length?n=1").body == b"x"
    # A body shorter than its Content-Length: what was sent, then the connection closes.
    raw = raw_exchange(server.port, b"GET /short HTTP/1.1\r\nHost: t\r\n\r\n")
    assert raw.endswith(b"\r\n\r\n12345")
    with Client(server.port) as c:
        r = c.request("GET", "/close")
        assert r.headers["Connection"] == "close" and c.at_eof()


def test_app_errors_keep_the_server_serving(server):
    raw = raw_exchange(server.port, b"GET /fail HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status_of(raw) == 500 and raw.endswith(b"Internal Server Error\n")
    raw = raw_exchange(server.port, b"GET /bad-header HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status_of(raw) == 500 and b"pwned" not in raw and b"should not be sent" not in raw
    raw = raw_exchange(server.port, b"GET /fail-after HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status_of(raw) == 200 and b"partial" in raw and not raw.endswith(b"0\r\n\r\n")
    with Client(server.port) as c:
        assert c.request("GET", "/length?n=2").body == b"xx"
    log = server.log()
    assert "boom before the response" in log and "boom after the response started" in log
    assert "X-Evil" in log


def test_client_disconnect_mid_response(server):
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"GET /stream?n=200000 HTTP/1.1\r\nHost: t\r\n\r\n")
            sock.recv(100)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with Client(server.port) as c:
        assert c.request("GET", "/length?n=2").body == b"xx"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_keep_alive_timeout_closes_idle_connections(strategy):
    with server_process(strategy, {"keep_alive_timeout": 0.3}) as proc, Client(proc.port) as c:
        assert c.request("GET", "/length?n=1").body == b"x"
        started = time.monotonic()
        assert c.at_eof(timeout=5)
        assert time.monotonic() - started >= 0.2


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_head_timeout_closes_slow_clients(strategy):
    with server_process(strategy, {"head_timeout": 0.5}) as proc, \
            Client(proc.port) as slow, Client(proc.port) as silent:
        slow.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Dribble: ")
        raw = slow.sock.recv(4096)  # the 408 arrives after the timeout
        assert status_of(raw) == 408
        assert silent.at_eof(timeout=5)  # never sent a byte: closed without a response
        # Meanwhile, and after, others are served.
        with Client(proc.port) as c:
            assert c.request("GET", "/length?n=1").body == b"x"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_body_limit(strategy):
    with server_process(strategy, {"max_body_size": 10}) as proc:
        with Client(proc.port) as c:
            assert c.request("POST", "/echo", body=b"x" * 10).body == b"x" * 10
        raw = raw_exchange(proc.port, b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\n" + b"x" * 11)
        assert status_of(raw) == 413
        raw = raw_exchange(proc.port, b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n")
        assert status_of(raw) == 413
        with Client(proc.port) as c:
            assert c.request("GET", "/length?n=1").body == b"x"
        assert "Traceback" not in proc.log()
