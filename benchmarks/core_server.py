"""One benchmark server in its own process, for ``bench_core.py``.

    python benchmarks/core_server.py gearshift sync
    python benchmarks/core_server.py stdlib fork --backlog 1024
    python benchmarks/core_server.py gearshift sync --profile /tmp/sync.prof

Binds 127.0.0.1 on a free port, prints ONE line of JSON on stdout (``{"port": ..., ...}``) once
the socket is listening, then serves until SIGTERM or SIGINT (stdlib servers notice it within
``poll_interval`` = 0.5 s), closes the server (which drains
in-flight requests) and exits 0. Nothing else is written to stdout.

Both implementations serve the same handler class, :class:`Handler`: read request-head lines
until a blank line, write a fixed ``HTTP/1.0 200`` response, return; the server then closes the
connection. Matched configurations:

==========  ===================================================  =============================================
strategy    gearshift                                            stdlib
==========  ===================================================  =============================================
sync        ``Server(addr, Handler, strategy="sync")``           ``TCPServer``
thread      ``strategy="thread", daemon_threads=True,``          ``ThreadingTCPServer`` with
            ``block_on_close=True``                              ``daemon_threads = True, block_on_close = True``
fork        ``strategy="fork", max_children=40``                 ``ForkingTCPServer`` with ``max_children = 40``
==========  ===================================================  =============================================

Every stdlib class gets ``allow_reuse_address = True`` (gearshift's default) and otherwise keeps
socketserver's defaults, including ``request_queue_size = 5``, unless ``--backlog N`` is given.
gearshift keeps its own default backlog (1024) unless ``--backlog`` is given.

This process starts no threads of its own (the ``thread`` servers start one per request), so the
fork servers' parent is single-threaded when it forks.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socketserver
import sys

RESPONSE = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
MAX_LINE = 65537
MAX_HEAD_LINES = 100

STRATEGIES = ("sync", "thread", "fork")
KINDS = ("gearshift", "stdlib")


class Handler(socketserver.StreamRequestHandler):
    """Read an HTTP/1.0-ish request head (lines up to a blank line, or EOF), answer 200 "ok"."""

    def handle(self) -> None:
        for _ in range(MAX_HEAD_LINES):
            line = self.rfile.readline(MAX_LINE)
            if not line or line in (b"\r\n", b"\n"):
                break
        self.wfile.write(RESPONSE)


class StdlibSync(socketserver.TCPServer):
    allow_reuse_address = True


class StdlibThread(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    block_on_close = True


class StdlibFork(socketserver.ForkingTCPServer):
    allow_reuse_address = True
    max_children = 40


STDLIB_CLASSES = {"sync": StdlibSync, "thread": StdlibThread, "fork": StdlibFork}
GEARSHIFT_OPTIONS: dict[str, dict[str, object]] = {
    "sync": {},
    "thread": {"daemon_threads": True, "block_on_close": True},
    "fork": {"max_children": 40},
}


def make_server(kind: str, strategy: str, backlog: int | None, host: str = "127.0.0.1", port: int = 0):
    """Build (and bind) one benchmark server; ``backlog=None`` keeps the implementation's default."""
    address = (host, port)
    if kind == "stdlib":
        cls = STDLIB_CLASSES[strategy]
        if backlog is not None:
            cls = type(cls.__name__, (cls,), {"request_queue_size": backlog})
        return cls(address, Handler)
    if kind == "gearshift":
        import gearshift

        cls = gearshift.Server
        if backlog is not None:
            cls = type("Server", (cls,), {"request_queue_size": backlog})
        return cls(address, Handler, strategy=strategy, **GEARSHIFT_OPTIONS[strategy])
    raise ValueError(f"unknown kind {kind!r}")


def describe(server, kind: str, strategy: str) -> dict[str, object]:
    info: dict[str, object] = {
        "port": server.server_address[1],
        "pid": os.getpid(),
        "kind": kind,
        "strategy": strategy,
        "class": f"{type(server).__module__}.{type(server).__qualname__}",
        "request_queue_size": server.request_queue_size,
    }
    if kind == "gearshift":
        info["options"] = GEARSHIFT_OPTIONS[strategy]
    else:
        info["options"] = {
            name: getattr(server, name)
            for name in ("daemon_threads", "block_on_close", "max_children")
            if hasattr(server, name)
        }
    return info


def request_stop(server) -> None:
    """Make ``serve_forever()`` return soon; safe to call from a signal handler in the loop's thread.

    Why not raise KeyboardInterrupt from the handler: a signal that lands while the parent runs
    its after-fork callbacks (``os.register_at_fork``, e.g. logging's) raises there, and CPython
    swallows exceptions from those callbacks, so the stop request would be lost.
    """
    if hasattr(server, "strategy"):  # gearshift: shutdown() on the loop's own thread only asks
        server.shutdown()
    else:  # socketserver: shutdown() would wait for itself; set the flag its loop polls
        server._BaseServer__shutdown_request = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("strategy", choices=STRATEGIES)
    parser.add_argument("--backlog", type=int, default=None,
                        help="request_queue_size (default: the implementation's own)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--profile", metavar="FILE",
                        help="run serve_forever() under cProfile and dump the stats to FILE on exit")
    args = parser.parse_args(argv)

    server = make_server(args.kind, args.strategy, args.backlog, port=args.port)
    stop = lambda signum, frame: request_stop(server)  # noqa: E731
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    profiler = None
    try:
        sys.stdout.write(json.dumps(describe(server, args.kind, args.strategy)) + "\n")
        sys.stdout.flush()
        if args.profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        server.serve_forever(poll_interval=0.5)
    finally:
        if profiler is not None:
            profiler.disable()
        # A second SIGTERM while draining should not abort the drain with a traceback.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        server.server_close()
        if profiler is not None:
            profiler.dump_stats(args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
