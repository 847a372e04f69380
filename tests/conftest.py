"""Shared test set-up: helper modules in tests/ are importable from any test, and every test is
checked for leaks (threads, file descriptors, child processes) by one autouse fixture."""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from core_helpers import proc_children  # noqa: E402  (tests/ is on sys.path from here on)

#: How long teardown waits for what a test started to finish on its own (a request thread still
#: unwinding after its response was read, a server closing the connection the client just left).
#: Only there to turn a real leak into a failure; a clean test waits for nothing.
LEAK_GRACE = 10.0

_PROC_FD = "/proc/self/fd"


def _open_fds() -> set[int]:
    try:
        names = os.listdir(_PROC_FD)
    except FileNotFoundError:  # no /proc: the fd check is skipped
        return set()
    # listdir's own descriptor is in the listing, and closed by the time it is read
    return {int(name) for name in names} - _closed(names)


def _closed(names: list[str]) -> set[int]:
    closed = set()
    for name in names:
        try:
            os.fstat(int(name))
        except OSError:
            closed.add(int(name))
    return closed


def _describe_fds(fds: set[int]) -> str:
    described = []
    for fd in sorted(fds):
        try:
            target = os.readlink(f"{_PROC_FD}/{fd}")
        except OSError:
            target = "?"
        described.append(f"{fd} -> {target}")
    return ", ".join(described)


def _wait(predicate: Callable[[], bool], deadline: float) -> bool:
    """Poll a real condition until it holds or the deadline passes."""
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


class _Snapshot:
    """The threads, descriptors and children of this process at one moment."""

    def __init__(self) -> None:
        self.threads = set(threading.enumerate())
        self.fds = _open_fds()
        self.children = set(proc_children(os.getpid()))

    def assert_nothing_new(self, what: str) -> None:
        """Fail if something created since the snapshot is still there once it has had
        LEAK_GRACE seconds to finish: threads first, since a thread that is finishing may still
        hold a descriptor or a child."""
        deadline = time.monotonic() + LEAK_GRACE
        for thread in threading.enumerate():
            if thread not in self.threads and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        left = [t for t in threading.enumerate() if t not in self.threads and t.is_alive()]
        assert not left, f"{what} left threads running: {left}"

        def new_fds() -> set[int]:
            return _open_fds() - self.fds

        if not _wait(lambda: not new_fds(), min(deadline, time.monotonic() + 1.0)):
            # An object dropped in a reference cycle closes its descriptor when collected (and
            # warns, which pytest turns into an error): the check is for descriptors still held.
            gc.collect()
            if new_fds() and not _wait(lambda: not new_fds(), deadline):
                raise AssertionError(f"{what} left file descriptors open: {_describe_fds(new_fds())}")

        def new_children() -> set[int]:
            return set(proc_children(os.getpid())) - self.children

        assert _wait(lambda: not new_children(), deadline), (
            f"{what} left child processes (running or not reaped): {sorted(new_children())}"
        )


@pytest.fixture(autouse=True, scope="module")
def no_leaks_from_the_module() -> Iterator[None]:
    """The same check around a whole module, for what its module-scoped fixtures (a server
    shared by the module's tests) leave behind. Autouse fixtures are set up first in their
    scope, so this snapshot precedes those fixtures."""
    snapshot = _Snapshot()
    yield
    snapshot.assert_nothing_new("this module's fixtures")


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves behind a thread, a file descriptor or a child process it started.

    Module-scoped fixtures are set up before, and torn down after, this function-scoped
    fixture, so what they hold while the module runs is not counted here.
    """
    snapshot = _Snapshot()
    yield
    snapshot.assert_nothing_new("the test")
