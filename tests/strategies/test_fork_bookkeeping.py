"""Stateful test of the fork strategy's child bookkeeping against a real server subprocess.

Clients arrive (connect and send ``wait TOKEN``: the server forks a child that answers
``started`` and then blocks until the client says ``finish``) and complete (send ``finish``, read
the reply, close) in any order. However they interleave, the server never has more than
max_children children, running or zombie, and once everything has completed every child is reaped.

The model: connections are served in arrival order, so the clients that have a child are the
first ``max_children`` open ones; later ones wait (accepted by the parent, which waits for a free
slot, or in the kernel's backlog). Only clients that have a child can complete: completing a
waiting one would wait for a slot that only another completion can free.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import pytest
from core_helpers import FORK_AND_PROC, ForkServerProcess, connect, read_line, wait_for
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

MAX_CHILDREN = 3


@dataclass
class Client:
    sock: socket.socket
    token: str
    child: int | None = None  # the pid of the child serving it, once it said "started"


class ForkBookkeeping(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.server = ForkServerProcess("--max-children", str(MAX_CHILDREN), "--poll-interval", "0.05")
        self.clients: list[Client] = []  # open clients, in arrival order
        self.tokens = 0

    def _await_child(self, client: Client) -> None:
        """Read the "started PID" of a client that has (or is about to get) a child."""
        if client.child is None:
            started, pid = read_line(client.sock).decode().split()
            assert started == "started"
            client.child = int(pid)
            assert client.child != self.server.pid

    @rule()
    def arrive(self) -> None:
        self.tokens += 1
        client = Client(connect(self.server.address), f"t{self.tokens}")
        self.clients.append(client)
        # Sending never blocks: a waiting connection sits in the backlog.
        client.sock.sendall(f"wait {client.token}\n".encode())
        if len(self.clients) <= MAX_CHILDREN:
            self._await_child(client)

    @rule(data=st.data())
    def complete(self, data) -> None:
        # No precondition: an unsatisfiable rule choice makes hypothesis discard the example,
        # and every example costs a server subprocess. With no client this step does nothing.
        if not self.clients:
            return
        served = min(len(self.clients), MAX_CHILDREN)
        client = self.clients.pop(data.draw(st.integers(0, served - 1), label="client"))
        with client.sock:
            self._await_child(client)  # it may have been waiting for a slot until now
            client.sock.sendall(b"finish\n")
            assert read_line(client.sock).decode().split() == ["done", client.token, str(client.child)]

    @invariant()
    def never_more_than_max_children(self) -> None:
        children = self.server.children()  # running and zombie alike
        assert len(children) <= MAX_CHILDREN, f"{len(children)} children: {children}"
        # every child a client heard from is still blocked on that client, so it is still there
        for client in self.clients:
            if client.child is not None:
                assert client.child in children

    def teardown(self) -> None:
        try:
            while self.clients:
                client = self.clients.pop(0)
                with client.sock:
                    self._await_child(client)
                    client.sock.sendall(b"finish\n")
                    assert read_line(client.sock).decode().split()[:2] == ["done", client.token]
            assert wait_for(lambda: not self.server.children(), timeout=3), (
                f"children not reaped: {self.server.children()} (zombies: {self.server.zombies()})"
            )
        finally:
            for client in self.clients:
                client.sock.close()
            self.server.close()


ForkBookkeeping.TestCase.settings = settings(
    max_examples=10,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

TestForkBookkeeping = pytest.mark.skipif(not FORK_AND_PROC, reason="needs os.fork and Linux /proc")(
    pytest.mark.timeout(120)(ForkBookkeeping.TestCase)
)
