"""Launch recipes for the servers ``bench_http.py`` compares: one function per server.

Each recipe starts ONE server as a subprocess, in a new session (so its own process group:
gunicorn's workers and the forking servers' children are killed with it by :func:`stop`),
serving :mod:`hello_app` on ``127.0.0.1:PORT`` with logging and access logs off.

gunicorn is started through its CLI (``python -m gunicorn``); every other server through this
file's entry point, which runs it in the foreground until SIGTERM/SIGINT::

    python benchmarks/http_servers.py waitress 8080
    python benchmarks/http_servers.py gearshift-sync 8080

Matched configurations on a 2-core machine (each is the server's default or the issue's):

====================  ==========================================================================
name                  configuration
====================  ==========================================================================
gearshift-sync        ``gearshift.make_server(host, port, app, strategy="sync")``, 1 process
gearshift-thread      ``strategy="thread"``, 1 process
gearshift-fork        ``strategy="fork", max_children=40``, 1 process
gearshift-threadpool  ``strategy="threadpool", threads=4``, 1 process
gearshift-prefork-sync  ``strategy="prefork", workers=2, worker_strategy="sync"``: 2 worker processes
                      under a master (gunicorn-sync's shape)
gearshift-prefork-threadpool  ``strategy="prefork", workers=2, worker_strategy="threadpool",
                      threads=4``: 2 workers x 4 threads (gunicorn-gthread's shape)
gearshift-prefork-1-sync  ``strategy="prefork", workers=1, worker_strategy="sync"``: the supervisor's
                      overhead, against gearshift-sync
waitress              ``waitress.create_server(app, host, port)`` (default ``threads=4``)
werkzeug-threaded     ``werkzeug.serving.run_simple(host, port, app, threaded=True)``
werkzeug-processes    ``run_simple(host, port, app, processes=40)``
gunicorn-sync         ``python -m gunicorn -w 2 -k sync hello_app:app``
gunicorn-gthread      ``python -m gunicorn -w 2 -k gthread --threads 4 hello_app:app``
gunicorn-gthread-1x4  ``python -m gunicorn -w 1 -k gthread --threads 4 hello_app:app``: one process,
                      as many threads as waitress and gearshift-threadpool
cheroot               ``cheroot.wsgi.Server((host, port), app)`` (default ``numthreads=10``)
granian-1             ``granian --interface wsgi --workers 1 hello_app:app``: Rust's HTTP and event
                      loop calling the Python app (its defaults: one runtime thread, a pool of
                      blocking threads that run the app under the GIL)
granian-2             the same with ``--workers 2`` (against the 2-worker ``prefork`` rows)
fork-floor            a reference, not a WSGI server: gearshift ``Server(..., strategy="fork",
                      max_children=40)`` whose handler reads the request head line by line and
                      writes a fixed ``Hello, World!`` response, then closes. No HTTP parser, no
                      environ, no application: what one fork per connection costs by itself,
                      so no fork-per-connection WSGI server can beat it on this machine
loop-floor            a reference: one thread, an epoll loop, a fixed ``Hello, World!`` response
                      to every request head (keep-alive, or close when asked); no parser, no
                      environ, no application: the most an in-loop server (``sync``) can do here
wsgi-floor            a reference: loop-floor's loop, but each request is parsed by httptools (the
                      parser gearshift uses), a minimal PEP 3333 environ is built, the WSGI app is
                      called, and the responses to one read are written in one ``send`` (one
                      response, or a pipelined batch); no limits, no timeouts, no validation, no
                      hand-back: the least a Python WSGI server in one thread does per request, so
                      ``gearshift-sync`` / ``wsgi-floor`` is how much of a request's cost is
                      gearshift's own
handoff-floor         a reference: loop-floor, but the loop hands each readable connection to one
                      of ``POOL_THREADS`` threads (4; a ``SimpleQueue``), which reads, answers and
                      re-arms it in epoll itself (``EPOLLONESHOT``): the cheapest hand-off to a
                      thread pool, with almost no Python run in the threads
wsgi-handoff-floor    a reference: wsgi-floor split as ``threadpool`` splits a request: the loop
                      reads and parses, and once a read completes requests it hands the connection
                      to one of ``POOL_THREADS`` threads (a ``SimpleQueue``), which calls the app,
                      writes the responses and re-arms the connection (``EPOLLONESHOT``); so
                      ``wsgi-handoff-floor`` / ``wsgi-floor`` bounds ``threadpool`` / ``sync``:
                      what handing a request's Python to a thread costs under the GIL by itself
====================  ==========================================================================

Every recipe serves ``hello_app:app`` unless given another ``module:callable`` of this folder
(``bench_slow.py`` serves ``slow_app:app``); the entry point takes it as a third argument.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from subprocess import Popen
from typing import Any

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
#: CPUs the servers run on (bench_http.py --pin); None: wherever the kernel puts them
SERVER_CPUS: set[int] | None = None
DEFAULT_APP = "hello_app:app"
#: The environment variable through which ``bench_http.py --pool-threads`` reaches the servers.
POOL_THREADS_ENV = "GEARSHIFT_BENCH_POOL_THREADS"
#: threads of the fixed-pool servers (waitress' default): gearshift-threadpool (also inside
#: prefork), waitress, gunicorn-gthread*, handoff-floor and wsgi-handoff-floor
POOL_THREADS = int(os.environ.get(POOL_THREADS_ENV, "4"))

# ---------------------------------------------------------------------------------------------
# In-process runners (used by this file's entry point, inside the server subprocess)
# ---------------------------------------------------------------------------------------------

_MAIN_PID = os.getpid()


def _on_term(signum, frame):  # type: ignore[no-untyped-def]
    """SIGTERM/SIGINT: the server process exits through SystemExit (so ``finally`` blocks and
    ``python -m cProfile -o`` still run); a forked child of it just exits."""
    if os.getpid() != _MAIN_PID:
        os._exit(0)
    raise SystemExit(0)


def _quiet_logging() -> None:
    logging.disable(logging.CRITICAL)  # no banners, no access logs, no queue-depth warnings


_APP_SPEC = DEFAULT_APP  # set by main() from the command line


def _app():  # type: ignore[no-untyped-def]
    import importlib

    sys.path.insert(0, str(HERE))
    module, _, name = _APP_SPEC.partition(":")
    return getattr(importlib.import_module(module), name or "app")


#: each strategy's options in the benchmark (the defaults otherwise)
GEARSHIFT_OPTIONS: dict[str, dict[str, int]] = {"fork": {"max_children": 40}, "threadpool": {"threads": POOL_THREADS}}


def run_gearshift(strategy: str, port: int) -> None:
    import gearshift

    make_server = getattr(gearshift, "make_server", None)
    if make_server is None:  # the top-level export may lag behind the http package
        from gearshift.http import make_server
    server = make_server(HOST, port, _app(), strategy=strategy, **GEARSHIFT_OPTIONS.get(strategy, {}))

    def stop(signum, frame):  # type: ignore[no-untyped-def]
        # shutdown(), not _on_term's SystemExit: under sync a signal mostly lands while the app
        # runs, and the HTTP layer answers an app's SystemExit with a 500 and serves on.
        if os.getpid() != _MAIN_PID:
            os._exit(0)
        server.shutdown()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever()
    finally:
        if os.getpid() == _MAIN_PID:
            server.server_close()


#: the prefork rows: name -> (workers, inner strategy, its options)
PREFORK_ROWS: dict[str, tuple[int, str, dict[str, int]]] = {
    "gearshift-prefork-sync": (2, "sync", {}),
    "gearshift-prefork-threadpool": (2, "threadpool", {"threads": POOL_THREADS}),
    "gearshift-prefork-1-sync": (1, "sync", {}),
}


def run_gearshift_prefork(name: str, port: int) -> None:
    import gearshift

    workers, inner, options = PREFORK_ROWS[name]
    server = gearshift.make_server(HOST, port, _app(), strategy="prefork", workers=workers,
                                   worker_strategy=inner, **options)
    try:
        server.serve_forever()
    finally:
        if os.getpid() == _MAIN_PID:
            server.server_close()


def run_waitress(port: int) -> None:
    import waitress

    server = waitress.create_server(_app(), host=HOST, port=port, threads=POOL_THREADS)  # its default
    try:
        server.run()
    finally:
        server.close()


def run_werkzeug(port: int, *, threaded: bool = False, processes: int = 1) -> None:
    from werkzeug.serving import run_simple

    run_simple(HOST, port, _app(), threaded=threaded, processes=processes)


def run_cheroot(port: int) -> None:
    from cheroot import wsgi

    server = wsgi.Server((HOST, port), _app())  # numthreads=10 by default
    try:
        server.start()
    finally:
        server.stop()


def run_fork_floor(port: int) -> None:
    import socketserver

    import gearshift

    sys.path.insert(0, str(HERE))
    from hello_app import BODY

    response = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s" % (len(BODY), BODY))

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for _ in range(100):
                line = self.rfile.readline(65537)
                if not line or line in (b"\r\n", b"\n"):
                    break
            self.wfile.write(response)

    server = gearshift.Server((HOST, port), Handler, strategy="fork", max_children=40)
    try:
        server.serve_forever()
    finally:
        if os.getpid() == _MAIN_PID:
            server.server_close()


def _floor_response(close: bool) -> bytes:
    sys.path.insert(0, str(HERE))
    from hello_app import BODY

    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n%s"
            % (len(BODY), b"Connection: close\r\n" if close else b"", BODY))


def _floor_answer(conn: socket.socket, keep: bytes, close: bytes) -> bool:
    """Read one request head (assumed whole in one recv, as wrk sends it) and answer it; False
    when the connection is done."""
    try:
        data = conn.recv(65536)
    except BlockingIOError:
        return True
    except OSError:
        return False
    if not data:
        return False
    closing = b"onnection: close" in data
    try:
        conn.send(close if closing else keep)
    except OSError:
        return False
    return not closing


def _floor_listener(port: int) -> tuple[socket.socket, Any]:
    import select

    listener = socket.create_server((HOST, port), backlog=1024)
    listener.setblocking(False)
    poller = select.epoll()
    poller.register(listener.fileno(), select.EPOLLIN)
    return listener, poller


def _floor_accept(listener: socket.socket, poller: Any, conns: dict[int, socket.socket], events: int) -> None:
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return
    conn.setblocking(False)
    conns[conn.fileno()] = conn
    poller.register(conn.fileno(), events)


def run_loop_floor(port: int) -> None:
    import select

    keep, close = _floor_response(False), _floor_response(True)
    listener, poller = _floor_listener(port)
    conns: dict[int, socket.socket] = {}
    while True:
        for fd, _ in poller.poll():
            if fd == listener.fileno():
                _floor_accept(listener, poller, conns, select.EPOLLIN)
            elif not _floor_answer(conns[fd], keep, close):
                poller.unregister(fd)
                conns.pop(fd).close()


def run_wsgi_floor(port: int) -> None:
    _wsgi_floor(port, threads=0)


def run_wsgi_handoff_floor(port: int) -> None:
    _wsgi_floor(port, threads=POOL_THREADS)


def _wsgi_floor(port: int, threads: int) -> None:
    """wsgi-floor (``threads=0``: the app called in the loop's thread) and wsgi-handoff-floor (the
    loop reads and parses, a pool of ``threads`` calls the app and writes, as in ``threadpool``)."""
    import io
    import queue
    import select
    import threading
    from email.utils import formatdate

    import httptools

    app = _app()
    listener, poller = _floor_listener(port)
    base = {"SERVER_NAME": HOST, "SERVER_PORT": str(port), "SCRIPT_NAME": "", "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr, "wsgi.multithread": threads > 0,
            "wsgi.multiprocess": False, "wsgi.run_once": False}
    # With a pool, a connection is re-armed only once its requests are answered, so that two
    # threads never answer one connection's requests out of order.
    watch = select.EPOLLIN | (select.EPOLLONESHOT if threads else 0)

    class Request:
        """httptools callbacks: collect the environs of the requests one read completes."""

        def __init__(self, conn: socket.socket) -> None:
            self.conn, self.environ, self.open = conn, base.copy(), True
            self.parser = httptools.HttpRequestParser(self)
            self.ready: list[tuple[dict[str, Any], bool]] = []  # (environ, keep-alive)

        def on_url(self, url: bytes) -> None:
            parsed = httptools.parse_url(url)
            self.environ["PATH_INFO"] = parsed.path.decode("latin-1")
            self.environ["QUERY_STRING"] = (parsed.query or b"").decode("latin-1")

        def on_header(self, name: bytes, value: bytes) -> None:
            self.environ["HTTP_" + name.decode("latin-1").upper().replace("-", "_")] = value.decode("latin-1")

        def on_message_complete(self) -> None:
            environ, self.environ = self.environ, base.copy()
            environ["REQUEST_METHOD"] = self.parser.get_method().decode("latin-1")
            environ["SERVER_PROTOCOL"] = "HTTP/" + self.parser.get_http_version()
            environ["wsgi.input"] = io.BytesIO()
            self.ready.append((environ, self.parser.should_keep_alive()))

        def answer(self) -> None:
            """Call the app for each request of the last read; write the responses in one
            ``sendall`` (a pipelined batch included)."""
            out = []
            for environ, keep in self.ready:
                response: list[Any] = []
                body = b"".join(app(environ, lambda *args, r=response: r.extend(args[:2])))  # status, headers
                status, headers = response
                head = "".join(f"{name}: {value}\r\n" for name, value in headers)
                out.append(b"HTTP/1.1 %s\r\n%sDate: %s\r\n%s\r\n%s" % (
                    status.encode("latin-1"), head.encode("latin-1"), formatdate(usegmt=True).encode(),
                    b"" if keep else b"Connection: close\r\n", body))
                self.open = keep
                if not keep:
                    break
            self.ready.clear()
            try:
                self.conn.sendall(b"".join(out))
            except OSError:
                self.open = False

    requests: dict[int, Request] = {}

    def settle(fd: int, request: Request) -> None:
        """After an answer, in whichever thread gave it: watch the connection again, or close it."""
        if not request.open:
            poller.unregister(fd)
            requests.pop(fd, None)
            request.conn.close()
        elif threads:
            poller.modify(fd, watch)

    answers: queue.SimpleQueue[int] = queue.SimpleQueue()

    def work() -> None:
        while True:
            fd = answers.get()
            request = requests[fd]
            request.answer()
            settle(fd, request)

    for _ in range(threads):
        threading.Thread(target=work, daemon=True).start()
    while True:
        for fd, _ in poller.poll():
            if fd == listener.fileno():
                while True:  # every connection waiting: 256 arriving at once are not served one per turn
                    try:
                        conn, _ = listener.accept()
                    except BlockingIOError:
                        break
                    # Blocking: recv() runs only once epoll reports the connection readable,
                    # and sendall() of a pipelined batch may have to wait for the client to read.
                    conn.setblocking(True)
                    requests[conn.fileno()] = Request(conn)
                    poller.register(conn.fileno(), watch)
                continue
            request = requests[fd]
            try:
                data = request.conn.recv(65536)
                if data:
                    request.parser.feed_data(data)
            except (BlockingIOError, InterruptedError):
                data = None
            except (OSError, httptools.HttpParserError):
                data = b""
            if not data:
                request.open = data is None  # None: nothing to read after all; b"": closed or bad
                request.ready.clear()
                settle(fd, request)
            elif not request.ready:  # a head in parts: wait for the rest
                settle(fd, request)
            elif threads:
                answers.put(fd)
            else:
                request.answer()
                settle(fd, request)


def run_handoff_floor(port: int) -> None:
    import queue
    import select
    import threading

    keep, close = _floor_response(False), _floor_response(True)
    listener, poller = _floor_listener(port)
    conns: dict[int, socket.socket] = {}
    ready: queue.SimpleQueue[int] = queue.SimpleQueue()
    once = select.EPOLLIN | select.EPOLLONESHOT

    def work() -> None:
        while True:
            fd = ready.get()
            conn = conns[fd]
            if _floor_answer(conn, keep, close):
                poller.modify(fd, once)  # re-armed from this thread: no wake-up of the loop
            else:
                poller.unregister(fd)
                conns.pop(fd)
                conn.close()

    for _ in range(POOL_THREADS):
        threading.Thread(target=work, daemon=True).start()
    while True:
        for fd, _ in poller.poll():
            if fd == listener.fileno():
                _floor_accept(listener, poller, conns, once)
            else:
                ready.put(fd)


RUNNERS: dict[str, Callable[[int], None]] = {
    "gearshift-sync": lambda port: run_gearshift("sync", port),
    "gearshift-thread": lambda port: run_gearshift("thread", port),
    "gearshift-fork": lambda port: run_gearshift("fork", port),
    "gearshift-threadpool": lambda port: run_gearshift("threadpool", port),
    **{name: (lambda port, name=name: run_gearshift_prefork(name, port)) for name in PREFORK_ROWS},
    "waitress": run_waitress,
    "werkzeug-threaded": lambda port: run_werkzeug(port, threaded=True),
    "werkzeug-processes": lambda port: run_werkzeug(port, processes=40),
    "cheroot": run_cheroot,
    "fork-floor": run_fork_floor,
    "loop-floor": run_loop_floor,
    "handoff-floor": run_handoff_floor,
    "wsgi-floor": run_wsgi_floor,
    "wsgi-handoff-floor": run_wsgi_handoff_floor,
}

# ---------------------------------------------------------------------------------------------
# Launch recipes (used by bench_http.py, in the benchmark process)
# ---------------------------------------------------------------------------------------------


def _popen(argv: Sequence[str], log_path: Path | None, env: dict[str, str] | None = None) -> subprocess.Popen:
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            list(argv),
            cwd=HERE,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop() kills workers/children too
            preexec_fn=_pin if SERVER_CPUS else None,
        )
    finally:
        if log is not subprocess.DEVNULL:
            log.close()


def _pin() -> None:
    assert SERVER_CPUS is not None
    os.sched_setaffinity(0, SERVER_CPUS)  # inherited by the server's threads and children


def _entry(name: str, port: int, log_path: Path | None, python_args: Sequence[str] = (),
           env: dict[str, str] | None = None, app: str = DEFAULT_APP) -> subprocess.Popen:
    argv = [sys.executable, *python_args, str(Path(__file__).resolve()), name, str(port)]
    if app != DEFAULT_APP:
        argv.append(app)
    return _popen(argv, log_path, env)


def add_baseline(src: Path) -> list[str]:
    """Register ``baseline-sync``, ``-thread``, ``-fork`` and ``-threadpool``: the same gearshift
    servers, importing gearshift from ``src`` (the ``src/`` folder of a checkout of another
    commit) instead of the installed one, so that a change is measured against the commit
    before it in one run, with the same background load (a strategy that commit lacks gets no
    twin). Returns the new names."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")]))}
    names = []
    for strategy in ("sync", "thread", "fork", "threadpool"):
        if not (src / "gearshift" / "strategies" / f"{strategy}.py").is_file():
            continue  # a commit from before that strategy
        name = f"baseline-{strategy}"

        def start(port: int, log_path: Path | None = None, python_args: Sequence[str] = (),
                  app: str = DEFAULT_APP, _runner: str = f"gearshift-{strategy}") -> subprocess.Popen:
            return _entry(_runner, port, log_path, python_args, env, app)

        SERVERS[name] = start
        REQUIRES[name] = "gearshift"
        names.append(name)
    return names


