"""Stopping a ``fork`` server: children finish the request in hand and drop idle keep-alive
connections at once; a stop reaches a parent that waits for a free slot; and the child follows
socketserver's ForkingMixIn error rules.

Everything forks in a subprocess (the ``gearshift`` command, or fork_server_script.py), never in
the multi-threaded pytest process. Apps that must be in flight when the signal arrives block on
a FIFO the test opens for writing when it wants them to finish.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
from pathlib import Path

import pytest
from cli_helpers import GearshiftProcess, clean_env, connection_refused, is_alive, write_module
from core_helpers import FORK_AND_PROC, ForkServerProcess, closed_by_peer, connect, read_line, wait_for

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not FORK_AND_PROC, reason="needs os.fork and Linux /proc"),
]

#: Far longer than any stop below may take: a stop that waits for either of them fails the test.
GRACEFUL_TIMEOUT = "60"
KEEP_ALIVE_TIMEOUT = "120"
#: How long a stop that does not wait for the timeouts above may take, on a slow shared machine.
PROMPT = 30.0

APP = '''
import os, sys

def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/block":
        sys.stderr.write(f"APP BLOCKED {os.getpid()}\\n")
        sys.stderr.flush()
        with open(os.environ["FORKSTOP_FIFO"], "rb") as fifo:
            fifo.read(1)
    body = f"{path} {os.getpid()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "release"
    os.mkfifo(path)
    return path


def start(tmp_path: Path, fifo: Path, *extra: str) -> GearshiftProcess:
    write_module(tmp_path, "forkstop_app", APP)
    return GearshiftProcess(
        ["forkstop_app:app", "-s", "fork", "-b", "127.0.0.1:0", "--graceful-timeout", GRACEFUL_TIMEOUT,
         "--keep-alive-timeout", KEEP_ALIVE_TIMEOUT, "--log-level", "debug", *extra],
        cwd=tmp_path, env=clean_env(FORKSTOP_FIFO=str(fifo)),
    )


def release(fifo: Path) -> None:
    """Let the app blocked on the FIFO finish (opening for writing waits for its reader)."""
    fd = os.open(fifo, os.O_WRONLY)
    try:
        os.write(fd, b"x")
    finally:
        os.close(fd)


def get(conn: http.client.HTTPConnection, path: str) -> http.client.HTTPResponse:
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    return response


def peer_closed(conn: http.client.HTTPConnection) -> bool:
    assert conn.sock is not None
    return closed_by_peer(conn.sock)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_idle_keep_alive_connections_close_at_once_on_stop(tmp_path, fifo, signum):
    """Two clients hold keep-alive connections, each idle in its own child, when the server is
    told to stop: both connections close at once and the process exits, long before either the
    keep-alive timeout or the graceful timeout (SIGINT is the command's Ctrl+C)."""
    with start(tmp_path, fifo) as server:
        host, port = server.address()
        clients = [http.client.HTTPConnection(host, port, timeout=PROMPT) for _ in range(2)]
        try:
            for i, conn in enumerate(clients):
                for n in range(2):  # the second request reuses the connection (same child)
                    response = get(conn, f"/c{i}r{n}")
                    assert response.status == 200 and response.getheader("Connection") is None
            server.send(signum)
            assert server.wait(PROMPT) == 0
            for conn in clients:
                assert peer_closed(conn), "the idle connection was reset, not closed"
        finally:
            for conn in clients:
                conn.close()
        assert "drain timeout" not in server.stderr, server.stderr


def test_the_request_in_hand_finishes_with_connection_close(tmp_path, fifo):
    with start(tmp_path, fifo) as server:
        host, port = server.address()
        conn = http.client.HTTPConnection(host, port, timeout=PROMPT)
        try:
            assert get(conn, "/first").getheader("Connection") is None  # keep-alive
            conn.request("GET", "/block")
            (blocked,) = server.wait_for(r"APP BLOCKED (\d+)")
            child = int(blocked[1])
            server.send(signal.SIGTERM)
            server.wait_for(rf"asked 1 child process to finish: {child}\b")
            assert is_alive(child)
            assert conn.sock is not None
            with conn.sock.dup() as sock:  # http.client closes its own on Connection: close
                release(fifo)
                response = conn.getresponse()
                assert response.status == 200
                assert response.read() == f"/block {child}".encode()
                assert response.getheader("Connection") == "close"
                assert closed_by_peer(sock)
        finally:
            conn.close()
        assert server.wait(PROMPT) == 0
        assert "drain timeout" not in server.stderr, server.stderr


def _accepted(port: int, client_port: int) -> bool:
    """Whether the server has accept()ed the connection from ``client_port`` (IPv4 loopback):
    the connection is established and the listener's accept queue is empty."""
    established = listening_queue = None
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, remote, state, queues = fields[1], fields[2], fields[3], fields[4]
            if int(local.split(":")[1], 16) != port:
                continue
            if state == "0A":  # LISTEN: rx_queue is the accept queue's length
                listening_queue = int(queues.split(":")[1], 16)
            elif state == "01" and int(remote.split(":")[1], 16) == client_port:
                established = True
    return bool(established) and listening_queue == 0


def test_stop_is_acted_on_while_every_child_slot_is_busy(tmp_path, fifo):
    """max_children=1 and its child busy: the parent has accepted a second connection and waits
    for a free slot. SIGTERM still stops it at once: the listener closes and the stop is logged
    while the child is still running; the child then finishes its request."""
    with start(tmp_path, fifo, "--max-children", "1") as server:
        host, port = server.address()
        first = http.client.HTTPConnection(host, port, timeout=PROMPT)
        second = connect((host, port), timeout=PROMPT)
        try:
            first.request("GET", "/block")
            (blocked,) = server.wait_for(r"APP BLOCKED (\d+)")
            child = int(blocked[1])
            second.sendall(b"GET /second HTTP/1.1\r\nHost: t\r\n\r\n")
            assert wait_for(lambda: _accepted(port, second.getsockname()[1])), "never accepted"
            server.send(signal.SIGTERM)
            server.wait_for("SIGTERM: stopped accepting", timeout=PROMPT)
            assert is_alive(child), "the child finished: this proves nothing"
            assert connection_refused((host, port), within=PROMPT)
            assert closed_by_peer(second)  # closed unserved, like a connection in the backlog
            release(fifo)
            response = first.getresponse()
            assert response.read() == f"/block {child}".encode()
            assert response.getheader("Connection") == "close"
        finally:
            first.close()
            second.close()
        assert server.wait(PROMPT) == 0


def test_drain_timeout_kills_a_child_still_running_and_logs_it(tmp_path, fifo):
    with start(tmp_path, fifo, "--graceful-timeout", "1") as server:
        host, port = server.address()
        with connect((host, port), timeout=PROMPT) as client:
            client.sendall(b"GET /block HTTP/1.1\r\nHost: t\r\n\r\n")
            (blocked,) = server.wait_for(r"APP BLOCKED (\d+)")
            child = int(blocked[1])
            server.send(signal.SIGTERM)
            assert server.wait(PROMPT) == 0
            assert closed_by_peer(client)  # cut short: no response
        assert not is_alive(child)
        assert f"drain timeout (1.0 s) passed; killing 1 child process still running: {child}" in server.stderr


# -- socketserver's handler semantics in the child (fork_server_script.py) -----------------------


def _records(path: Path) -> dict[int, list[str]]:
    by_pid: dict[int, list[str]] = {}
    for line in path.read_text().splitlines():
        event, pid = line.split()
        by_pid.setdefault(int(pid), []).append(event)
    return by_pid


@pytest.mark.parametrize(
    ("command", "events", "status"),
    [
        ("echo fine", ["handle", "shutdown_request"], 0),
        ("boom", ["handle", "handle_error", "shutdown_request"], 1),  # an Exception: handled once
        ("exit", ["handle", "shutdown_request"], 1),  # SystemExit is not an error to handle
    ],
)
def test_child_error_semantics_are_forkingmixins(tmp_path, command, events, status):
    record = tmp_path / "record"
    with ForkServerProcess("--record", str(record), "--debug") as server:
        with connect(server.address) as client:
            client.sendall(command.encode() + b"\n")
            reply = read_line(client)
            assert closed_by_peer(client)
        assert server.terminate() == 0  # drains: every child has exited and been reaped
        by_pid = _records(record)
        assert len(by_pid) == 1, by_pid
        ((child, seen),) = by_pid.items()
        assert child != server.pid
        assert seen == events
        err = server.stderr()
        exited = re.findall(rf"child process {child} exited with status (\d+)", err)
        assert exited == ([] if status == 0 else [str(status)]), err
        if command == "echo fine":
            assert reply == f"fine {child}\n".encode()
