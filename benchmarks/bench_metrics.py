"""What ``--metrics-bind`` costs: ``threadpool`` serving ``hello_app.app`` with and without
metrics, measured with wrk, the two interleaved (A B, B A, ...) so that drift in the machine's
load falls on both alike.

Run from the repository root (needs ``wrk`` on PATH and ``pip install -e '.[prometheus]'``)::

    python benchmarks/bench_metrics.py --rounds 3 --duration 5

Prints the req/s of every run, the median of each side and their ratio, and the spread of each
side over the rounds (max/min - 1): a ratio inside the spread is within the noise.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
from pathlib import Path

from bench_http import wait_for_port

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def measure(metrics: bool, args: argparse.Namespace) -> float:
    port = free_port()
    command = [sys.executable, "-m", "gearshift", "hello_app:app", "-s", "threadpool", "-b", f"127.0.0.1:{port}",
               "--no-access-log", "--log-level", "warning"]
    if metrics:
        command += ["--metrics-bind", f"127.0.0.1:{free_port()}"]
    server = subprocess.Popen(command, cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, server)
        subprocess.run([args.wrk, "-t1", f"-c{args.connections}", "-d1s", f"http://127.0.0.1:{port}/"],
                       check=True, capture_output=True)  # warm-up, discarded
        out = subprocess.run([args.wrk, "-t1", f"-c{args.connections}", f"-d{args.duration}s",
                              f"http://127.0.0.1:{port}/"], check=True, capture_output=True, text=True).stdout
    finally:
        server.send_signal(signal.SIGTERM)
        _, errors = server.communicate(timeout=30)
    if b"Traceback" in errors or re.search(r"Non-2xx|Socket errors", out):
        raise SystemExit(f"errors while measuring (metrics={metrics}):\n{out}\n{errors.decode()}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert match, out
    return float(match[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per measured wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--wrk", default=shutil.which("wrk") or "wrk")
    args = parser.parse_args()
    runs: dict[bool, list[float]] = {False: [], True: []}
    for rnd in range(args.rounds):
        for metrics in (False, True) if rnd % 2 == 0 else (True, False):
            rate = measure(metrics, args)
            runs[metrics].append(rate)
            print(f"round {rnd + 1} {'with' if metrics else 'without'} metrics: {rate:,.0f} req/s", flush=True)
    without, with_ = statistics.median(runs[False]), statistics.median(runs[True])
    for metrics, rates in runs.items():
        print(f"{'with' if metrics else 'without'}: median {statistics.median(rates):,.0f} req/s, "
              f"spread {max(rates) / min(rates) - 1:.1%}")
    print(f"with / without: {with_ / without:.3f}")


if __name__ == "__main__":
    main()
