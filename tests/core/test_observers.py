"""Observer hooks on a plain socketserver-style server (no HTTP): the connection events and the
server's start and stop, for the in-process strategies (tests/http/test_observers.py covers every
strategy, over HTTP), and a plugin registered while the server runs."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from core_helpers import HANG_GUARD, LineHandler, ask, serve

import gearshift
from gearshift import Server


class Events:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[str, Any]] = []
        self.closed = threading.Event()

    def add(self, event: str, value: Any = None) -> None:
        with self.lock:
            self.events.append((event, value))

    def kinds(self) -> list[str]:
        with self.lock:
            return [event for event, _ in self.events]

    @gearshift.hookimpl
    def gearshift_server_started(self, server: Any) -> None:
        self.add("started", server)

    @gearshift.hookimpl
    def gearshift_server_stopping(self, server: Any) -> None:
        self.add("stopping", server)

    @gearshift.hookimpl
    def gearshift_connection_accepted(self, request: Any, client_address: Any) -> None:
        self.add("accepted", (request.fileno(), client_address))

    @gearshift.hookimpl
    def gearshift_connection_closed(self, request: Any, client_address: Any) -> None:
        self.add("closed", client_address)
        self.closed.set()

    @gearshift.hookimpl
    def gearshift_request_finished(self, record: Any) -> None:
        self.add("request", record)


@pytest.fixture
def events() -> Iterator[Events]:
    observer = Events()
    gearshift.register_plugin(observer)
    try:
        yield observer
    finally:
        gearshift.unregister_plugin(observer)


@pytest.mark.parametrize("strategy", ["sync", "thread", "threadpool"])
def test_connection_and_server_events(events: Events, strategy: str) -> None:
    server = Server(("127.0.0.1", 0), LineHandler, strategy)
    with serve(server):
        assert ask(server.server_address, "echo hello").startswith("hello ")
        assert events.closed.wait(HANG_GUARD)
    kinds = events.kinds()
    assert kinds == ["started", "accepted", "closed", "stopping"], kinds
    (_, (fileno, accepted_from)), (_, closed_from) = events.events[1:3]
    assert fileno >= 0 and accepted_from == closed_from and accepted_from[0] == "127.0.0.1"
    assert events.events[0][1] is server and events.events[3][1] is server


def test_a_plugin_registered_while_the_server_runs_sees_what_follows(events: Events) -> None:
    server = Server(("127.0.0.1", 0), LineHandler, "threadpool")
    late = Events()
    with serve(server):
        assert ask(server.server_address, "echo before").startswith("before ")
        # The client has its answer before the worker closes that connection: the plugin is
        # registered once it has, or it would see the first connection's close.
        assert events.closed.wait(HANG_GUARD)
        gearshift.register_plugin(late)
        try:
            assert ask(server.server_address, "echo after").startswith("after ")
            assert late.closed.wait(HANG_GUARD)
        finally:
            gearshift.unregister_plugin(late)
        assert ask(server.server_address, "echo gone").startswith("gone ")
    assert late.kinds() == ["accepted", "closed"]


def test_a_server_closed_without_serving_tells_no_observer(events: Events) -> None:
    Server(("127.0.0.1", 0), LineHandler, "thread").server_close()
    assert events.kinds() == []
