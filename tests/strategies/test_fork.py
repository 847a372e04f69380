"""The ``fork`` strategy, always in a subprocess (fork_server_script.py): the pytest process is
multi-threaded and must not fork. Children are counted from /proc."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest
from core_helpers import (
    HANG_GUARD,
    ForkServerProcess,
    LineHandler,
    ask,
    blocked_in_wait,
    closed_by_peer,
    connect,
    proc_state,
    read_line,
    wait_for,
)

import gearshift

# Tests using the fork_server fixture skip themselves where os.fork or /proc is missing.
pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def fork_server():
    """Start fork_server_script.py with the given arguments; everything is killed afterwards."""
    started: list[ForkServerProcess] = []

    def start(*args: str) -> ForkServerProcess:
        server = ForkServerProcess(*args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def _alive(pid: int) -> bool:
    return proc_state(pid) not in (None, "Z")


def _run_clients(lines: list[str], address) -> tuple[list[threading.Thread], dict[str, str], list]:
    replies: dict[str, str] = {}
    errors: list[BaseException] = []

    def client(line: str) -> None:
        try:
            replies[line] = ask(address, line)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(line,)) for line in lines]
    for thread in threads:
        thread.start()
    return threads, replies, errors


def test_never_more_than_max_children(fork_server):
    server = fork_server("--max-children", "3")
    lines = [f"sleep 0.3 c{i}" for i in range(12)]
    threads, replies, errors = _run_clients(lines, server.address)
    most = 0
    deadline = time.monotonic() + HANG_GUARD * 2
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        most = max(most, len(server.children()))  # running and zombie children alike
        assert most <= 3, f"server has {most} children with max_children=3"
        time.sleep(0.003)  # sampling the child count while the clients run, not waiting for them
    for thread in threads:
        thread.join(HANG_GUARD)
    assert not errors, errors
    assert len(replies) == 12
    pids = set()
    for line, reply in replies.items():
        text, pid = reply.split()
        assert text == line.split()[-1]
        pids.add(int(pid))
    assert server.pid not in pids
    assert len(pids) == 12  # one child per request
    assert most >= 2  # requests did run in parallel
    assert server.terminate() is not None


def test_no_zombie_is_left_after_idling(fork_server):
    server = fork_server("--max-children", "4", "--poll-interval", "0.1")
    for i in range(3):
        assert ask(server.address, f"echo seq{i}").startswith(f"seq{i} ")
    threads, replies, errors = _run_clients([f"sleep 0.1 par{i}" for i in range(6)], server.address)
    for thread in threads:
        thread.join(HANG_GUARD)
    assert not errors and len(replies) == 6
    # no more traffic: the loop still reaps every poll_interval
    assert wait_for(lambda: not server.children(), timeout=3), (
        f"children left: {server.children()}, zombies: {server.zombies()}"
    )
    server.terminate()


def test_a_childs_output_is_not_duplicated(fork_server):
    server = fork_server("--unflushed", "PARENT-UNFLUSHED|")
    for word in ("one", "two", "three"):
        assert ask(server.address, f"print {word}").startswith(f"{word} ")
    server.terminate()
    out = server.stdout()
    assert out.count("PARENT-UNFLUSHED|") == 1, out
    for word in ("one", "two", "three"):
        assert out.count(f"CHILD {word}\n") == 1, out
    assert out.count(f"{server.port}\n") == 1, out


def test_children_do_not_run_the_parents_atexit_handlers(fork_server):
    server = fork_server("--atexit")
    for i in range(3):
        assert ask(server.address, f"echo x{i}").startswith(f"x{i} ")
    server.terminate()
    out = server.stdout()
    assert out.count("ATEXIT") == 1, out
    assert f"ATEXIT {server.pid}\n" in out  # from the parent, at its exit


@pytest.mark.parametrize("listener", ["own", "adopted", "both"])
def test_ports_are_free_while_a_child_finishes(fork_server, listener):
    """A child still busy after the parent's server_close() keeps no listening socket alive: the
    server shuts down the listeners it created (which reaches the children's copies) and the
    children close their copies of adopted ones. Then every port can be bound again at once and
    a new connection is refused instead of waiting in a backlog nobody accepts from."""
    server = fork_server("--listener", listener)
    ports = [server.port]
    if listener == "both":
        assert wait_for(lambda: server.stdout().count("\n") >= 2)
        ports.append(int(server.stdout().split("\n")[1]))
    with connect(server.address) as client:
        client.sendall(b"slow 2 slow-one\n")
        started, child = read_line(client).split()
        assert started == b"started"
        child = int(child)
        os.kill(server.pid, signal.SIGTERM)  # shutdown() + server_close(), which drains the child

        def free(port: int) -> bool:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(("127.0.0.1", port))
                except ConnectionRefusedError:
                    pass
                else:
                    return False
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(("127.0.0.1", port))
                    probe.listen()
                except OSError:
                    return False
                return True

        # While the child is still busy with its slow request: neither the parent nor the child
        # listens on any of the ports any more.
        assert wait_for(lambda: all(free(port) for port in ports), timeout=1.8), "a port stays bound"
        assert _alive(child), "the child finished before the port check could prove anything"
        assert read_line(client) == f"slow-one {child}\n".encode()  # the drain let it finish
    server.proc.wait(HANG_GUARD)


def test_in_flight_request_completes_on_sigterm(fork_server):
    server = fork_server()
    with connect(server.address) as client:
        client.sendall(b"sleep 0.5 in-flight\n")
        assert wait_for(server.children)
        os.kill(server.pid, signal.SIGTERM)
        text, pid = read_line(client).split()
        assert text == b"in-flight" and int(pid) != server.pid
    server.proc.wait(HANG_GUARD)
    assert not server.children()


@pytest.mark.timeout(20)
def test_drain_timeout_terminates_children_and_logs(fork_server):
    server = fork_server("--drain-timeout", "0.3")
    with connect(server.address) as client:
        client.sendall(b"slow 30 never\n")
        started, child = read_line(client).split()
        child = int(child)
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(10)  # far sooner than the child's 30 s: it was killed
        assert proc_state(child) is None
        assert closed_by_peer(client)  # the request was cut short
    err = server.stderr()
    assert "WARNING gearshift: drain timeout" in err, err
    assert f"killing 1 child process still running: {child}" in err, err


def test_sigterm_shuts_down_and_exits_cleanly(fork_server):
    """The script's SIGTERM handler calls shutdown() then server_close() on the loop thread."""
    # A long poll_interval: the signal surely lands while the loop waits in select().
    server = fork_server("--poll-interval", "30")
    assert ask(server.address, "echo hello").startswith("hello ")
    assert wait_for(lambda: blocked_in_wait(server.pid)), "the loop did not go back to its wait"
    returncode = server.terminate()
    assert "Traceback" not in server.stderr(), server.stderr()
    assert returncode == 0
    assert f"EXIT {server.pid} frozen=0\n" in server.stdout()


@pytest.mark.parametrize("freeze", [True, False])
def test_parent_objects_are_frozen_out_of_the_gc_while_serving(fork_server, freeze):
    # freeze_gc (the default): a child's garbage collection never walks, and so copies, what
    # the parent had when serving began; the freeze is undone when serving ends.
    server = fork_server() if freeze else fork_server("--no-freeze-gc")
    reply, pid = ask(server.address, "gc").split()
    frozen = int(reply.removeprefix("frozen="))
    assert (frozen > 1000) if freeze else (frozen == 0), reply
    assert int(pid) != server.pid
    assert server.terminate() == 0
    assert f"EXIT {server.pid} frozen=0\n" in server.stdout()


def test_resume_when_readable_returns_false_in_a_child(fork_server):
    server = fork_server()
    reply, pid = ask(server.address, "resume").split()
    assert reply == "resume=False" and int(pid) != server.pid
    server.terminate()


def test_handler_error_in_a_child_is_logged_and_server_keeps_serving(fork_server):
    server = fork_server()
    with connect(server.address) as client:
        client.sendall(b"boom\n")
        assert closed_by_peer(client)
    assert ask(server.address, "echo after").startswith("after ")
    assert wait_for(lambda: "handler exploded in the child" in server.stderr())
    assert "exception while processing a request" in server.stderr()
    server.terminate()


def test_children_ignore_sigint(fork_server):
    server = fork_server()
    with connect(server.address) as client:
        client.sendall(b"slow 0.5 survived\n")
        _, child = read_line(client).split()
        os.kill(int(child), signal.SIGINT)  # Ctrl+C reaches the whole process group
        assert read_line(client) == b"survived " + child + b"\n"
    server.terminate()


# -- in-process checks that never fork ---------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork")
def test_fork_options_are_validated_and_stored():
    with gearshift.Server(("127.0.0.1", 0), LineHandler, strategy="fork", max_children=3,
                          block_on_close=False) as server:
        assert server.strategy.name == "fork"
        assert server.strategy.max_children == 3
        assert server.strategy.block_on_close is False
        assert server.strategy.active_children == {}
    with pytest.raises(ValueError, match="max_children"):
        gearshift.Server(("127.0.0.1", 0), LineHandler, strategy="fork", max_children=0)


def test_fork_is_unavailable_without_os_fork(monkeypatch):
    monkeypatch.delattr(os, "fork")
    with pytest.raises(gearshift.StrategyUnavailableError) as info:
        gearshift.Server(("127.0.0.1", 0), LineHandler, strategy="fork")
    assert isinstance(info.value, gearshift.GearshiftError)
    assert "fork" in str(info.value) and "thread" in str(info.value)
    # the other strategies are unaffected
    with gearshift.Server(("127.0.0.1", 0), LineHandler, strategy="thread"):
        pass
