"""Listening sockets: IPv4, IPv6, Unix stream sockets, adopted and additional listeners."""

from __future__ import annotations

import errno
import os
import socket

import pytest
from core_helpers import LineHandler, ask, ipv6_loopback_available, serve

import gearshift

pytestmark = pytest.mark.timeout(20)


@pytest.mark.parametrize("strategy", ["sync", "thread"])
def test_ipv4(strategy):
    with serve(gearshift.Server(("127.0.0.1", 0), LineHandler, strategy=strategy)) as server:
        assert server.address_family == socket.AF_INET
        assert ask(server.server_address, "echo v4").split()[0] == "v4"


@pytest.mark.skipif(not ipv6_loopback_available(), reason="IPv6 loopback unavailable")
@pytest.mark.parametrize("strategy", ["sync", "thread"])
def test_ipv6(strategy):
    with serve(gearshift.Server(("::1", 0), LineHandler, strategy=strategy)) as server:
        assert server.address_family == socket.AF_INET6
        assert server.server_address[0] == "::1"
        assert ask(("::1", server.server_address[1]), "echo v6").split()[0] == "v6"


@pytest.mark.parametrize("strategy", ["sync", "thread"])
def test_unix_socket_serves_and_file_is_removed_by_server_close(tmp_path, strategy):
    path = str(tmp_path / "server.sock")
    server = gearshift.Server(path, LineHandler, strategy=strategy)
    assert server.address_family == socket.AF_UNIX
    assert server.server_address == path
    with serve(server):
        assert os.path.exists(path)
        assert ask(path, "echo unix").split()[0] == "unix"
    assert not os.path.exists(path)


def test_unix_socket_path_like(tmp_path):
    path = tmp_path / "pathlike.sock"
    with serve(gearshift.Server(path, LineHandler)):
        assert ask(str(path), "echo pathlike").split()[0] == "pathlike"
    assert not path.exists()


def test_unix_socket_stale_file_is_replaced(tmp_path):
    path = str(tmp_path / "stale.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as old:
        old.bind(path)  # a socket file nobody listens on any more, as after a crash
    assert os.path.exists(path)
    with serve(gearshift.Server(path, LineHandler)):
        assert ask(path, "echo fresh").split()[0] == "fresh"
    assert not os.path.exists(path)


def test_unix_socket_refuses_to_replace_a_regular_file(tmp_path):
    path = tmp_path / "not-a-socket"
    path.write_text("precious")
    with pytest.raises(OSError) as info:
        gearshift.Server(str(path), LineHandler)
    assert info.value.errno == errno.EADDRINUSE
    assert path.read_text() == "precious"


def test_unix_socket_refuses_to_steal_a_live_servers_path(tmp_path):
    path = str(tmp_path / "live.sock")
    with serve(gearshift.Server(path, LineHandler)):
        with pytest.raises(OSError) as info:
            gearshift.Server(path, LineHandler)
        assert info.value.errno == errno.EADDRINUSE
        assert ask(path, "echo still-mine").split()[0] == "still-mine"  # file untouched


@pytest.mark.parametrize("strategy", ["sync", "thread"])
def test_add_listener_serves_two_ports_from_one_loop(strategy):
    server = gearshift.Server(("127.0.0.1", 0), LineHandler, strategy=strategy)
    second = socket.create_server(("127.0.0.1", 0))
    server.add_listener(second)  # closed by server_close from now on
    with serve(server):
        first_port, second_port = server.server_address[1], second.getsockname()[1]
        assert first_port != second_port
        for port in (first_port, second_port, first_port):
            assert ask(("127.0.0.1", port), f"echo port{port}").split()[0] == f"port{port}"
    assert second.fileno() == -1


def test_add_listener_while_serving(tmp_path):
    server = gearshift.Server(("127.0.0.1", 0), LineHandler, strategy="thread")
    with serve(server):
        assert ask(server.server_address, "echo first").split()[0] == "first"
        path = str(tmp_path / "added.sock")
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.bind(path)
        unix.listen()
        server.add_listener(unix)
        assert ask(path, "echo added").split()[0] == "added"


def test_add_listener_refuses_datagram_sockets():
    with gearshift.Server(("127.0.0.1", 0), LineHandler) as server, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, pytest.raises(ValueError):
        server.add_listener(udp)


def test_adopted_listener():
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = gearshift.Server(None, LineHandler, listener=sock)
    assert server.socket is sock
    assert server.server_address == ("127.0.0.1", port)
    with serve(server):
        assert ask(("127.0.0.1", port), "echo adopted").split()[0] == "adopted"
    assert sock.fileno() == -1


def test_port_is_free_right_after_server_close():
    with serve(gearshift.Server(("127.0.0.1", 0), LineHandler)) as server:
        port = server.server_address[1]
        ask(server.server_address, "echo x")
    with gearshift.Server(("127.0.0.1", port), LineHandler) as again:
        assert again.server_address[1] == port
