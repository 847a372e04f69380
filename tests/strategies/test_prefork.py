"""``prefork``: a master supervising long-lived worker processes, each running an inner strategy.

Everything runs as a user would run it: the ``gearshift`` command in a subprocess of its own,
with real signals, real worker processes (counted from /proc) and HTTP load from threads of this
process. Options are checked in-process (no fork happens in the pytest process)."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cli_helpers import (
    BackgroundRequest,
    GearshiftProcess,
    children_of,
    clean_env,
    holding_a_connection,
    port_is_free,
    request,
    run_gearshift,
    write_dist_info,
)

import gearshift

pytestmark = pytest.mark.timeout(90)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_PLUGIN = REPO / "examples" / "reversed_strategy"
DEADLINE = 10.0  # for things that take milliseconds, on a loaded 2-core machine
READY = r"worker \d+ \(pid (\d+)\) is ready"

APP = textwrap.dedent('''
    import os, time

    VERSION = {version!r}
    HOARD = []

    def app(environ, start_response):
        path, query = environ["PATH_INFO"], environ.get("QUERY_STRING", "")
        if path == "/sleep":
            time.sleep(float(query or "1"))
        elif path == "/grow":
            HOARD.append(bytearray(int(query) * 2**20))
        elif path == "/environ":
            body = f"{{environ['wsgi.multithread']}} {{environ['wsgi.multiprocess']}}\\n".encode()
            start_response("200 OK", [("Content-Length", str(len(body)))])
            return [body]
        body = f"{{os.getpid()}} {{VERSION}}\\n".encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
''')


def write_app(directory: Path, version: str = "v1", name: str = "app") -> None:
    (directory / f"{name}.py").write_text(APP.format(version=version))
    for cached in (directory / "__pycache__").glob(f"{name}.*"):
        cached.unlink()


def wait_until(predicate, timeout: float = DEADLINE, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.02)


def workers_of(master: GearshiftProcess) -> set[int]:
    return set(children_of(master.pid))


@contextmanager
def prefork(tmp_path: Path, *args: str, workers: int = 2, env: dict[str, str] | None = None,
            wait: bool = True) -> Iterator[GearshiftProcess]:
    """``gearshift app:app -s prefork -w N ARGS`` in ``tmp_path``, until its workers are ready."""
    if not (tmp_path / "app.py").exists():
        write_app(tmp_path)
    command = ["app:app", "-s", "prefork", "-w", str(workers), "-b", "127.0.0.1:0", "--log-level", "debug", *args]
    with GearshiftProcess(command, cwd=tmp_path, env=env) as master:
        if wait:
            master.wait_ready()
            master.wait_for(READY, count=workers)
            wait_until(lambda: len(workers_of(master)) == workers, what=f"{workers} workers in /proc")
        yield master


def get(address: tuple[str, int], path: str = "/") -> tuple[int, str]:
    status, _, body = request(address, path)
    return status, body.decode()


def pid_of(address: tuple[str, int]) -> int:
    status, body = get(address)
    assert status == 200
    return int(body.split()[0])


class Load:
    """HTTP load from ``threads`` threads until stopped, counting answers by worker pid and
    failures. With ``keep_alive`` each thread reuses its connection; a reused connection that
    the server closed before it answered is retried on a new one (RFC 9112 9.3.1 lets a client
    retry an idempotent request there) and counted in ``retried``; every other error is a
    failure."""

    def __init__(self, address: tuple[str, int], threads: int = 4, keep_alive: bool = True) -> None:
        self.address, self.keep_alive = address, keep_alive
        self.served: Counter[int] = Counter()
        self.versions: Counter[str] = Counter()
        self.failures: list[str] = []
        self.retried = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.served.values())

    def wait_for(self, more: int, timeout: float = DEADLINE) -> None:
        target = self.total + more
        wait_until(lambda: self.total >= target or self.failures, timeout, f"{more} more requests")

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        used = False
        headers = {} if self.keep_alive else {"Connection": "close"}
        while not self._stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection(*self.address, timeout=DEADLINE)
                used = False
            try:
                conn.request("GET", "/", headers=headers)
                response = conn.getresponse()
                body = response.read().decode()
                status, closing = response.status, response.will_close
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                conn = None
                if used:
                    with self._lock:
                        self.retried += 1
                    continue
                self._fail(repr(exc))
                continue
            except Exception as exc:  # noqa: BLE001 - every other error is a failed request
                conn.close()
                conn = None
                self._fail(repr(exc))
                continue
            if status != 200:
                self._fail(f"status {status}: {body!r}")
            else:
                pid, version = body.split()
                with self._lock:
                    self.served[int(pid)] += 1
                    self.versions[version] += 1
            used = True
            if closing or not self.keep_alive:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def _fail(self, what: str) -> None:
        with self._lock:
            self.failures.append(what)
        time.sleep(0.01)  # a refused port must not spin

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(DEADLINE)
        assert not any(thread.is_alive() for thread in self._threads)


@contextmanager
def load(address: tuple[str, int], threads: int = 4, keep_alive: bool = True) -> Iterator[Load]:
    generator = Load(address, threads, keep_alive)
    try:
        yield generator
    finally:
        generator.stop()


def stop_cleanly(master: GearshiftProcess, address: tuple[str, int]) -> None:
    """SIGTERM: exit 0, no worker left, the port free."""
    workers = workers_of(master)
    assert master.stop(signal.SIGTERM) == 0, master.stderr
    assert not [pid for pid in workers if os.path.exists(f"/proc/{pid}")], master.stderr
    assert port_is_free(*address)


# -- the basics ----------------------------------------------------------------------------------


def test_workers_serve_and_a_term_stops_them_all(tmp_path: Path) -> None:
    with prefork(tmp_path, "--threads", "3") as master:
        address = master.address()
        workers = workers_of(master)
        assert len(workers) == 2 and master.pid not in workers
        with load(address, threads=4) as generator:
            generator.wait_for(200)
        assert not generator.failures
        assert set(generator.served) <= workers
        assert get(address, "/environ") == (200, "True True\n")  # threadpool inside: threads
        banner = master.wait_ready()
        assert banner and "workers=2, worker_strategy=threadpool" in master.stderr
        stop_cleanly(master, address)


def test_sigkill_of_a_worker_under_load_replaces_it_and_loses_only_its_requests(tmp_path: Path) -> None:
    with prefork(tmp_path) as master:
        address = master.address()
        with load(address, threads=4, keep_alive=False) as generator:
            generator.wait_for(50)
            victim = min(workers_of(master))
            os.kill(victim, signal.SIGKILL)
            started = time.monotonic()
            wait_until(lambda: len(workers_of(master) - {victim}) == 2, what="a replacement")
            replaced_in = time.monotonic() - started
            master.wait_for(rf"worker \d+ \(pid {victim}\) was killed by SIGKILL")
            generator.wait_for(100)
        # At most the requests the victim had in hand: one per client thread.
        assert len(generator.failures) <= 4, generator.failures
        assert victim not in workers_of(master) and replaced_in < DEADLINE
        stop_cleanly(master, address)


@pytest.mark.parametrize("keep_alive", [True, False], ids=["keep-alive", "close"])
def test_ttin_ttou_and_hup_under_load_fail_no_request(tmp_path: Path, keep_alive: bool) -> None:
    with prefork(tmp_path) as master:
        address = master.address()
        with load(address, threads=6, keep_alive=keep_alive) as generator:
            generator.wait_for(50)
            master.send(signal.SIGTTIN)
            master.wait_for("SIGTTIN: 3 workers")
            wait_until(lambda: len(workers_of(master)) == 3, what="a third worker")
            master.wait_for(READY, count=3)
            generator.wait_for(50)
            master.send(signal.SIGTTOU)
            master.wait_for("SIGTTOU: 2 workers")
            wait_until(lambda: len(workers_of(master)) == 2, what="one worker fewer")
            generator.wait_for(50)
            old = workers_of(master)
            write_app(tmp_path, "v2")
            master.send(signal.SIGHUP)
            master.wait_for("SIGHUP: reloading")
            wait_until(lambda: not (workers_of(master) & old) and len(workers_of(master)) == 2,
                       what="the old workers replaced")
            generator.wait_for(100)
        assert not generator.failures, generator.failures
        # A worker leaving keeps its keep-alive connections until their next request, answered
        # with Connection: close: a retry takes a request whose keep-alive answer was decided
        # in the microseconds before the worker began to stop, and its loop stopped first.
        assert generator.retried <= 2, generator.retried
        # The new workers imported the application afresh.
        assert generator.versions["v2"] > 0
        assert get(address)[1].split()[1] == "v2"
        stop_cleanly(master, address)


def test_sigterm_lets_slow_requests_finish(tmp_path: Path) -> None:
    with prefork(tmp_path) as master:
        address = master.address()
        slow = [BackgroundRequest(address, "/sleep?1.5") for _ in range(2)]
        wait_until(lambda: len(holding_a_connection(master.pid, address[1])) >= 1, what="requests in flight")
        time.sleep(0.2)  # both in their app call: they hold no more than a connection until then
        workers = workers_of(master)
        master.send(signal.SIGTERM)
        for background in slow:
            background.join(DEADLINE)
            assert background.error is None, background.error
            assert background.result is not None and background.result[0] == 200
        assert master.wait() == 0, master.stderr
        assert not [pid for pid in workers if os.path.exists(f"/proc/{pid}")]
        assert port_is_free(*address)
        assert "SIGTERM: stopped accepting" in master.stderr


def test_quit_stops_at_once(tmp_path: Path) -> None:
    with prefork(tmp_path) as master:
        address = master.address()
        slow = BackgroundRequest(address, "/sleep?30")
        wait_until(lambda: holding_a_connection(master.pid, address[1]), what="a request in flight")
        workers = workers_of(master)
        master.send(signal.SIGQUIT)
        assert master.wait() == 0
        slow.join(DEADLINE)
        assert slow.error is not None  # cut off
        assert not [pid for pid in workers if os.path.exists(f"/proc/{pid}")]
        assert "SIGQUIT: fast stop" in master.stderr


# -- supervision -------------------------------------------------------------------------------


def test_a_hung_sync_worker_is_dumped_and_replaced(tmp_path: Path) -> None:
    with prefork(tmp_path, "--worker-strategy", "sync", "--timeout", "1", workers=1) as master:
        address = master.address()
        hung = pid_of(address)
        stuck = BackgroundRequest(address, "/sleep?60", timeout=30)
        master.wait_for(rf"worker \d+ \(pid {hung}\) has not heartbeat for", timeout=DEADLINE)
        master.wait_for(rf"pid {hung}\) was killed by SIGKILL \(no heartbeat for 1 s\)")
        stuck.join(DEADLINE)
        assert stuck.error is not None  # its worker was killed under it
        # faulthandler's dump of the stuck thread, from C, while it slept in C.
        assert re.search(r'File ".*app\.py", line \d+ in app', master.stderr), master.stderr
        master.wait_for(READY, count=2)
        assert pid_of(address) != hung
        stop_cleanly(master, address)


def test_a_long_request_in_a_threaded_worker_is_not_a_hang(tmp_path: Path) -> None:
    with prefork(tmp_path, "--timeout", "1", workers=1) as master:
        address = master.address()
        worker = pid_of(address)
        assert get(address, "/sleep?2.5")[0] == 200
        assert pid_of(address) == worker
        assert "has not heartbeat" not in master.stderr
        stop_cleanly(master, address)


@pytest.mark.parametrize("keep_alive", [True, False], ids=["keep-alive", "close"])
def test_max_requests_recycles_workers_without_a_failed_request(tmp_path: Path, keep_alive: bool) -> None:
    with prefork(tmp_path, "--max-requests", "40", "--max-requests-jitter", "10") as master:
        address = master.address()
        with load(address, threads=4, keep_alive=keep_alive) as generator:
            generator.wait_for(400, timeout=30)
        assert not generator.failures, generator.failures
        # Workers were recycled; max_requests counts what the loop hands a worker, so a request
        # that a keep-alive handler found waiting when it finished the last one is not counted:
        # a worker serves somewhat more than max_requests + jitter (50), never unboundedly more.
        assert len(generator.served) >= 5 and max(generator.served.values()) <= 100, generator.served
        assert "served its max_requests" in master.stderr
        wait_until(lambda: len(workers_of(master)) == 2, what="two workers")
        stop_cleanly(master, address)


def test_max_worker_memory_replaces_a_worker_that_grew(tmp_path: Path) -> None:
    with prefork(tmp_path, "--max-worker-memory", "60M", workers=1) as master:
        address = master.address()
        big = pid_of(address)
        assert get(address, "/grow?80")[0] == 200
        master.wait_for(rf"stopping worker \d+ \(pid {big}\): its memory \(\d+ MiB\) is over max_worker_memory")
        wait_until(lambda: big not in workers_of(master) and len(workers_of(master)) == 1, what="a replacement")
        assert pid_of(address) != big
        stop_cleanly(master, address)


def test_a_worker_that_cannot_import_the_app_stops_the_master_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("import nosuchmodule_xyz\n")
    started = time.monotonic()
    result = run_gearshift(["broken:app", "-s", "prefork", "-w", "3", "-b", "127.0.0.1:0"], cwd=tmp_path)
    assert time.monotonic() - started < 20
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.stderr
    assert re.fullmatch(r"gearshift: error: worker \d+ \(pid \d+\) could not start: error while importing "
                        r"'broken': ModuleNotFoundError: No module named 'nosuchmodule_xyz'", errors[0]), errors
    assert "Traceback" not in result.stderr
    assert "died while starting" not in result.stderr  # no respawn storm


def test_workers_that_die_while_starting_are_restarted_with_a_back_off(tmp_path: Path) -> None:
    (tmp_path / "dies.py").write_text("import os\nos._exit(9)\n")
    with GearshiftProcess(["dies:app", "-s", "prefork", "-w", "1", "-b", "127.0.0.1:0"], cwd=tmp_path) as master:
        lines = master.wait_for(r"died while starting; starting another in ([\d.]+) s", count=4, timeout=20)
        delays = [float(line[1]) for line in lines]
        assert delays == sorted(delays) and delays[-1] > delays[0], delays
        assert master.stop() == 0


def test_a_reload_whose_app_fails_to_import_keeps_the_old_workers(tmp_path: Path) -> None:
    with prefork(tmp_path) as master:
        address = master.address()
        old = workers_of(master)
        (tmp_path / "app.py").write_text("raise RuntimeError('half-written deploy')\n")
        master.send(signal.SIGHUP)
        master.wait_for("reload failed, keeping the 2 workers of before: .*RuntimeError: half-written deploy")
        wait_until(lambda: workers_of(master) == old, what="the new workers gone, the old ones kept")
        assert get(address)[0] == 200
        stop_cleanly(master, address)


def test_usr1_reopens_the_access_log_in_every_worker(tmp_path: Path) -> None:
    access = tmp_path / "access.log"
    with prefork(tmp_path, "--access-log", str(access)) as master:
        address = master.address()
        for _ in range(4):
            get(address)
        wait_until(lambda: access.exists() and access.read_text().count("GET /") >= 4, what="access lines")
        access.rename(tmp_path / "access.log.1")
        master.send(signal.SIGUSR1)
        master.wait_for("SIGUSR1: asking 2 workers to reopen their log files")
        master.wait_for("reopened the access log", count=3)  # the master and both workers
        for _ in range(6):
            get(address)
        wait_until(lambda: access.exists() and access.read_text().count("GET /") == 6, what="lines in the new file")
        stop_cleanly(master, address)


USR1_THE_INSTANT_AFTER = textwrap.dedent('''
    import _signal, os, signal, socketserver, sys
    import gearshift

    server = gearshift.Server(("127.0.0.1", 0), socketserver.BaseRequestHandler, strategy="prefork",
                              workers=1, worker_strategy="sync")
    master, reached, landed = os.getpid(), [], []

    def stop(signum, frame):  # what the conformance kit's server does on USR1
        if os.getpid() == master:
            reached.append(signum)
            server.shutdown()

    def give_up(signum, frame):
        print("the USR1 never reached the handler prefork chains to", flush=True)
        server.shutdown()

    def land_a_usr1(frame, event, arg):
        # The instant after prefork has replaced our USR1 handler with its own.
        if event == "c_return" and arg is _signal.signal and signal.getsignal(signal.SIGUSR1) is not stop:
            sys.setprofile(None)
            landed.append(True)
            os.kill(os.getpid(), signal.SIGUSR1)

    signal.signal(signal.SIGUSR1, stop)
    signal.signal(signal.SIGALRM, give_up)
    signal.alarm({deadline})
    sys.setprofile(land_a_usr1)
    server.serve_forever(0.05)
    signal.alarm(0)
    server.server_close()
    print(f"landed {{len(landed)}}, reached {{len(reached)}}", flush=True)
''')


def test_a_usr1_landing_while_the_master_installs_its_handlers_reaches_the_one_it_chains() -> None:
    # The conformance kit stops its server on USR1, sent as soon as the server is ready, and
    # prefork's master passes USR1 on to the handler it replaced: one that lands between the
    # two steps of installing must not be swallowed (the master then served on for ever).
    done = subprocess.run([sys.executable, "-c", USR1_THE_INSTANT_AFTER.format(deadline=int(DEADLINE))],
                          env=clean_env(), capture_output=True, text=True, timeout=3 * DEADLINE)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "landed 1, reached 1", done.stdout + done.stderr


def test_reuse_port_workers_listen_on_sockets_of_their_own(tmp_path: Path) -> None:
    with prefork(tmp_path, "--reuse-port") as master:
        address = master.address()
        with load(address, threads=4, keep_alive=False) as generator:
            generator.wait_for(200)
        assert not generator.failures
        assert set(generator.served) == workers_of(master)
        stop_cleanly(master, address)


def test_preload_imports_once_in_the_master(tmp_path: Path) -> None:
    write_app(tmp_path)
    with (tmp_path / "app.py").open("a") as f:
        f.write("\nos.write(1, f'imported in {os.getpid()}\\n'.encode())  # one write: workers print at once\n")
    with prefork(tmp_path, "--preload") as master:
        address = master.address()
        old = workers_of(master)
        master.send(signal.SIGHUP)
        wait_until(lambda: not (workers_of(master) & old) and len(workers_of(master)) == 2, what="a reload")
        assert get(address)[1].split()[1] == "v1"
        stop_cleanly(master, address)
    assert master.stdout.split() == ["imported", "in", str(master.pid)]


def test_without_preload_each_worker_imports_the_app(tmp_path: Path) -> None:
    write_app(tmp_path)
    with (tmp_path / "app.py").open("a") as f:
        f.write("\nos.write(1, f'imported in {os.getpid()}\\n'.encode())  # one write: workers print at once\n")
    with prefork(tmp_path) as master:
        workers = workers_of(master)
        stop_cleanly(master, master.address())
    importers = {int(pid) for pid in re.findall(r"imported in (\d+)", master.stdout)}
    assert importers == workers


# -- composition ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("inner", "args", "multithread"), [
    ("sync", [], "False"),
    ("thread", ["--max-threads", "4"], "True"),
    ("threadpool", ["--threads", "2"], "True"),
    ("fork", ["--max-children", "4"], "False"),
    ("reversed", ["--log-every", "5"], "False"),
])
def test_any_strategy_runs_inside(tmp_path: Path, inner: str, args: list[str], multithread: str) -> None:
    env = None
    if inner == "reversed":  # the example third-party plugin, registered through an entry point
        write_dist_info(tmp_path, "gearshift-reversed", "0.1.0", {"reversed": "gearshift_reversed"})
        env = clean_env(PYTHONPATH=f"{tmp_path}{os.pathsep}{EXAMPLE_PLUGIN}")
    with prefork(tmp_path, "--worker-strategy", inner, *args, env=env) as master:
        address = master.address()
        with load(address, threads=3) as generator:
            generator.wait_for(60)
        assert not generator.failures, generator.failures
        if inner != "fork":  # fork's answers come from a child per connection, gone by now
            assert set(generator.served) <= workers_of(master)
        assert get(address, "/environ") == (200, f"{multithread} True\n")
        if inner == "reversed":
            master.wait_for("reversed: 5 connections served")
        stop_cleanly(master, address)


# -- options and errors, in this process (nothing forks) -------------------------------------------


def hello(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"hi"]


def test_options_pass_through_to_the_inner_strategy_and_are_checked_by_it() -> None:
    with gearshift.make_server("127.0.0.1", 0, hello, strategy="prefork", workers=2,
                               worker_strategy="threadpool", threads=4) as server:
        strategy = server.strategy
        assert strategy.workers == 2 and strategy.inner.threads == 4  # type: ignore[attr-defined]
        assert server.base_environ["wsgi.multithread"] is True
        assert server.base_environ["wsgi.multiprocess"] is True
    with pytest.raises(TypeError, match=r"unexpected option 'thred' \(did you mean 'threads'\?\): strategy "
                                        r"'threadpool' accepts: max_queue, threads; options of strategy 'prefork'"):
        gearshift.make_server("127.0.0.1", 0, hello, strategy="prefork", thred=4)
    with pytest.raises(TypeError, match="strategy 'sync' accepts no options"):
        gearshift.make_server("127.0.0.1", 0, hello, strategy="prefork", worker_strategy="sync", threads=4)
    with pytest.raises(ValueError, match="threads must be a whole number >= 1, not 0"):
        gearshift.make_server("127.0.0.1", 0, hello, strategy="prefork", threads=0)


@pytest.mark.parametrize(("options", "message"), [
    ({"workers": 0}, "workers must be a whole number >= 1, not 0"),
    ({"worker_strategy": "nope"}, "unknown strategy 'nope'"),
    ({"worker_strategy": "prefork"}, "worker_strategy cannot be 'prefork'"),
    ({"timeout": 0.5}, r"timeout must be a number of seconds >= 1, or None"),
    ({"max_requests": 0}, "max_requests must be a whole number >= 1 or None"),
    ({"max_requests_jitter": -1}, "max_requests_jitter must be a whole number >= 0"),
    ({"max_worker_memory": "1G"}, "max_worker_memory must be a whole number"),
    ({"reuse_port": 1}, "reuse_port must be True or False"),
])
def test_bad_prefork_options_are_refused(options: dict, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        gearshift.make_server("127.0.0.1", 0, hello, strategy="prefork", **options)


def test_handle_request_serves_with_the_inner_strategy_in_this_process() -> None:
    with gearshift.make_server("127.0.0.1", 0, hello, strategy="prefork", worker_strategy="sync") as server:
        server.timeout = DEADLINE
        thread = threading.Thread(target=server.handle_request)
        thread.start()
        with socket.create_connection(server.server_address[:2], timeout=DEADLINE) as client:
            client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert client.recv(4096).startswith(b"HTTP/1.1 200")
        thread.join(DEADLINE)
        assert not thread.is_alive()


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    write_app(tmp_path)
    cases = [
        (["-s", "prefork", "--thread", "3"], "did you mean --threads?"),
        (["-s", "prefork", "--worker-strategy", "sync", "--threads", "3"],
         "unexpected option '--threads': strategy 'sync' accepts no options"),
        (["-s", "prefork", "-w", "0"], "--workers must be a whole number >= 1, not 0"),
        (["-s", "prefork", "--max-worker-memory", "lots"], "expected bytes, or a number with K, M or G"),
        (["-s", "thread", "--preload"], "--preload does not apply to strategy 'thread'"),
        (["-s", "thread", "-w", "2"], "--workers (GEARSHIFT_WORKERS) does not apply to strategy 'thread'"),
    ]
    for args, message in cases:
        result = run_gearshift(["app:app", "-b", "127.0.0.1:0", *args], cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert len(result.stderr.splitlines()) == 1 and message in result.stderr, (args, result.stderr)


def test_every_option_has_an_environment_variable(tmp_path: Path) -> None:
    env = clean_env(GEARSHIFT_STRATEGY="prefork", GEARSHIFT_WORKERS="1", GEARSHIFT_WORKER_STRATEGY="sync",
                    GEARSHIFT_TIMEOUT="5", GEARSHIFT_MAX_REQUESTS="100", GEARSHIFT_MAX_REQUESTS_JITTER="3",
                    GEARSHIFT_MAX_WORKER_MEMORY="1G", GEARSHIFT_REUSE_PORT="1", GEARSHIFT_PRELOAD="yes")
    write_app(tmp_path)
    with GearshiftProcess(["app:app", "-b", "127.0.0.1:0"], cwd=tmp_path, env=env) as master:
        master.wait_ready()
        assert ("strategy prefork (workers=1, worker_strategy=sync, timeout=5.0, max_requests=100, "
                "max_requests_jitter=3, max_worker_memory=1073741824, reuse_port=True)") in master.stderr
        assert "loaded app:app" in master.stderr  # preloaded
        assert master.stop() == 0


def test_the_demo_is_served_by_the_workers_and_prefork_is_listed() -> None:
    listing = run_gearshift(["--list-strategies"]).stdout
    assert re.search(r"^prefork\b.* built-in +Long-lived worker processes", listing, re.M), listing
    with GearshiftProcess(["-b", "127.0.0.1:0", "-s", "prefork", "-w", "2", "--log-level", "debug"]) as master:
        address = master.address()
        master.wait_for(READY, count=2)
        status, _, body = request(address, "/json")
        facts = json.loads(body)
        assert status == 200 and facts["strategy"] == "prefork" and facts["multiprocess"]
        assert facts["pid"] in workers_of(master)
        assert master.stop() == 0


def test_a_unix_socket_is_shared_by_the_workers_and_removed_at_the_end(tmp_path: Path) -> None:
    write_app(tmp_path)
    path = str(tmp_path / "app.sock")
    command = ["app:app", "-s", "prefork", "-w", "2", "-b", f"unix:{path}", "--log-level", "debug"]
    with GearshiftProcess(command, cwd=tmp_path) as master:
        master.wait_for(READY, count=2)
        pids = {int(request(path)[2].split()[0]) for _ in range(20)}
        assert pids <= workers_of(master)
        assert master.stop() == 0
    assert not os.path.exists(path)
