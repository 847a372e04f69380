"""How evenly ``prefork`` spreads load over its workers: the shared inherited listener (the
default) against one ``SO_REUSEPORT`` listener per worker (``reuse_port=True``).

For each listener mode and each wrk mode (keep-alive, ``Connection: close``) it starts
``http_servers.py gearshift-prefork-sync``-like servers (2 workers x ``sync``) on
``hello_app``, runs ``wrk -t1 -c32 -d5s``, and reads every worker's CPU time from /proc around
the run: the busiest worker's share of the workers' CPU time (50% is an even spread) and the
req/s. Run on a quiet machine::

    benchmarks/.venv/bin/python benchmarks/prefork_spread.py [--rounds 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SERVER = """
import logging, signal, sys
sys.path.insert(0, {here!r})
import gearshift
from hello_app import app
logging.disable(logging.CRITICAL)
server = gearshift.make_server("127.0.0.1", {port}, app, strategy="prefork", workers={workers},
                               worker_strategy="sync", reuse_port={reuse_port})
signal.signal(signal.SIGTERM, lambda *_: server.shutdown())
try:
    server.serve_forever()
finally:
    server.server_close()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(child) for child in f.read().split()]
    return found


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"the server did not listen on {port}")


def measure(reuse_port: bool, mode: str, workers: int, wrk: str, duration: float) -> tuple[float, float]:
    port = free_port()
    source = SERVER.format(here=str(HERE), port=port, workers=workers, reuse_port=reuse_port)
    proc = subprocess.Popen([sys.executable, "-c", source], stdin=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        deadline = time.monotonic() + 15
        while len(children(proc.pid)) < workers and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # every worker ready
        pids = children(proc.pid)
        headers = ["-H", "Connection: close"] if mode == "close" else []
        url = f"http://127.0.0.1:{port}/"
        subprocess.run([wrk, "-t1", "-c32", "-d1s", *headers, url], capture_output=True, check=True)
        before = {pid: cpu_ticks(pid) for pid in pids}
        out = subprocess.run([wrk, "-t1", "-c32", f"-d{duration:g}s", *headers, url],
                             capture_output=True, text=True, check=True).stdout
        used = {pid: cpu_ticks(pid) - before[pid] for pid in pids}
        match = re.search(r"Requests/sec:\s+([\d.]+)", out)
        rate = float(match[1]) if match else 0.0
        return max(used.values()) / max(1, sum(used.values())), rate
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not on PATH")
    print(f"{'listener':<22} {'mode':<11} {'busiest worker share':>21} {'req/s':>9}   (medians of {args.rounds})")
    for reuse_port in (False, True):
        for mode in ("keep-alive", "close"):
            runs = [measure(reuse_port, mode, args.workers, wrk, args.duration) for _ in range(args.rounds)]
            share = statistics.median(r[0] for r in runs)
            rate = statistics.median(r[1] for r in runs)
            name = "SO_REUSEPORT each" if reuse_port else "inherited, shared"
            print(f"{name:<22} {mode:<11} {share:>20.0%} {rate:>9,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
