"""Every built-in strategy against the conformance kit (gearshift.testing), as a third party's
strategy would be tested: the kit's servers run in subprocesses, so `fork` never forks from
pytest's threaded process."""

from __future__ import annotations

from gearshift.testing import StrategyContract


class TestSync(StrategyContract):
    strategy = "sync"


class TestThread(StrategyContract):
    strategy = "thread"


class TestThreadpool(StrategyContract):
    strategy = "threadpool"
    options = {"threads": 4}


class TestFork(StrategyContract):
    strategy = "fork"


class TestPrefork(StrategyContract):
    # threads=4: a worker may accept every one of the kit's 3 clients (the workers share one
    # listener, and a worker accepts what is waiting), so each worker must be able to run 3.
    strategy = "prefork"
    options = {"workers": 2, "worker_strategy": "threadpool", "threads": 4}
