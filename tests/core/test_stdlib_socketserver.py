"""CPython's own Lib/test/test_socketserver.py, run against gearshift.socketserver.

The stdlib test module (the one of the interpreter running pytest) is loaded under another name
with ``socketserver`` bound to a namespace of gearshift.socketserver's names while its code
runs, so every class it defines and every server it builds is gearshift's; nothing else of it is
changed. The datagram server names are placeholders that refuse to be instantiated (3.11's module
derives classes from them at import time). Its unittest TestCase classes are collected by pytest
from this module's namespace.

Skipped, each with its reason below: the datagram server tests (gearshift serves stream sockets
only) and the check of the stdlib module's own ``__all__``.
"""

from __future__ import annotations

import importlib.util
import sys
import types
import unittest
from collections.abc import Iterator
from pathlib import Path

import pytest

import gearshift.socketserver

pytestmark = [
    pytest.mark.timeout(60),
    # The stdlib suite's ForkingMixIn servers fork from their serve_forever() thread, by design.
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded, use of fork:DeprecationWarning"),
]

DATAGRAM = "datagram servers are out of scope: gearshift serves stream sockets only"


def _datagram_placeholder(name: str) -> type:
    # Stands for a stdlib datagram server class in the namespace the stdlib tests see: 3.11's test
    # module derives classes from them at import time; the tests using them are skipped.
    def __init__(self: object, *args: object, **kwargs: object) -> None:
        raise NotImplementedError(DATAGRAM)

    return type(name, (), {"__init__": __init__})


def _load_stdlib_tests() -> types.ModuleType:
    namespace = types.ModuleType("socketserver")
    namespace.__dict__.update(
        (name, getattr(gearshift.socketserver, name)) for name in gearshift.socketserver.__all__
    )
    for name in gearshift.socketserver._DATAGRAM_SERVERS:
        setattr(namespace, name, _datagram_placeholder(name))
    try:
        found = importlib.util.find_spec("test.test_socketserver")
    except ImportError:  # no ``test`` package at all
        found = None
    if found is None or found.origin is None:
        # Some distributions ship the interpreter without its test suite (Debian's libpython3-testsuite).
        pytest.skip("this interpreter ships without test.test_socketserver", allow_module_level=True)
    spec = importlib.util.spec_from_file_location("gearshift_stdlib_test_socketserver", found.origin)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    saved = sys.modules["socketserver"]
    sys.modules["socketserver"] = namespace  # what the module's ``import socketserver`` binds
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules["socketserver"] = saved
    assert module.socketserver is namespace
    return module


stdlib = _load_stdlib_tests()


def _skipping(base: type[unittest.TestCase], reasons: dict[str, str]) -> type[unittest.TestCase]:
    """``base`` with the named tests skipped for the given reasons (every name must exist)."""
    missing = [name for name in reasons if not hasattr(base, name)]
    assert not missing, f"no such tests in {base.__name__}: {missing}"

    def skipped(reason: str) -> object:
        @unittest.skip(reason)
        def test(self: unittest.TestCase) -> None:
            """Skipped."""

        return test

    return type(base.__name__, (base,), {name: skipped(reason) for name, reason in reasons.items()})


_DATAGRAM_TESTS = [
    name for name in dir(stdlib.SocketServerTest)
    if name.startswith("test_") and ("UDP" in name or "Datagram" in name)
]

SocketServerTest = _skipping(stdlib.SocketServerTest, dict.fromkeys(_DATAGRAM_TESTS, DATAGRAM))
ErrorHandlerTest = stdlib.ErrorHandlerTest
SocketWriterTest = stdlib.SocketWriterTest
MiscTestCase = _skipping(stdlib.MiscTestCase, {
    "test_all": "checks the stdlib module's __all__ against the objects it defines itself; "
                "gearshift.socketserver's __all__ is checked in test_socketserver_compat.py",
})


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # The stdlib tests create their files (os_helper.TESTFN, Unix socket paths) in the cwd.
    monkeypatch.chdir(tmp_path)
    yield


def test_the_stdlib_tests_are_collected_and_use_gearshift() -> None:
    assert issubclass(stdlib.BaseErrorTestServer, gearshift.Server)
    assert len(_DATAGRAM_TESTS) == 6, _DATAGRAM_TESTS
