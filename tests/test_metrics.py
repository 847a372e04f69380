"""``gearshift.metrics``: Prometheus metrics on the observer hooks, scraped over HTTP with a real
client and parsed with prometheus_client's own parser, checked against the requests made.

``threadpool`` runs in this process (make_server and ``gearshift.metrics.enable``); ``prefork``
runs through the ``gearshift`` command in a subprocess (``--metrics-bind``), since it forks and
needs prometheus_client's multiprocess mode chosen before prometheus_client is imported. The
slow requests wait on an event: a ``threading.Event`` in this process, a socket the test holds
for the command's workers."""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import (
    BackgroundRequest,
    GearshiftProcess,
    children_of,
    clean_env,
    holding_the_listener,
    port_is_free,
    request,
    run_gearshift,
)
from core_helpers import HANG_GUARD, serve, wait_for

import gearshift
from gearshift import metrics as gearshift_metrics
from gearshift.core.plugins import observers

pytestmark = pytest.mark.timeout(90)

prometheus_parser = pytest.importorskip("prometheus_client.parser")

METRICS_LINE = r"serving metrics on http://127\.0\.0\.1:(\d+)/metrics"
READY = r"worker \d+ \(pid (\d+)\) is ready"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """GET /metrics, parsed: {(sample name, sorted labels): value}."""
    status, headers, body = request(("127.0.0.1", port), "/metrics")
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in prometheus_parser.text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def requests_by_label(samples: Samples) -> dict[tuple[str, str], float]:
    """gearshift_requests_total as {(status_class, method): count}."""
    return {(dict(labels)["status_class"], dict(labels)["method"]): count
            for (name, labels), count in samples.items() if name == "gearshift_requests_total"}


def durations_by_class(samples: Samples) -> dict[str, float]:
    return {dict(labels)["status_class"]: count
            for (name, labels), count in samples.items() if name == "gearshift_request_duration_seconds_count"}


def scrape_until(port: int, condition: Any, what: str) -> Samples:
    """Scrape until ``condition(samples)`` holds: the hooks run after a response has gone out,
    and a prefork worker writes its load every PUBLISH_EVERY seconds."""
    found: list[Samples] = []

    def check() -> bool:
        found[:] = [scrape(port)]
        return bool(condition(found[0]))

    assert wait_for(check, HANG_GUARD, interval=0.05), f"{what}; last scrape: {found[0] if found else None}"
    return found[0]


def send_malformed(port: int) -> bytes:
    """A request line that is not HTTP: the server answers 400 and closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD) as sock:
        sock.sendall(b"GARBAGE\r\n\r\n")
        with sock.makefile("rb") as answer:
            return answer.read()


def make_known_requests(port: int) -> list[int]:
    """3 GET 200, 1 POST 200, 2 GET 404, 1 malformed 400, each on its own connection; returns
    the pids the 200s came from (the app answers its pid)."""
    pids = []
    for _ in range(3):
        status, _, body = request(("127.0.0.1", port), "/")
        assert status == 200
        pids.append(int(body))
    assert request(("127.0.0.1", port), "/", method="POST", body=b"x")[0] == 200
    for _ in range(2):
        assert request(("127.0.0.1", port), "/missing")[0] == 404
    assert send_malformed(port).startswith(b"HTTP/1.1 400 ")
    return pids


KNOWN_REQUESTS = {("2xx", "GET"): 3, ("2xx", "POST"): 1, ("4xx", "GET"): 2, ("4xx", "other"): 1}
KNOWN_CONNECTIONS = 7


# -- threadpool, in this process ----------------------------------------------------------------


class SlowApp:
    """``/slow`` waits in its handler until ``release`` is set; ``entered`` counts the handlers
    that are waiting."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self._entered = 0
        self._changed = threading.Condition()

    def entered(self, count: int) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self._entered >= count, HANG_GUARD)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ["PATH_INFO"]
        if path == "/missing":
            start_response("404 Not Found", [("Content-Length", "0")])
            return [b""]
        if path == "/slow":
            with self._changed:
                self._entered += 1
                self._changed.notify_all()
            self.release.wait(HANG_GUARD)
        body = str(os.getpid()).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]


@contextmanager
def threadpool_with_metrics(app: SlowApp, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, int]]:
    """A threadpool server of 2 threads with metrics enabled, serving: (its port, the metrics port)."""
    monkeypatch.delenv(gearshift_metrics.MULTIPROC_DIR, raising=False)
    server = gearshift.make_server("127.0.0.1", 0, app, "threadpool", threads=2)
    try:
        metrics = gearshift_metrics.enable(server, ("127.0.0.1", 0))
    except BaseException:
        server.server_close()
        raise
    try:
        with serve(server):
            yield server.server_address[1], metrics.server_address[1]
    finally:
        metrics.close()