def start_gearshift_sync(port: int, log_path: Path | None = None, python_args: Sequence[str] = (),
                        app: str = DEFAULT_APP) -> Popen:
    return _entry("gearshift-sync", port, log_path, python_args, app=app)


def start_gearshift_thread(port: int, log_path: Path | None = None, python_args: Sequence[str] = (),
                          app: str = DEFAULT_APP) -> Popen:
    return _entry("gearshift-thread", port, log_path, python_args, app=app)


def start_gearshift_fork(port: int, log_path: Path | None = None, python_args: Sequence[str] = (),
                        app: str = DEFAULT_APP) -> Popen:
    return _entry("gearshift-fork", port, log_path, python_args, app=app)


def start_gearshift_threadpool(port: int, log_path: Path | None = None, python_args: Sequence[str] = (),
                               app: str = DEFAULT_APP) -> Popen:
    return _entry("gearshift-threadpool", port, log_path, python_args, app=app)


def _start_prefork(name: str) -> Callable[..., Popen]:
    def start(port: int, log_path: Path | None = None, python_args: Sequence[str] = (),
              app: str = DEFAULT_APP) -> Popen:
        return _entry(name, port, log_path, python_args, app=app)

    return start


def start_waitress(port: int, log_path: Path | None = None, python_args: Sequence[str] = (),
                  app: str = DEFAULT_APP) -> Popen:
    return _entry("waitress", port, log_path, python_args, app=app)


