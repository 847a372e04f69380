"""What the client sees and what is logged when an application fails, on every strategy.

An application that raises anything but ``KeyboardInterrupt`` (``SystemExit``, ``GeneratorExit``,
a custom ``BaseException``), from the call, from its response iterable or from its ``close()``,
gets a 500 if the response has not started (the connection is closed if it has), a traceback on
logger ``gearshift``, and the server goes on serving. Every answered request gets an access line.

The servers run in subprocesses (``app_server.py``); under ``fork`` a child logs to the same
stderr as its parent, so ``server.log()`` shows the children's records too.
"""

from __future__ import annotations

import re
import socket
import struct
import subprocess

import pytest
from client import (
    READS_BODY_AHEAD,
    STRATEGIES,
    Client,
    ServerProcess,
    raw_exchange,
    server_process,
    status_of,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)

KINDS = ["exit", "base", "generator-exit"]


@pytest.fixture(scope="module", params=STRATEGIES)
def server(request):
    with server_process(request.param, {"keep_alive_timeout": 5}, app="apps:error_app") as proc:
        yield proc


def assert_still_serving(port: int) -> None:
    with Client(port) as c:
        assert c.request("GET", "/ok").body == b"ok"


def access_lines(log: str, target: str) -> list[str]:
    """The access lines of ``target`` in the server's log (format of ``app_server.py``)."""
    return re.findall(rf'^\d+ INFO gearshift\.access: 127\.0\.0\.1 - - \[[^]]+\] "GET {re.escape(target)} '
                      rf'HTTP/1\.1" .*$', log, re.MULTILINE)


def error_records(log: str, target: str) -> list[str]:
    """Tracebacks logged at ERROR on logger ``gearshift`` naming ``target``."""
    return re.findall(rf"^\d+ ERROR gearshift: .*{re.escape(target)}\nTraceback", log, re.MULTILINE)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("where", ["call", "iter", "next"])
def test_base_exceptions_before_the_response_get_a_500(server, kind, where):
    target = f"/raise/{kind}/{where}"
    with Client(server.port) as c:
        r = c.request("GET", target)
        assert r.status == 500 and r.body == b"Internal Server Error\n"
        assert r.headers["Connection"] == "close" and c.at_eof()
    assert_still_serving(server.port)
    assert wait_until(lambda: access_lines(server.log(), target), timeout=10), server.log()
    log = server.log()
    assert len(error_records(log, target)) == 1, log
    [line] = access_lines(log, target)
    assert '" 500 22 ' in line  # the body's length, as for any response


