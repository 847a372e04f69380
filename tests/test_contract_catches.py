"""The conformance kit catches broken strategies: each strategy below breaks one rule of the
contract, and the kit's test for that rule fails, with a message that names it.

The kit runs in a pytester subprocess (a test module of its own, against strategies from a
module of its own), as a strategy author would run it; a correct strategy written the same way
passes the whole kit, so each failure is the broken rule's and not the harness's.
"""

from __future__ import annotations

import pytest

from gearshift.testing import RULES, StrategyContract

pytest_plugins = ["pytester"]

STRATEGIES = '''
"""A minimal correct strategy, and variants of it that each break one rule."""

import threading
import time

import gearshift


class Threads(gearshift.Strategy):
    """One daemon thread per request, joined by close(): correct."""

    name = "kit-threads"
    multithread = True
    lacks = frozenset({"terminate"})

    def __init__(self, server):
        super().__init__(server)
        self.threads = set()
        self.lock = threading.Lock()

    def process_request(self, request, client_address):
        thread = threading.Thread(target=self.run, args=(request, client_address), daemon=True)
        with self.lock:
            self.threads.add(thread)
        thread.start()

    def run(self, request, client_address):
        try:
            self.serve_one(request, client_address)
        finally:
            with self.lock:
                self.threads.discard(threading.current_thread())

    def serve_one(self, request, client_address):
        self.handle_connection(request, client_address)

    def close(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.lock:
            threads = list(self.threads)
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))


class NeverShutsDown(Threads):
    def serve_one(self, request, client_address):
        try:
            self.server.finish_request(request, client_address)
        except Exception:
            self.server.handle_error(request, client_address)


class ShutsDownTwice(Threads):
    def serve_one(self, request, client_address):
        self.handle_connection(request, client_address)
        self.server.shutdown_request(request)


class SwallowsErrors(Threads):
    def serve_one(self, request, client_address):
        try:
            self.server.finish_request(request, client_address)
        except Exception:
            pass
        finally:
            self.server.shutdown_request(request)


class ClaimsSingleThreaded(Threads):
    multithread = False


class LeaksAThread(Threads):
    def process_request(self, request, client_address):
        threading.Thread(target=threading.Event().wait, daemon=True).start()
        super().process_request(request, client_address)


class IgnoresCloseTimeout(Threads):
    def close(self, timeout=None):
        super().close(None)
'''

TESTS = '''
import broken_strategies
from gearshift.testing import StrategyContract


class TestThreads(StrategyContract):
    strategy = broken_strategies.Threads
'''

#: broken strategy -> (the kit's test for the rule it breaks, the rule)
BROKEN = {
    "NeverShutsDown": ("test_finish_request_and_shutdown_request_once_per_connection", "shutdown_request"),
    "ShutsDownTwice": ("test_finish_request_and_shutdown_request_once_per_connection", "shutdown_request"),
    "SwallowsErrors": ("test_handle_error_exactly_for_handlers_that_raised", "handle_error"),
    "ClaimsSingleThreaded": ("test_multithread_and_multiprocess_flags_are_honest", "multithread"),
    "LeaksAThread": ("test_nothing_leaks_after_server_close", "leaks"),
    "IgnoresCloseTimeout": ("test_close_returns_within_the_graceful_timeout_with_a_stuck_handler", "close_timeout"),
}


def _write(pytester: pytest.Pytester, strategy: str) -> None:
    tests = TESTS if strategy == "Threads" else TESTS + f"""

class Test{strategy}(StrategyContract):
    strategy = broken_strategies.{strategy}
"""
    pytester.makepyfile(broken_strategies=STRATEGIES, test_kit=tests)


def test_a_correct_strategy_passes_the_whole_kit(pytester: pytest.Pytester) -> None:
    _write(pytester, "Threads")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs")
    tests = [name for name in dir(StrategyContract) if name.startswith("test_")]
    result.assert_outcomes(passed=len(tests) - 1, skipped=1)
    result.stdout.fnmatch_lines(["*lacks 'terminate'*"])


@pytest.mark.parametrize("strategy", sorted(BROKEN))
def test_the_kit_fails_a_broken_strategy_naming_the_rule(pytester: pytest.Pytester, strategy: str) -> None:
    test, rule = BROKEN[strategy]
    _write(pytester, strategy)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"test_kit.py::Test{strategy}::{test}")
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    assert f"broken rule: {RULES[rule]}" in output, output