def start_werkzeug_threaded(port: int, log_path: Path | None = None, python_args: Sequence[str] = (),
                           app: str = DEFAULT_APP) -> Popen:
    return _entry("werkzeug-threaded", port, log_path, python_args, app=app)


def start_werkzeug_processes(port: int, log_path: Path | None = None, python_args: Sequence[str] = (),
                            app: str = DEFAULT_APP) -> Popen:
    return _entry("werkzeug-processes", port, log_path, python_args, app=app)


def start_cheroot(port: int, log_path: Path | None = None, python_args: Sequence[str] = (),
                 app: str = DEFAULT_APP) -> Popen:
    return _entry("cheroot", port, log_path, python_args, app=app)


def start_fork_floor(port: int, log_path: Path | None = None, python_args: Sequence[str] = (),
                    app: str = DEFAULT_APP) -> Popen:
    return _entry("fork-floor", port, log_path, python_args, app=app)


def start_loop_floor(port: int, log_path: Path | None = None, python_args: Sequence[str] = (),
                     app: str = DEFAULT_APP) -> Popen:
    return _entry("loop-floor", port, log_path, python_args, app=app)


def start_wsgi_floor(port: int, log_path: Path | None = None, python_args: Sequence[str] = (),
                     app: str = DEFAULT_APP) -> Popen:
    return _entry("wsgi-floor", port, log_path, python_args, app=app)


