"""The observer hooks seen from a plugin, under every strategy: a recording plugin registered
in the server's process (tests/http/recording_observer.py) writes each event it gets, from
whichever process it happens in, and the test checks them against what its clients did."""

from __future__ import annotations

import collections
import os
from typing import Any

import pytest
from client import STRATEGIES, Client, ServerProcess, raw_exchange, status_of, wait_until
from recording_observer import events

WORKERS = {"prefork": {"workers": 2}}


def serve_and_record(strategy: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                     fail: bool = False) -> tuple[list[dict], str, int]:
    """Serve under ``strategy``, make two connections (two requests, then a bad one), stop the
    server; returns the events recorded, what the server logged, and its pid."""
    log = tmp_path / "events.jsonl"
    monkeypatch.setenv("TEST_OBSERVER_LOG", str(log))
    if fail:
        monkeypatch.setenv("TEST_OBSERVER_FAIL", "1")
    server = ServerProcess(strategy, WORKERS.get(strategy))
    try:
        with Client(server.port) as client:
            assert client.request("GET", "/noread").status == 200
            assert client.request("POST", "/echo", body=b"hello").body == b"hello"
        assert status_of(raw_exchange(server.port, b"GARBAGE\r\n\r\n")) == 400
        # The connections close in their handler's thread or process, maybe after the answer:
        # wait until the recorder has seen both go (or the assertions below say what is missing).
        wait_until(lambda: sum(e["event"] == "closed" for e in events(str(log))) >= 2)
    finally:
        output = server.stop()
    return events(str(log)), output, server.proc.pid


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_event_reaches_the_observer(strategy: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    recorded, output, pid = serve_and_record(strategy, tmp_path, monkeypatch)
    by_kind = collections.defaultdict(list)
    for event in recorded:
        by_kind[event["event"]].append(event)

    assert [e["pid"] for e in by_kind["started"]] == [pid]
    assert [e["pid"] for e in by_kind["stopping"]] == [pid]

    requests = by_kind["request"]
    # Sorted: a request is recorded after its answer went out, maybe after the next one began.
    assert sorted((e["path"], e["method"], e["status"], e["size"]) for e in requests) == [
        ("-", "-", 400, len(b"invalid request method\n")), ("/echo", "POST", 200, 5), ("/noread", "GET", 200, 2),
    ]
    assert all(e["duration"] >= 0 and e["worker"] == e["pid"] for e in requests)

    accepted = collections.Counter(e["client"] for e in by_kind["accepted"])
    closed = collections.Counter(e["client"] for e in by_kind["closed"])
    assert len(accepted) == 2 and accepted == closed, (accepted, closed)
    if strategy == "prefork":
        started = {e["worker"] for e in by_kind["worker_started"]}
        exited = {e["worker"]: e["exitcode"] for e in by_kind["worker_exited"]}
        assert len(started) == 2 and exited == dict.fromkeys(started, 0), (started, exited)
        assert all(e["pid"] == pid for e in by_kind["worker_started"] + by_kind["worker_exited"])
        assert {e["pid"] for e in requests} <= started  # served in the workers, seen there
    else:
        assert not by_kind["worker_started"] and not by_kind["worker_exited"]
    assert "Traceback" not in output


@pytest.mark.parametrize("strategy", ["threadpool", "prefork"])
def test_a_failing_observer_is_logged_and_breaks_nothing(strategy: str, tmp_path: Any,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    recorded, output, pid = serve_and_record(strategy, tmp_path, monkeypatch, fail=True)
    assert sorted(e["status"] for e in recorded if e["event"] == "request") == [200, 200, 400]
    for hook in ("server_started", "connection_accepted", "connection_closed", "request_finished",
                 "server_stopping"):
        assert f"failed in gearshift_{hook}()" in output, hook
    assert "RuntimeError: this observer is broken" in output
    assert os.path.exists(tmp_path / "events.jsonl")
