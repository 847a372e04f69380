"""Timeouts bound the whole of a slow transfer, not just each wait, on every strategy.

Each slow client here moves a little data well within every per-wait timeout, so only the total
bounds (``head_timeout``, ``min_body_rate``, ``min_send_rate``) can cut it off. Each test checks
that it is cut off, that nothing is left holding the server (no thread under ``thread``, no child
under ``fork``, the loop itself under ``sync``), and that the next client is served.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from pathlib import Path

import pytest
from apps import app
from client import STRATEGIES, Client, read_until_closed, server_process, status_of, wait_until

import gearshift
from gearshift.http.errors import HTTPError, RequestTimeout
from gearshift.http.server import HTTPConfig

pytestmark = pytest.mark.timeout(60)

#: How long a slow client keeps going before the test calls it never cut off: far beyond the
#: second or so the options below allow it, so a loaded machine does not fail the tests.
GIVE_UP = 20.0
#: Seconds between two trickles: well within every per-wait timeout used here (0.5 s).
TRICKLE = 0.05


def threads_of(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def trickle_until_answered(sock: socket.socket, pieces: list[bytes]) -> bytes:
    """Send ``pieces`` one at a time, a trickle apart, until the server answers or closes; return
    what it sent before closing. Fails if the server lets this go on for GIVE_UP seconds."""
    deadline = time.monotonic() + GIVE_UP
    for piece in pieces:
        if time.monotonic() > deadline:
            break
        try:
            sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            break
        readable, _, _ = select.select([sock], [], [], TRICKLE)
        if readable:
            break
    else:
        raise AssertionError("ran out of pieces to send")
    if time.monotonic() > deadline:
        raise AssertionError("the server never cut the slow client off")
    sock.settimeout(GIVE_UP)
    return read_until_closed(sock)


def assert_released_and_serving(proc, baseline_threads: int) -> None:
    """Nothing is left pinned by the slow client, and the next client is served."""
    if proc.strategy == "thread":
        assert wait_until(lambda: threads_of(proc.proc.pid) <= baseline_threads, timeout=GIVE_UP)
    if proc.strategy == "fork":
        assert wait_until(lambda: not proc.children(), timeout=GIVE_UP)
    with Client(proc.port, timeout=GIVE_UP) as c:
        assert c.request("GET", "/length?n=1").body == b"x"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_head_deadline_is_total(strategy):
    with server_process(strategy, {"head_timeout": 0.5}) as proc:
        baseline = threads_of(proc.proc.pid)
        with socket.create_connection(("127.0.0.1", proc.port)) as sock:
            head = b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 100000
            raw = trickle_until_answered(sock, [head[i : i + 1] for i in range(len(head))])
        assert status_of(raw) == 408
        assert_released_and_serving(proc, baseline)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_slow_body_is_cut_off_by_the_minimum_rate(strategy):
    options = {"body_timeout": 0.5, "min_body_rate": 100}
    with server_process(strategy, options) as proc:
        baseline = threads_of(proc.proc.pid)
        with socket.create_connection(("127.0.0.1", proc.port)) as sock:
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n")
            raw = trickle_until_answered(sock, [b"x"] * 100000)
        # /echo reads the whole body before answering: the 408 is the server's.
        assert status_of(raw) == 408 and b"request body was not received in time" in raw
        assert_released_and_serving(proc, baseline)
        assert "Traceback" not in proc.log()


def endless(environ, start_response):
    """On /endless a response far longer than any test waits for, in constant memory; else
    the usual test app."""
    if environ["PATH_INFO"] != "/endless":
        return app(environ, start_response)
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    block = b"x" * 1_000_000
    return (block for _ in range(5000))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_slow_reader_is_cut_off_by_the_minimum_rate(strategy):
    # The reader takes a MB every trickle, so no single wait of the server comes near
    # send_timeout; the minimum rate is set above what it manages, so the waits' total does.
    options = {"send_timeout": 0.5, "min_send_rate": 1_000_000_000}
    with server_process(strategy, options, app="test_timeouts:endless") as proc:
        baseline = threads_of(proc.proc.pid)
        stop = threading.Event()
        reading = threading.Event()
        sock = socket.create_connection(("127.0.0.1", proc.port))

        def read_slowly() -> None:
            try:
                while not stop.wait(TRICKLE):
                    if not sock.recv(1_000_000):
                        break
                    reading.set()
            except OSError:
                pass

        sock.sendall(b"GET /endless HTTP/1.1\r\nHost: t\r\n\r\n")
        reader = threading.Thread(target=read_slowly, daemon=True)
        reader.start()
        try:
            assert reading.wait(GIVE_UP)  # the response is under way: a thread or child serves it
            assert_released_and_serving(proc, baseline)
        finally:
            stop.set()
            reader.join(GIVE_UP)
            sock.close()
        assert not reader.is_alive()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_fast_enough_clients_are_not_cut_off(strategy):
    # Slow but above the minimum rates: every wait is short, and the totals grow with the bytes.
    options = {"head_timeout": 5, "body_timeout": 0.5, "min_body_rate": 1, "send_timeout": 0.5,
               "min_send_rate": 1}
    with server_process(strategy, options) as proc, Client(proc.port, timeout=GIVE_UP) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 30\r\n\r\n")
        for _ in range(30):  # about 20 bytes per second, over 1.5 s: past the 0.5 s grace
            c.send(b"y")
            time.sleep(TRICKLE)  # a slow client on purpose
        r = c.response()
        assert r.status == 200 and r.body == b"y" * 30
        assert c.request("GET", "/length?n=300000").body == b"x" * 300000


def test_request_timeout_is_an_httperror_and_a_timeouterror():
    error = RequestTimeout("the request body was not received in time")
    assert isinstance(error, HTTPError) and isinstance(error, TimeoutError)
    assert error.status == 408 and str(error) == "408 the request body was not received in time"


def test_timeout_options_are_validated():
    config = HTTPConfig()
    assert (config.head_timeout, config.body_timeout, config.send_timeout) == (10.0, 10.0, 10.0)
    assert config.min_body_rate == config.min_send_rate == 500.0
    assert HTTPConfig(min_body_rate=0, min_send_rate=0).min_body_rate == 0
    for name in ("head_timeout", "body_timeout", "send_timeout"):
        with pytest.raises(ValueError, match=name):
            HTTPConfig(**{name: 0})
    for name in ("keep_alive_timeout", "head_timeout", "body_timeout", "min_body_rate", "send_timeout",
                 "min_send_rate"):
        for bad in (-1, "5", True, float("nan"), float("inf"), None):
            with pytest.raises(ValueError, match=name):
                HTTPConfig(**{name: bad})
    for name in ("head_timeout", "body_timeout", "min_body_rate", "send_timeout", "min_send_rate"):
        assert name in HTTPConfig.option_names()


def test_old_header_timeout_name_points_at_the_new_ones():
    with pytest.raises(TypeError, match="'header_timeout' was renamed: use head_timeout.*body_timeout.*send_timeout"):
        gearshift.make_server("127.0.0.1", 0, app, header_timeout=5)