def start_wsgi_handoff_floor(port: int, log_path: Path | None = None, python_args: Sequence[str] = (),
                             app: str = DEFAULT_APP) -> Popen:
    return _entry("wsgi-handoff-floor", port, log_path, python_args, app=app)


def start_handoff_floor(port: int, log_path: Path | None = None, python_args: Sequence[str] = (),
                        app: str = DEFAULT_APP) -> Popen:
    return _entry("handoff-floor", port, log_path, python_args, app=app)


def _gunicorn(port: int, log_path: Path | None, worker_args: Sequence[str], workers: int = 2,
              app: str = DEFAULT_APP) -> subprocess.Popen:
    argv = [
        sys.executable, "-m", "gunicorn",
        "--bind", f"{HOST}:{port}",
        "--workers", str(workers),
        *worker_args,
        "--chdir", str(HERE),
        "--log-level", "error",  # access log is off unless --access-logfile is given
        app,
    ]  # fmt: skip
    return _popen(argv, log_path)


def start_gunicorn_sync(port: int, log_path: Path | None = None, python_args: Sequence[str] = (),
                        app: str = DEFAULT_APP) -> Popen:
    return _gunicorn(port, log_path, ["--worker-class", "sync"], app=app)


def start_gunicorn_gthread(port: int, log_path: Path | None = None, python_args: Sequence[str] = (),
                           app: str = DEFAULT_APP) -> Popen:
    return _gunicorn(port, log_path, ["--worker-class", "gthread", "--threads", str(POOL_THREADS)], app=app)


