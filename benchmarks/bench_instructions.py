"""Instructions per request, counted by valgrind's callgrind: a cost figure that the machine's
load does not move.

    benchmarks/.venv/bin/python benchmarks/bench_instructions.py
    benchmarks/.venv/bin/python benchmarks/bench_instructions.py --only gearshift-sync,wsgi-floor --requests 2000
    benchmarks/.venv/bin/python benchmarks/bench_instructions.py --baseline /tmp/base   # + baseline-* twins

req/s on this machine move by a fifth from one run to the next (other sessions share its two
cores), so a change to the request path worth a few per cent cannot be told from the noise by
``bench_http.py``; the number of instructions the server executes per request can, to a tenth
of a per cent from run to run. For each server (``http_servers.py``'s runners that serve in one
process) it starts the server under ``valgrind --tool=callgrind``, sends warm-up requests, zeroes
the counters (``callgrind_control --zero``), sends ``--requests`` requests from a client in this
process (a request on each of 16 keep-alive connections at once, then their responses, so that the
loop finds several ready per turn as under ``wrk``; or one new connection per request for
``close``), dumps
the counters and divides. Only user-space instructions are counted: the kernel's work for each
``recv``/``send`` (``bench_syscalls.py`` counts those calls) and time spent waiting are not.
Under valgrind the threads of a process run one at a time, so a pool's figure is its work, not
what its threads cost each other in GIL hand-offs (``bench_http.py``'s CPU µs shows that).

Needs ``valgrind`` (Debian package ``valgrind``, which has ``callgrind_control``).
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_http
import http_servers

DEFAULT = "gearshift-sync,gearshift-threadpool,wsgi-floor,wsgi-handoff-floor"
#: Runners that serve in the process http_servers.py starts (callgrind follows no child).
IN_PROCESS = ("gearshift-sync", "gearshift-thread", "gearshift-threadpool", "wsgi-floor",
              "wsgi-handoff-floor", "loop-floor", "handoff-floor")
CONNECTIONS = 16
WARM_UP = 200


def request_bytes(mode: str) -> bytes:
    close = b"Connection: close\r\n" if mode == "close" else b""
    return b"GET / HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (http_servers.HOST.encode(), close)


def exchange(sock: socket.socket, request: bytes | None) -> None:
    """Send one request (None: it was sent) and read its whole response (Content-Length framed:
    hello_app's)."""
    if request is not None:
        sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection before its response")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    if length is None:
        raise ValueError(f"no Content-Length in {head!r}")
    while len(body) < int(length.group(1)):
        body += sock.recv(65536)


def load(port: int, requests: int, mode: str) -> None:
    request, address = request_bytes(mode), (http_servers.HOST, port)
    if mode == "close":
        for _ in range(requests):
            with socket.create_connection(address) as sock:
                exchange(sock, request)
        return
    socks = [socket.create_connection(address) for _ in range(CONNECTIONS)]
    try:
        # A request on every connection at once, then the responses: the loop finds several
        # connections ready per turn, as under wrk, rather than paying a turn per request.
        for done in range(0, requests, CONNECTIONS):
            batch = socks[: min(CONNECTIONS, requests - done)]
            for sock in batch:
                sock.sendall(request)
            for sock in batch:
                exchange(sock, None)
    finally:
        for sock in socks:
            sock.close()


def total_instructions(dump: Path) -> int | None:
    """The dump's instruction total; None while callgrind is still writing it (the totals come
    last)."""
    for line in dump.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    return None


def count(name: str, requests: int, mode: str, env: dict[str, str] | None) -> float:
    """Instructions per request of server ``name`` (``baseline-X``: runner ``gearshift-X``
    importing gearshift from the baseline's source)."""
    runner = name.replace("baseline-", "gearshift-", 1)
    port = bench_http.free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", sys.executable,
             str(Path(http_servers.__file__).resolve()), runner, str(port)],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            bench_http.wait_for_port(port, proc, timeout=120.0)
            load(port, WARM_UP, mode)  # first-request work and lazy imports are not counted
            subprocess.run(["callgrind_control", "--zero", str(proc.pid)], capture_output=True, check=True)
            load(port, requests, mode)
            subprocess.run(["callgrind_control", "--dump", str(proc.pid)], capture_output=True, check=True)
            for _ in range(300):  # the dump is written by the server's own thread, as it runs
                dumps = sorted(Path(tmp).glob("callgrind.out.*.1"))
                total = total_instructions(dumps[0]) if dumps else None
                if total is not None:
                    return total / requests
                time.sleep(0.1)
            raise RuntimeError(f"{name}: callgrind wrote no complete dump within 30 s")
        finally:
            http_servers.stop(proc, grace=30.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=DEFAULT, help=f"comma list of servers (default {DEFAULT})")
    parser.add_argument("--requests", type=int, default=2000,
                        help="requests counted per server and mode (default 2000)")
    parser.add_argument("--modes", default="keep-alive,close", help="keep-alive, close or both (default both)")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="also count the baseline-* twins: gearshift imported from DIR/src (a checkout of another "
                             "commit, e.g. `git worktree add /tmp/base HEAD~1`), as bench_http.py's --baseline")
    args = parser.parse_args()
    names = args.only.split(",")
    unknown = [n for n in names if n not in IN_PROCESS]
    if unknown:
        parser.error(f"cannot count {unknown[0]!r}: one of {', '.join(IN_PROCESS)} "
                     "(callgrind follows no child process)")
    modes = args.modes.split(",")
    if any(mode not in ("keep-alive", "close") for mode in modes):
        parser.error("--modes: keep-alive, close, or both")
    envs: dict[str, dict[str, str] | None] = dict.fromkeys(names)
    if args.baseline is not None:
        src = args.baseline / "src"
        if not (src / "gearshift" / "__init__.py").is_file():
            parser.error(f"--baseline {args.baseline}: no src/gearshift/__init__.py there")
        path = os.pathsep.join(filter(None, [str(src.resolve()), os.environ.get("PYTHONPATH")]))
        for name in [n for n in names if n.startswith("gearshift-")]:
            envs["baseline-" + name.removeprefix("gearshift-")] = {**os.environ, "PYTHONPATH": path}
    print(f"instructions per request (callgrind), {args.requests} requests after {WARM_UP} to warm up; "
          f"keep-alive: a request on each of {CONNECTIONS} connections at once")
    print("\n| server | " + " | ".join(modes) + " |")
    print("|---|" + "---:|" * len(modes))
    for name, env in envs.items():
        figures = [count(name, args.requests, mode, env) for mode in modes]
        print(f"| {name} | " + " | ".join(f"{figure:,.0f}" for figure in figures) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(main())