@pytest.mark.parametrize("kind", KINDS)
def test_base_exception_after_the_response_started_closes_the_connection(server, kind):
    target = f"/raise/{kind}/next-after"
    raw = raw_exchange(server.port, f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    # The head and the first chunk went out; the body cannot be completed: no last chunk.
    assert status_of(raw) == 200 and raw.endswith(b"7\r\npartial\r\n"), raw
    assert_still_serving(server.port)
    assert wait_until(lambda: access_lines(server.log(), target), timeout=10), server.log()
    log = server.log()
    assert len(error_records(log, target)) == 1, log
    [line] = access_lines(log, target)
    assert '" 200 7 ' in line


@pytest.mark.parametrize("kind", KINDS)
def test_base_exception_from_close_is_logged_and_the_server_keeps_serving(server, kind):
    target = f"/raise/{kind}/close"
    with Client(server.port) as c:
        r = c.request("GET", target)
        assert r.status == 200 and r.body == b"partial"  # the response was complete
    assert_still_serving(server.port)
    assert wait_until(lambda: access_lines(server.log(), target), timeout=10), server.log()
    log = server.log()
    assert len(re.findall(rf"^\d+ ERROR gearshift: error closing .*{re.escape(target)}\nTraceback",
                          log, re.MULTILINE)) == 1, log


def test_access_line_for_a_500_after_an_ordinary_exception(server):
    target = "/raise/error/call"
    with Client(server.port) as c:
        assert c.request("GET", target).status == 500
    assert wait_until(lambda: access_lines(server.log(), target), timeout=10), server.log()
    [line] = access_lines(server.log(), target)
    assert '" 500 22 ' in line


def test_a_connection_error_of_the_app_itself_is_an_app_error(server):
    # ConnectionRefusedError from the app's own backend: a 500 and a traceback, not "client gone".
    target = "/backend-down"
    with Client(server.port) as c:
        assert c.request("GET", target).status == 500
    assert wait_until(lambda: access_lines(server.log(), target), timeout=10), server.log()
    log = server.log()
    assert len(error_records(log, target)) == 1 and "ConnectionRefusedError" in log, log


def reset(sock: socket.socket) -> None:
    """Close with an RST, as a client that crashed."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_a_client_gone_mid_response_or_mid_body_is_no_app_error(server):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
    assert sock.recv(100).startswith(b"HTTP/1.1 200 ")
    reset(sock)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(b"POST /read-body HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\nExpect: 100-continue\r\n\r\n")
    assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"  # the body is being read
    sock.sendall(b"y" * 1000)
    reset(sock)
    assert_still_serving(server.port)
    # Where the body is received before the app runs, the app never meets the client leaving.
    gone = ["GET /stream"] if server.strategy in READS_BODY_AHEAD else ["GET /stream", "POST /read-body"]
    assert wait_until(lambda: server.log().count("went away during") >= len(gone), timeout=10), server.log()
    log = server.log()
    assert all(f"went away during {what}" in log for what in gone), log
    assert not error_records(log, "/stream") and not error_records(log, "/read-body"), log
    assert "/read-body" not in log or server.strategy not in READS_BODY_AHEAD, log


def test_access_lines_for_malformed_requests(server):
    cases = {
        400: b"GET /bad\x01target HTTP/1.1\r\nHost: t\r\n\r\n",
        414: b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n",
        431: b"GET / HTTP/1.1\r\nHost: t\r\nX: " + b"a" * 9000 + b"\r\n\r\n",
        505: b"GET / HTTP/1.2\r\nHost: t\r\n\r\n",
    }
    for status, raw in cases.items():
        assert status_of(raw_exchange(server.port, raw)) == status

    # What was received is logged, escaped: a control byte cannot break the line.
    expected = {
        (400, "GET /bad\\x01target HTTP/1.1"), (414, "GET /" + "a" * 195), (431, "GET / HTTP/1.1"),
        (505, "GET / HTTP/1.2"),
    }

    def logged() -> set[tuple[int, str]]:
        found = re.findall(r'^\d+ INFO gearshift\.access: 127\.0\.0\.1 - - \[[^]]+\] "(.*)" (\d+) \d+ ',
                           server.log(), re.MULTILINE)
        return {(int(status), line) for line, status in found}

    assert wait_until(lambda: expected <= logged(), timeout=10), (server.log(), logged())


def test_date_and_server_set_by_the_app_are_not_doubled(server):
    with Client(server.port) as c:
        r = c.request("GET", "/own-headers")
        assert r.status == 200 and r.body == b"ok"
        assert r.headers.get_all("Date") == ["Thu, 01 Jan 2015 00:00:00 GMT"]
        assert r.headers.get_all("Server") == ["my-app/1.0"]
        r = c.request("GET", "/ok")  # and added when the app does not set them
        assert len(r.headers.get_all("Date")) == 1 and r.headers.get_all("Server")[0].startswith("gearshift/")


def test_keyboard_interrupt_still_stops_a_sync_server():
    server = ServerProcess("sync", app="apps:error_app")
    try:
        with Client(server.port) as c:
            c.send(b"GET /raise/keyboard/call HTTP/1.1\r\nHost: t\r\n\r\n")
            assert c.at_eof(timeout=10)
        try:
            code = server.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("the sync server kept running after the app raised KeyboardInterrupt")
        assert code != 0
    finally:
        log = server.stop()
    assert "KeyboardInterrupt" in log


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_access_lines_for_408_and_for_413_from_wsgi_input(strategy):
    with server_process(strategy, {"head_timeout": 0.5, "max_body_size": 10}) as proc:
        with Client(proc.port) as c:
            c.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Dribble: ")
            assert status_of(c.sock.recv(4096)) == 408
        with Client(proc.port) as c:
            # The 100 Continue says the app is reading wsgi.input: the body's excess is found there.
            c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n")
            assert c.file.readline() == b"HTTP/1.1 100 Continue\r\n" and c.file.readline() == b"\r\n"
            c.send(b"8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n")
            assert c.response("POST").status == 413
        lines = re.compile(r'^\d+ INFO gearshift\.access: 127\.0\.0\.1 - - \[[^]]+\] "(.*?)" (\d+) \d+ ', re.MULTILINE)
        assert wait_until(lambda: {("-", "408"), ("POST /echo HTTP/1.1", "413")} <= set(lines.findall(proc.log())),
                          timeout=10), proc.log()