def test_threadpool_counts_requests_exactly_and_the_endpoint_serves_only_metrics(
        monkeypatch: pytest.MonkeyPatch) -> None:
    app = SlowApp()
    with threadpool_with_metrics(app, monkeypatch) as (port, metrics_port):
        make_known_requests(port)
        samples = scrape_until(metrics_port, lambda s: sum(requests_by_label(s).values()) == 7, "7 requests")
        samples = scrape_until(metrics_port, lambda s: value(s, "gearshift_connections_open") == 0,
                               "every connection closed")
        assert requests_by_label(samples) == KNOWN_REQUESTS  # the scrapes are not counted
        assert durations_by_class(samples) == {"2xx": 4, "4xx": 3}
        assert value(samples, "gearshift_connections_accepted_total") == KNOWN_CONNECTIONS
        assert value(samples, "gearshift_threads") == 2
        assert value(samples, "gearshift_handlers_busy") == 0
        assert value(samples, "gearshift_workers") is None  # not a strategy with worker processes
        status, _, body = request(("127.0.0.1", metrics_port), "/")
        assert status == 404 and b"/metrics" in body


def test_threadpool_gauges_show_busy_threads_and_the_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    app = SlowApp()
    with threadpool_with_metrics(app, monkeypatch) as (port, metrics_port):
        slow = [BackgroundRequest(("127.0.0.1", port), "/slow") for _ in range(3)]
        try:
            assert app.entered(2)  # both threads are in a handler; the third request waits
            samples = scrape_until(metrics_port, lambda s: value(s, "gearshift_queue_depth") == 1,
                                   "the third request queued")
            assert value(samples, "gearshift_handlers_busy") == 2
            assert value(samples, "gearshift_threads") == 2
            assert value(samples, "gearshift_connections_open") == 3
        finally:
            app.release.set()
            for background in slow:
                background.join(HANG_GUARD)
        assert [b.result[0] if b.result else b.error for b in slow] == [200, 200, 200]
        samples = scrape_until(metrics_port, lambda s: value(s, "gearshift_handlers_busy") == 0, "idle again")
        assert value(samples, "gearshift_queue_depth") == 0


@pytest.mark.parametrize("strategy", ["sync", "thread", "threadpool"])
def test_strategy_stats_count_the_handlers_in_flight(strategy: str) -> None:
    app = SlowApp()
    server = gearshift.make_server("127.0.0.1", 0, app, strategy)
    with serve(server):
        assert server.strategy.stats()["busy"] == 0
        slow = BackgroundRequest(("127.0.0.1", server.server_address[1]), "/slow")
        try:
            assert app.entered(1)
            assert server.strategy.stats()["busy"] == 1
        finally:
            app.release.set()
            slow.join(HANG_GUARD)
        assert slow.result is not None and slow.result[0] == 200
        assert wait_for(lambda: server.strategy.stats()["busy"] == 0)


