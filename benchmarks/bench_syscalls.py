"""System calls per keep-alive request, counted with ``strace -c``, for gearshift and its peers.

    benchmarks/.venv/bin/python benchmarks/bench_syscalls.py
    benchmarks/.venv/bin/python benchmarks/bench_syscalls.py --only gearshift-sync,granian-1 --duration 3

For each server (``http_servers.py``'s recipes, serving ``hello_app``): start it, attach
``strace -c -f`` to every thread of every process of its group (workers included), run one
keep-alive ``wrk -t1 -c32`` load, detach, and divide each system call's count by the requests
wrk completed. strace slows the server down several times over, so the req/s here mean nothing;
the counts per request do not depend on speed, except where a server batches more when it falls
behind (``epoll_wait`` per request drops as the loop finds more connections ready per wait).

Needs ``strace`` and ``wrk`` (Debian packages of those names), and permission to ptrace the
servers (root, or ``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_http
import http_servers

DEFAULT = "gearshift-sync,gearshift-threadpool,gunicorn-gthread-1x4,waitress,granian-1,wsgi-floor"


def group_tasks(pgid: int) -> list[str]:
    """Every thread of every process in the group ``pgid``: strace must attach to each, since
    ``-f`` only follows threads and processes created after it attached."""
    tids = []
    for proc, _ in bench_http.group_processes(pgid):
        with contextlib.suppress(OSError):  # it exited meanwhile
            tids += [task.name for task in (proc / "task").iterdir()]
    return tids


def count(name: str, duration: float) -> dict[str, float]:
    port = bench_http.free_port()
    proc = http_servers.SERVERS[name](port)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "strace.txt"
        try:
            bench_http.wait_for_port(port, proc)
            # A first load, so that lazy imports and first-request work are not counted.
            subprocess.run(["wrk", "-t1", "-c32", "-d1s", f"http://{http_servers.HOST}:{port}/"],
                           capture_output=True, check=True)
            tids = group_tasks(proc.pid)
            tracer = subprocess.Popen(["strace", "-c", "-f", "-o", str(out),
                                       *[arg for tid in tids for arg in ("-p", tid)]],
                                      stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # strace attaches to each thread in turn, and says nothing when done
            wrk = subprocess.run(["wrk", "-t1", "-c32", f"-d{max(1, round(duration))}s",
                                  f"http://{http_servers.HOST}:{port}/"], capture_output=True, text=True, check=True)
            tracer.send_signal(signal.SIGINT)
            tracer.wait(30)
        finally:
            http_servers.stop(proc)
        requests = int(re.search(r"(\d+) requests in", wrk.stdout).group(1))  # type: ignore[union-attr]
        calls: dict[str, float] = {}
        for line in out.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
                calls[fields[-1]] = int(fields[3]) / requests
        return calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=DEFAULT, help=f"comma list of servers (default {DEFAULT})")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds of load per server (default 3)")
    args = parser.parse_args()
    names = args.only.split(",")
    unknown = [n for n in names if n not in http_servers.SERVERS]
    if unknown:
        parser.error(f"unknown server {unknown[0]!r}; known: {', '.join(http_servers.SERVERS)}")
    results = {name: count(name, args.duration) for name in names}
    shown = sorted({call for calls in results.values() for call, n in calls.items() if n >= 0.01},
                   key=lambda call: -max(calls.get(call, 0) for calls in results.values()))
    print("| server | total | " + " | ".join(shown) + " |")
    print("|---|---:|" + "---:|" * len(shown))
    for name, calls in results.items():
        print(f"| {name} | {sum(calls.values()):.2f} | " + " | ".join(f"{calls.get(c, 0):.2f}" for c in shown) + " |")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(main())