def start_gunicorn_gthread_1x4(port: int, log_path: Path | None = None, python_args: Sequence[str] = (),
                               app: str = DEFAULT_APP) -> Popen:
    return _gunicorn(port, log_path, ["--worker-class", "gthread", "--threads", str(POOL_THREADS)], workers=1,
                     app=app)


def _granian(workers: int) -> Callable[..., Popen]:
    def start(port: int, log_path: Path | None = None, python_args: Sequence[str] = (),
              app: str = DEFAULT_APP) -> Popen:
        argv = [
            sys.executable, "-m", "granian", "--interface", "wsgi",
            "--host", HOST, "--port", str(port), "--workers", str(workers),
            "--no-access-log", "--log-level", "error",
            app,
        ]  # fmt: skip
        return _popen(argv, log_path)

    return start


#: name -> launch recipe, in the order the benchmark runs them.
SERVERS: dict[str, Callable[..., subprocess.Popen]] = {
    "gearshift-sync": start_gearshift_sync,
    "gearshift-thread": start_gearshift_thread,
    "gearshift-fork": start_gearshift_fork,
    "gearshift-threadpool": start_gearshift_threadpool,
    **{name: _start_prefork(name) for name in PREFORK_ROWS},
    "waitress": start_waitress,
    "werkzeug-threaded": start_werkzeug_threaded,
    "werkzeug-processes": start_werkzeug_processes,
    "gunicorn-sync": start_gunicorn_sync,
    "gunicorn-gthread": start_gunicorn_gthread,
    "gunicorn-gthread-1x4": start_gunicorn_gthread_1x4,
    "cheroot": start_cheroot,
    "granian-1": _granian(1),
    "granian-2": _granian(2),
    "fork-floor": start_fork_floor,
    "loop-floor": start_loop_floor,
    "handoff-floor": start_handoff_floor,
    "wsgi-floor": start_wsgi_floor,
    "wsgi-handoff-floor": start_wsgi_handoff_floor,
}