def test_metrics_register_hooks_only_while_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server without metrics pays nothing: no observer is registered, so every hook is skipped."""
    assert observers().request_finished == ()
    with threadpool_with_metrics(SlowApp(), monkeypatch):
        assert len(observers().request_finished) == 1
    assert observers().request_finished == () and observers().connection_accepted == ()


def test_without_prometheus_client_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # what an import of a missing module does
    hint = re.escape("pip install 'gearshift[prometheus]'")
    with (gearshift.make_server("127.0.0.1", 0, SlowApp(), "threadpool") as server,
          pytest.raises(gearshift_metrics.MetricsError, match=hint)):
        gearshift_metrics.enable(server, ("127.0.0.1", 0))
    assert observers().request_finished == ()


def test_fork_is_refused_by_its_flags() -> None:
    with (gearshift.make_server("127.0.0.1", 0, SlowApp(), "fork") as server,
          pytest.raises(ValueError, match="short-lived processes.*prefork")):
        gearshift_metrics.enable(server, ("127.0.0.1", 0))


# -- the command's errors -----------------------------------------------------------------------


def one_line_error(result: Any) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gearshift: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_cli_without_prometheus_client_prints_one_line() -> None:
    hide = "import sys; sys.modules['prometheus_client'] = None; from gearshift.cli import main; sys.exit(main())"
    result = run_gearshift(["-b", "127.0.0.1:0", "--metrics-bind", "127.0.0.1:0"],
                           command=[sys.executable, "-c", hide])
    assert result.returncode == 1
    assert "pip install 'gearshift[prometheus]'" in one_line_error(result)


def test_cli_metrics_bind_on_a_busy_port_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_gearshift(["-b", "127.0.0.1:0", "--metrics-bind", f"127.0.0.1:{port}"])
    assert result.returncode == 1
    assert one_line_error(result) == (f"gearshift: error: --metrics-bind: cannot listen on 127.0.0.1:{port}: "
                                      f"address already in use (is another server running?)")


@pytest.mark.parametrize(("args", "message"), [
    (["-s", "fork", "--metrics-bind", "127.0.0.1:0"], "--metrics-bind: metrics cannot follow strategy 'fork'"),
    (["--metrics-bind", "unix:/tmp/metrics.sock"], "--metrics-bind takes HOST:PORT or [IPV6]:PORT"),
])
def test_cli_refuses_what_metrics_cannot_follow(args: list[str], message: str) -> None:
    result = run_gearshift(["-b", "127.0.0.1:0", *args])
    assert result.returncode == 2
    assert message in one_line_error(result)


# -- prefork x threadpool, through the command ----------------------------------------------------

APP = textwrap.dedent('''
    import os, socket

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/missing":
            start_response("404 Not Found", [("Content-Length", "0")])
            return [b""]
        if path == "/slow":  # wait for the test: it accepts this connection, then sends a byte
            with socket.create_connection(("127.0.0.1", int(environ["QUERY_STRING"])), timeout=30) as event:
                event.sendall(str(os.getpid()).encode())
                event.recv(1)
        body = str(os.getpid()).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
''')


def kill_and_replace(master: GearshiftProcess, pid: int, ready: int) -> set[int]:
    """SIGKILL worker ``pid``; return the workers once its replacement (the ``ready``-th worker
    to start) is ready."""
    os.kill(pid, signal.SIGKILL)
    master.wait_for(rf"replacing worker \d+ \(pid {pid}\)")
    master.wait_for(READY, count=ready)
    assert wait_for(lambda: pid not in children_of(master.pid) and len(children_of(master.pid)) == 2)
    return set(children_of(master.pid))


def test_prefork_counts_across_workers_and_keeps_a_dead_workers_counts(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()  # where the multiprocess directory is made: empty again at the end
    command = ["app:app", "-s", "prefork", "-w", "2", "--threads", "2", "-b", "127.0.0.1:0",
               "--metrics-bind", "127.0.0.1:0", "--log-level", "debug"]
    with GearshiftProcess(command, cwd=tmp_path, env=clean_env(TMPDIR=str(private_tmp))) as master:
        port = master.address()[1]
        metrics_port = int(master.wait_for(METRICS_LINE)[0][1])
        master.wait_for(READY, count=2)
        samples = scrape_until(metrics_port, lambda s: value(s, "gearshift_threads") == 4,
                               "2 workers x 2 threads published")
        assert value(samples, "gearshift_workers") == 2
        assert len(os.listdir(private_tmp)) == 1

        served_by = make_known_requests(port)
        samples = scrape_until(metrics_port, lambda s: sum(requests_by_label(s).values()) == 7, "7 requests")
        assert requests_by_label(samples) == KNOWN_REQUESTS
        assert durations_by_class(samples) == {"2xx": 4, "4xx": 3}
        assert value(samples, "gearshift_connections_accepted_total") == KNOWN_CONNECTIONS

        # The metrics listener stays in the master: the workers closed their copies at fork.
        workers = set(children_of(master.pid))
        assert len(workers) == 2
        assert holding_the_listener([master.pid, *workers], metrics_port) == [master.pid]

        # A worker that served some of them is killed and replaced: its counts stay.
        victim = served_by[0]
        assert victim in workers
        replaced = kill_and_replace(master, victim, ready=3)
        samples = scrape_until(metrics_port, lambda s: value(s, "gearshift_threads") == 4, "the new worker published")
        assert value(samples, "gearshift_workers") == 2
        assert requests_by_label(samples) == KNOWN_REQUESTS
        assert durations_by_class(samples) == {"2xx": 4, "4xx": 3}

        # A slow request: one thread of one worker busy. That worker killed and replaced, its
        # load is gone with it (mark_process_dead): none busy.
        with socket.socket() as event:
            event.bind(("127.0.0.1", 0))
            event.listen()
            event.settimeout(HANG_GUARD)
            slow = BackgroundRequest(("127.0.0.1", port), f"/slow?{event.getsockname()[1]}")
            in_handler, _ = event.accept()
            with in_handler:
                busy_worker = int(in_handler.recv(32))
                samples = scrape_until(metrics_port, lambda s: value(s, "gearshift_handlers_busy") == 1,
                                       "one handler busy")
                assert value(samples, "gearshift_queue_depth") == 0
                assert value(samples, "gearshift_connections_open") == 1
                assert busy_worker in replaced
                kill_and_replace(master, busy_worker, ready=4)
            slow.join(HANG_GUARD)
        assert slow.result is None  # its worker was killed with it
        samples = scrape_until(metrics_port, lambda s: value(s, "gearshift_handlers_busy") == 0
                               and value(s, "gearshift_connections_open") == 0, "the dead worker's load gone")
        assert value(samples, "gearshift_workers") == 2
        assert requests_by_label(samples) == KNOWN_REQUESTS

        assert master.stop(signal.SIGTERM) == 0, master.stderr
        assert port_is_free("127.0.0.1", metrics_port)
        assert os.listdir(private_tmp) == []  # the multiprocess directory is removed
        assert "Traceback" not in master.stderr


def test_a_scrape_skips_a_file_a_process_has_created_and_not_sized_yet(tmp_path: Path) -> None:
    # prometheus_client creates a process's file empty and sizes it an instant later; its own
    # collector fails on the file in between, which answered a scrape 500 during a worker's start.
    import struct

    from prometheus_client.multiprocess import MultiProcessCollector

    from gearshift.metrics import _ProcessFiles

    empty = tmp_path / "counter_4242.db"
    empty.touch()
    with pytest.raises(struct.error):
        MultiProcessCollector.merge([str(empty)], accumulate=True)
    assert list(_ProcessFiles(str(tmp_path)).collect()) == []
