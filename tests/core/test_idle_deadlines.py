"""The loop's idle deadlines (core.server._LoopState): each connection has one _Resume for its
life, and its heap entry is refreshed lazily, so the bookkeeping is checked against a model:
whatever the sequence of hand-backs, takes and expiries, a parked connection expires exactly
when its latest hand-back's deadline passes, never at an earlier one, and the heap stays
bounded by the connections, not by the requests they served."""

from __future__ import annotations

import socket
import threading
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gearshift.core.server import _LoopState, _Resume

pytestmark = pytest.mark.timeout(120)

CONNECTIONS = 3
TIMEOUTS = st.one_of(st.none(), st.floats(min_value=0.0, max_value=100.0))
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("hand_back"), st.integers(0, CONNECTIONS - 1), TIMEOUTS),
        st.tuples(st.just("take"), st.integers(0, CONNECTIONS - 1), st.none()),
        # expire at a parked connection's deadline, plus an offset (before it, at it, after it)
        st.tuples(st.just("expire"), st.integers(0, CONNECTIONS - 1), st.sampled_from([-1e-3, 0.0, 1e-3])),
    ),
    max_size=60,
)


def loop_thread() -> types.SimpleNamespace:
    """What hand_back() reads of its server: the loop's thread, this one (so it never wakes)."""
    return types.SimpleNamespace(_run=types.SimpleNamespace(loop_thread=threading.get_ident()))


@settings(max_examples=300, deadline=None)
@given(OPERATIONS)
def test_a_parked_connection_expires_at_its_latest_deadline(operations):
    server = loop_thread()
    loop = _LoopState()
    pairs = [socket.socketpair() for _ in range(CONNECTIONS)]
    resumes = [_Resume(a, f"peer{i}") for i, (a, _) in enumerate(pairs)]
    try:
        for op, i, arg in operations:
            resume = resumes[i]
            if op == "hand_back" and not resume.parked and resume.request.fileno() != -1:
                resume.idle_timeout = arg
                assert loop.hand_back(resume, server)
            elif op == "take" and resume.parked:
                loop.next_wait(None)  # a new turn: take() passes over what was handed back in this one
                assert loop.take(resume)
                assert not resume.parked
            elif op == "expire" and resume.parked and resume.deadline is not None:
                now = resume.deadline + arg
                due = {r for r in resumes if r.parked and r.deadline is not None and r.deadline <= now}
                assert set(loop.expired(now)) == due
                for r in due:
                    assert not r.parked
                    r.request.close()  # as handle_idle_timeout() closes it
            parked = [r.deadline for r in resumes if r.parked and r.deadline is not None]
            loop.next_wait(None)
            assert loop.wakes_at == (min(parked) if parked else float("inf"))
            assert len(loop._deadlines) <= 2 * CONNECTIONS
    finally:
        loop.close()
        for a, b in pairs:
            a.close()
            b.close()


def test_a_busy_connection_keeps_one_heap_entry():
    server = loop_thread()
    loop = _LoopState()
    a, b = socket.socketpair()
    resume = _Resume(a, "peer")
    resume.idle_timeout = 5.0
    try:
        for _ in range(1000):  # a keep-alive connection serving a thousand requests
            assert loop.hand_back(resume, server)
            loop.next_wait(None)
            assert loop.take(resume)
        assert loop.hand_back(resume, server)
        assert len(loop._deadlines) == 1
        assert loop.expired(resume.deadline - 1e-3) == []
        assert loop.expired(resume.deadline) == [resume]
    finally:
        loop.close()
        a.close()
        b.close()