#: the Python packages each server needs (for the setup check in bench_http.py)
REQUIRES: dict[str, str] = {
    "gearshift-sync": "gearshift",
    "gearshift-thread": "gearshift",
    "gearshift-fork": "gearshift",
    "gearshift-threadpool": "gearshift",
    **dict.fromkeys(PREFORK_ROWS, "gearshift"),
    "waitress": "waitress",
    "werkzeug-threaded": "werkzeug",
    "werkzeug-processes": "werkzeug",
    "gunicorn-sync": "gunicorn",
    "gunicorn-gthread": "gunicorn",
    "gunicorn-gthread-1x4": "gunicorn",
    "cheroot": "cheroot",
    "granian-1": "granian",
    "granian-2": "granian",
    "fork-floor": "gearshift",
    "loop-floor": "gearshift",
    "handoff-floor": "gearshift",
    "wsgi-floor": "httptools",
    "wsgi-handoff-floor": "httptools",
}


def stop(proc: subprocess.Popen, grace: float = 5.0) -> int | None:
    """SIGTERM the server's whole process group, wait up to ``grace`` s for its leader, then
    SIGKILL whatever is left of the group (workers, forked children). Returns the leader's exit
    code (None if it had to be killed)."""
    code = proc.poll()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    if code is None:
        try:
            code = proc.wait(grace)
        except subprocess.TimeoutExpired:
            code = None
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    return code


def main(argv: list[str]) -> int:
    global _APP_SPEC
    if len(argv) not in (2, 3) or argv[0] not in RUNNERS:
        print(f"usage: http_servers.py {{{','.join(RUNNERS)}}} PORT [MODULE:APP]", file=sys.stderr)
        print("(gunicorn-* are started by bench_http.py through `python -m gunicorn`)", file=sys.stderr)
        return 2
    if len(argv) == 3:
        _APP_SPEC = argv[2]
    _quiet_logging()
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    RUNNERS[argv[0]](int(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
