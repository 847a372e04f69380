"""The deployment the README recommends for scaling out, for real: several ``gearshift``
processes behind an nginx from the distribution's package, restarted one at a time under load.

nginx runs unprivileged-port, from its own configuration in ``tmp_path`` (``-p`` prefix, its own
pid file, error log and temporary directories, ``daemon off``), as a child of the test; nothing
of the system's nginx configuration is read or touched. The upstreams are ``gearshift``
commands serving the demo application (whose ``/json`` names the process that answered), over
TCP and over Unix sockets. While client threads keep requests going through nginx, each
upstream in turn is stopped with SIGTERM and a new one started on the same address: not one
request may fail, and the new processes must be serving by the end.

What makes that hold is in the nginx configuration the README gives (``upstream_config``):
nginx passes a request to the next upstream when connecting fails or when the connection fails
before any byte of the response (``proxy_next_upstream error timeout``), which covers an idle
keep-alive connection the stopping gearshift closes just as nginx reuses it, and is allowed
for idempotent requests: these tests send only GETs.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cli_helpers import GearshiftProcess, clean_env, request, socket_activation_command
from core_helpers import wait_for

NGINX = shutil.which("nginx") or next(
    (path for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(path, os.X_OK)), None
)

pytestmark = [
    pytest.mark.skipif(NGINX is None,
                       reason="needs the nginx binary (Debian: apt-get install nginx; .ci/run installs it)"),
    pytest.mark.timeout(120),
]

#: Client threads keeping requests going through nginx; a few ask for a slow page, so that
#: requests are in flight at every SIGTERM.
CLIENTS = 6
SLOW_CLIENTS = 2
SLOW_PATH = "/slow?seconds=0.3"
#: Requests every upstream must have answered (through nginx) before it is restarted, and that
#: its replacement must answer before the next step: each restart happens under real load.
SERVED_BEFORE_NEXT = 50
#: Bounds that only turn a hang into a failure.
START_TIMEOUT = 15.0
STEP_TIMEOUT = 20.0


def upstream_config(servers: list[str]) -> str:
    """The ``upstream`` block of the README's "Deploying behind nginx", for ``servers``
    (``127.0.0.1:8001`` or ``unix:/path``): connection reuse, and a restarted instance taken
    out of rotation for a second after it refused a connection instead of being tried by every
    request meanwhile."""
    lines = "".join(f"        server {server} max_fails=1 fail_timeout=1s;\n" for server in servers)
    return f"""
    upstream gearshift {{
{lines}        keepalive 16;
        keepalive_timeout 4s;
    }}
