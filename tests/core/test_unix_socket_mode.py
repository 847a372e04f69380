"""``umask=``: the permission bits of the Unix sockets a server binds (nginx, running as another
user, needs write permission on the socket file to connect)."""

from __future__ import annotations

import os
import socket
import socketserver
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import gearshift
from gearshift.core.listeners import create_listener

pytestmark = pytest.mark.timeout(30)


class Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        pass


def _app(environ: object, start_response: object) -> list[bytes]:
    return []


@pytest.fixture
def process_umask() -> Iterator[int]:
    """A process umask (0o022) that differs from what the tests ask for, restored afterwards."""
    previous = os.umask(0o022)
    try:
        yield 0o022
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    info = os.stat(path)
    assert stat.S_ISSOCK(info.st_mode)
    return stat.S_IMODE(info.st_mode)


@pytest.mark.parametrize(("umask", "mode"), [(0o007, 0o770), (0o077, 0o700), (0, 0o777), (0o777, 0)])
def test_server_sets_the_unix_socket_mode(tmp_path: Path, process_umask: int, umask: int, mode: int) -> None:
    path = tmp_path / "s.sock"
    with gearshift.Server(str(path), Handler, umask=umask) as server:
        assert _mode(path) == mode and server.umask == umask


def test_without_umask_the_process_umask_applies(tmp_path: Path, process_umask: int) -> None:
    path = tmp_path / "s.sock"
    with gearshift.Server(str(path), Handler):
        assert _mode(path) == 0o777 & ~process_umask


def test_make_server_and_create_listener_take_umask(tmp_path: Path, process_umask: int) -> None:
    path = tmp_path / "http.sock"
    with gearshift.make_server(f"unix:{path}", 0, _app, umask=0o007):
        assert _mode(path) == 0o770
    other = tmp_path / "other.sock"
    sock = create_listener(str(other), umask=0o002)
    try:
        assert _mode(other) == 0o775
    finally:
        sock.close()


def test_umask_is_ignored_for_tcp() -> None:
    with gearshift.Server(("127.0.0.1", 0), Handler, umask=0o007) as server:
        assert server.socket.family == socket.AF_INET


@pytest.mark.parametrize("bad", [-1, 0o1000, True, "007", 7.0])
def test_bad_umask_is_a_value_error(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ValueError, match="umask must be None or an int from 0 to 0o777"):
        gearshift.Server(str(tmp_path / "s.sock"), Handler, umask=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="umask must be"):
        gearshift.make_server(f"unix:{tmp_path / 'h.sock'}", 0, _app, umask=bad)  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())