"""


def nginx_config(prefix: Path, port: int, servers: list[str]) -> str:
    """A complete nginx.conf that reads and writes nothing outside ``prefix``."""
    user = ""
    if os.geteuid() == 0:
        # As root nginx would run its workers as "nobody", who cannot reach tmp_path's sockets.
        user = "user root;"
    return f"""
{user}
worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{upstream_config(servers)}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://gearshift;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_next_upstream error timeout;
            proxy_connect_timeout 2s;
            proxy_read_timeout 10s;
        }}
    }}
}}
"""


class Nginx:
    """An nginx master (and its worker) in the foreground, as a child of the test."""

    def __init__(self, prefix: Path, servers: list[str]) -> None:
        self.prefix = prefix
        prefix.mkdir(exist_ok=True)
        self.conf = prefix / "nginx.conf"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        # A port nginx binds itself, so it cannot be handed one by the kernel: pick a free one
        # and try again should another process take it first.
        for _ in range(5):
            self.port = _free_port()
            self.conf.write_text(nginx_config(prefix, self.port, servers))
            assert NGINX is not None
            self.proc = subprocess.Popen(
                [NGINX, "-p", str(prefix), "-c", str(self.conf), "-e", str(prefix / "error.log")],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
            if wait_for(lambda: self._listening() or self.proc.poll() is not None, START_TIMEOUT) and \
                    self.proc.poll() is None:
                return
            stderr = self._reap()
            if "Address already in use" not in stderr:
                raise AssertionError(f"nginx did not start:\n{stderr}\n{self.error_log}")
        raise AssertionError("nginx found no free port in 5 tries")

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                return True
        except OSError:
            return False

    @property
    def error_log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.prefix / "error.log").read_text(errors="replace")
        return ""

    def _reap(self) -> str:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        _, stderr = self.proc.communicate(timeout=10)
        return stderr.decode(errors="replace")

    def stop(self) -> None:
        """SIGQUIT (nginx's graceful stop), then SIGKILL should it hang; the worker exits with
        the master."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._reap()
        # The worker is the master's child, not ours: its exit is waited for through its pid.
        assert wait_for(lambda: not (self.prefix / "nginx.pid").exists(), 10), "nginx left its pid file"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Load:
    """Client threads sending GETs through nginx on keep-alive connections until stopped,
    counting answers by the pid of the upstream that gave them, and every failure."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.served: Counter[int] = Counter()
        self.failures: list[str] = []
        self.requests = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(index < SLOW_CLIENTS,), name=f"load-{index}", daemon=True)
            for index in range(CLIENTS)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, slow: bool) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            while not self._stop.is_set():
                path = SLOW_PATH if slow else "/json"
                try:
                    conn.request("GET", path)
                    response = conn.getresponse()
                    body = response.read()
                except (OSError, http.client.HTTPException) as exc:
                    self._failed(f"{path}: {exc!r}")
                    conn.close()
                    continue
                if response.status != 200:
                    self._failed(f"{path}: {response.status} {body[:200]!r}")
                    continue
                pid = json.loads(body)["pid"] if not slow else 0
                with self._lock:
                    self.requests += 1
                    if pid:
                        self.served[pid] += 1
        finally:
            conn.close()

    def _failed(self, what: str) -> None:
        with self._lock:
            self.requests += 1
            self.failures.append(what)

    def served_by(self, pid: int) -> int:
        with self._lock:
            return self.served[pid]

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        assert not any(thread.is_alive() for thread in self._threads), "a load thread hangs"


@contextlib.contextmanager
def upstreams(addresses: list[str]) -> Iterator[list[GearshiftProcess]]:
    """A ``gearshift`` command per address (``-b`` syntax), the demo application, ``threadpool``;
    the list is the caller's to replace restarted ones in, and whatever is in it at the end is
    killed."""
    processes: list[GearshiftProcess] = []
    try:
        for address in addresses:
            processes.append(start_upstream(address))
        yield processes
    finally:
        for process in processes:
            process.kill()


def start_upstream(address: str) -> GearshiftProcess:
    process = GearshiftProcess(["-b", address, "-s", "threadpool", "--threads", "4", "--graceful-timeout", "10"],
                               env=clean_env())
    process.wait_ready()
    return process


def restart_under_load(processes: list[GearshiftProcess], index: int, address: str, load: Load,
                       start: Callable[[], GearshiftProcess] | None = None) -> None:
    """Stop ``processes[index]`` gracefully and start a new one (``start()``, by default one
    that binds ``address``) in its place."""
    old = processes[index]
    assert wait_for(lambda: load.served_by(old.pid) >= SERVED_BEFORE_NEXT, STEP_TIMEOUT), (
        f"upstream {address} got no share of the load: {load.served}, failures {load.failures[:5]}"
    )
    assert old.stop(signal.SIGTERM, timeout=STEP_TIMEOUT) == 0, old.stderr
    assert "Traceback" not in old.stderr, old.stderr
    old.kill()  # closes its pipes
    new = processes[index] = start() if start is not None else start_upstream(address)
    # As in a real rolling restart, the next instance stops only once this one is back in
    # rotation: nginx took it out when it refused a connection (max_fails), and with both out
    # at once it has no live upstream.
    assert wait_for(lambda: load.served_by(new.pid) >= SERVED_BEFORE_NEXT, STEP_TIMEOUT), (
        f"the restarted upstream {address} gets no requests: {load.served}, failures {load.failures[:5]}"
    )


def restarts_behind_nginx(tmp_path: Path, servers: list[str], restart: Callable[[Load], object]) -> Load:
    """nginx over ``servers`` under load while ``restart(load)`` restarts upstreams; no request
    may fail. Returns the load, for what it saw."""
    nginx = Nginx(tmp_path / "nginx", servers)
    load = None
    try:
        load = Load(nginx.port)
        restart(load)
    finally:
        if load is not None:
            load.stop()
        nginx.stop()
    assert load.failures == [], (
        f"{len(load.failures)} of {load.requests} requests failed: {load.failures[:10]}\n"
        f"nginx error log:\n{nginx.error_log[-4000:]}"
    )
    return load


def rolling_restart(servers: list[str], addresses: list[str], tmp_path: Path) -> None:
    """The test proper: nginx over ``servers``, each upstream restarted in turn under load."""
    with upstreams(addresses) as processes:
        def each_in_turn(load: Load) -> None:
            for index, address in enumerate(addresses):
                restart_under_load(processes, index, address, load)

        load = restarts_behind_nginx(tmp_path, servers, each_in_turn)
        # Every answer came from one of the four processes, and each answered its share.
        assert len(load.served) == 2 * len(addresses), load.served
        for process in processes:
            assert process.stop() == 0, process.stderr


def test_rolling_restart_over_tcp_loses_no_request(tmp_path: Path) -> None:
    ports = [_free_port(), _free_port()]
    addresses = [f"127.0.0.1:{port}" for port in ports]
    rolling_restart(addresses, addresses, tmp_path)


def test_rolling_restart_over_unix_sockets_loses_no_request(tmp_path: Path) -> None:
    sockets = [tmp_path / "a.sock", tmp_path / "b.sock"]
    rolling_restart([f"unix:{path}" for path in sockets], [f"unix:{path}" for path in sockets], tmp_path)


def test_socket_activation_restarts_one_upstream_without_a_failed_request(tmp_path: Path) -> None:
    """The README's systemd recipe behind nginx, with a single instance: the listening socket
    belongs to the test, as it would to systemd (passed as ``LISTEN_FDS``), and outlives the
    instance, so connections that arrive between the old instance's stop and the new one's
    start wait in its backlog instead of being refused. The stopping instance must leave that
    socket listening: it only borrowed it."""
    listener = socket.create_server(("127.0.0.1", 0))
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    fd = listener.fileno()
    env = clean_env(GEARSHIFT_GRACEFUL_TIMEOUT="10", GEARSHIFT_STRATEGY="threadpool")

    def start() -> GearshiftProcess:
        process = GearshiftProcess([str(fd)], command=socket_activation_command(1), env=env, pass_fds=[fd])
        process.wait_ready()
        return process

    processes = [start()]
    try:
        restarts_behind_nginx(tmp_path, [address], lambda load: restart_under_load(processes, 0, address, load,
                                                                                   start=start))
        assert processes[0].stop() == 0, processes[0].stderr
    finally:
        for process in processes:
            process.kill()
        listener.close()


def test_nginx_reaches_a_direct_upstream(tmp_path: Path) -> None:
    """The set-up itself: a request through nginx is answered by the upstream, which sees
    nginx's Host header, and the demo app names the upstream's pid."""
    address = f"127.0.0.1:{_free_port()}"
    with upstreams([address]) as (process,):
        nginx = Nginx(tmp_path / "nginx", [address])
        try:
            status, _, body = request(("127.0.0.1", nginx.port), "/json")
        finally:
            nginx.stop()
        assert status == 200 and json.loads(body)["pid"] == process.pid
        assert process.stop() == 0
