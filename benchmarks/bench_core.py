"""Core benchmark: gearshift's strategies against their socketserver twins, and shutdown latency.

Run from the repository root (needs ``wrk``; Debian/Ubuntu package ``wrk``)::

    .venv/bin/python benchmarks/bench_core.py                     # defaults: 5 s, 16 conns, 3 rounds
    .venv/bin/python benchmarks/bench_core.py --only sync,thread --rounds 5

Throughput — method
    Each server runs in its own subprocess (``benchmarks/core_server.py``), so the measurement
    contains no harness threads and the fork servers' parent is single-threaded. Every server
    serves the SAME handler class: read request-head lines until a blank line, write
    ``HTTP/1.0 200 OK ... Content-Length: 2 ... ok``, return; the server closes the connection.
    Pairs compared (see core_server.py for the exact options):

        sync    gearshift strategy="sync"                  vs socketserver.TCPServer
        thread  gearshift strategy="thread" (daemon)       vs socketserver.ThreadingTCPServer (daemon)
        fork    gearshift strategy="fork", max_children=40 vs socketserver.ForkingTCPServer, 40

    For each strategy and round, three servers are measured one after the other: gearshift,
    stdlib as shipped (``request_queue_size = 5``), and stdlib with ``request_queue_size = 1024``
    (gearshift's default backlog). The order rotates every round (ABC, BCA, CAB, ...) so slow
    drift of the machine's load hits every server equally. Per server run: start the subprocess,
    wait until it answers a real request, ``wrk`` warm-up (``--warmup`` s, discarded), then the
    measured ``wrk -t1 -c<connections> -d<duration>s -H "Connection: close" --latency`` (wrk opens
    a new connection for every request), then SIGTERM (SIGKILL of the whole process group if it
    does not exit within 10 s). The number reported is the MEDIAN req/s over the rounds.

Throughput — how to read the table
    ``ratio`` = gearshift median / stdlib median: > 1.0 means gearshift served more requests per
    second. Only ratios from the same run mean anything: absolute req/s depend on the machine and
    on whatever else runs on it. The first table compares against socketserver exactly as it ships
    (backlog 5); the second gives the stdlib server the same 1024 backlog as gearshift, so the
    difference that remains is the accept loop / strategy itself, not the listen queue. With a
    backlog of 5 and 16 concurrent connects, the kernel drops SYNs once the accept queue is full
    and the client retransmits after ~1 s: that shows up as lower req/s, high latency maxima and
    wrk "timeout" socket errors. ``errors`` sums, over the measured runs only, wrk's "Socket
    errors" (connect/read/write/timeout) and "Non-2xx or 3xx responses"; "0" means none on either
    side. The per-round table shows the spread (if it is wider than the gap between two medians,
    the gap is noise), each server's RSS after warm-up, which is what every fork() copies, and
    the median minor page faults per request of the server and its reaped children (from
    /proc), the steadier measure of a fork server's cost on a noisy machine.
    The raw per-round numbers, wrk output, latencies and load averages are in the JSON file.

Shutdown latency — method
    In-process, one thread per server: for gearshift (``sync``) and ``socketserver.TCPServer``
    alternately, ``--shutdown-iterations`` times each: start ``serve_forever(poll_interval=0.5)``
    in a thread, sleep a random 0-0.5 s, time ``server.shutdown()`` with ``time.perf_counter``,
    then ``server_close()`` and join. socketserver's loop only notices the request at its next
    ``poll_interval`` tick (expected median ~250 ms); gearshift wakes its selector. The table
    gives median, p90 and max in ms and stdlib median / gearshift median.

Output: the Markdown tables on stdout, and everything (tables, raw numbers, environment) as JSON
in ``benchmarks/results/core-<YYYYmmdd-HHMMSS>.json`` (gitignored).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime as _dt
import json
import os
import platform
import random
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
SERVER_SCRIPT = HERE / "core_server.py"
RESULTS_DIR = HERE / "results"
STRATEGIES = ("sync", "thread", "fork")
STDLIB_BACKLOG_BIG = 1024

#: (label, kind, backlog passed to core_server.py; None = the implementation's default)
SERVERS = (
    ("gearshift", "gearshift", None),
    ("stdlib", "stdlib", None),
    ("stdlib-q1024", "stdlib", STDLIB_BACKLOG_BIG),
)

STARTUP_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
WRK_GRACE = 30.0


# -- server subprocesses ---------------------------------------------------------------------

_live: dict[int, subprocess.Popen] = {}


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    """Linux: have the kernel SIGKILL the server if this harness dies without cleaning up."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class ServerProcess:
    """One ``core_server.py`` subprocess in its own process group (so forked children can be
    killed with it)."""

    def __init__(self, kind: str, strategy: str, backlog: int | None) -> None:
        cmd = [sys.executable, str(SERVER_SCRIPT), kind, strategy]
        if backlog is not None:
            cmd += ["--backlog", str(backlog)]
        self.cmd = cmd
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - kept open for the server's lifetime
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            start_new_session=True,
            preexec_fn=_set_pdeathsig if sys.platform.startswith("linux") else None,
        )
        _live[self.proc.pid] = self.proc
        self.info: dict = {}
        self.stop_info: dict = {}

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> int:
        """Read the port line, then wait until the server answers a real request."""
        deadline = time.monotonic() + timeout
        line = b""
        fd = self.proc.stdout.fileno()
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None:
                raise RuntimeError(f"server did not start: {self.cmd}\n{self.stderr_text()}")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise RuntimeError(f"server exited before printing its port\n{self.stderr_text()}")
                line += chunk
        self.info = json.loads(line.decode())
        port = self.info["port"]
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if probe(port, timeout=max(0.1, min(2.0, deadline - time.monotonic()))):
                    return port
            except OSError as exc:
                last_error = exc
            time.sleep(0.05)
        raise RuntimeError(f"server on port {port} never answered: {last_error}\n{self.stderr_text()}")

    def stop(self) -> None:
        """SIGTERM the server (it drains and exits), then SIGKILL whatever is left of its group."""
        proc = self.proc
        t0 = time.monotonic()
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
                self.stop_info = {"exit": proc.returncode, "seconds": round(time.monotonic() - t0, 3)}
            except subprocess.TimeoutExpired:
                self.stop_info = {"exit": "killed after SIGTERM timeout"}
        kill_group(proc)
        _live.pop(proc.pid, None)
        if proc.stdout:
            proc.stdout.close()

    def stderr_text(self, limit: int = 4000) -> str:
        # pread, not seek: the server writes through the same open file, at its offset.
        fd = self.stderr.fileno()
        data = os.pread(fd, os.fstat(fd).st_size, 0)
        return data[-limit:].decode(errors="replace")

    def close(self) -> None:
        self.stderr.close()


def read_rss_kb(pid: int) -> int | None:
    """The server's resident set size after warm-up (Linux): what every fork() has to copy."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def read_faults(pid: int) -> int | None:
    """Minor page faults of the server process and of its children it has reaped (Linux).

    Under ``fork`` most of a request's cost is copy-on-write page faults, and their count,
    unlike req/s, barely depends on what else the machine is doing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[7]) + int(fields[8])  # minflt, cminflt
    except (OSError, ValueError, IndexError):
        return None


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL every process left in ``proc``'s process group (it is the group leader)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def kill_all_live() -> None:
    for proc in list(_live.values()):
        kill_group(proc)
        _live.pop(proc.pid, None)


def probe(port: int, timeout: float) -> bool:
    """One real request; True if the fixed 200 response came back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\nHost: probe\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    return data.startswith(b"HTTP/1.0 200 OK") and data.endswith(b"ok")


# -- wrk -------------------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests_per_sec: float
    requests: int
    seconds: float
    latency_avg_ms: float | None = None
    latency_max_ms: float | None = None
    latency_p50_ms: float | None = None
    latency_p90_ms: float | None = None
    latency_p99_ms: float | None = None
    socket_errors: dict[str, int] = field(default_factory=dict)
    non_2xx: int = 0

    @property
    def error_total(self) -> int:
        return sum(self.socket_errors.values()) + self.non_2xx


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not match:
        raise ValueError(f"cannot parse wrk duration {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    done = re.search(r"^\s*(\d+) requests in ([\d.]+\w+),", output, re.M)
    if not rps or not done:
        raise ValueError(f"unexpected wrk output:\n{output}")
    result = WrkResult(float(rps.group(1)), int(done.group(1)), _ms(done.group(2)) / 1000.0)
    lat = re.search(r"^\s*Latency\s+(\S+)\s+(\S+)\s+(\S+)", output, re.M)
    if lat:
        result.latency_avg_ms = _ms(lat.group(1))
        result.latency_max_ms = _ms(lat.group(3))
    for pct, attr in (("50", "latency_p50_ms"), ("90", "latency_p90_ms"), ("99", "latency_p99_ms")):
        match = re.search(rf"^\s*{pct}%\s+(\S+)", output, re.M)
        if match:
            setattr(result, attr, _ms(match.group(1)))
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if errs:
        result.socket_errors = {
            name: int(value)
            for name, value in zip(("connect", "read", "write", "timeout"), errs.groups(), strict=False)
            if int(value)
        }
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non2xx:
        result.non_2xx = int(non2xx.group(1))
    return result


def run_wrk(port: int, duration: int, connections: int, threads: int) -> tuple[WrkResult, str]:
    cmd = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency",
        "-H", "Connection: close", f"http://127.0.0.1:{port}/",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + WRK_GRACE)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout), done.stdout


# -- the throughput benchmark ----------------------------------------------------------------


def measure_one(label: str, kind: str, strategy: str, backlog: int | None, args) -> dict:
    server = ServerProcess(kind, strategy, backlog)
    try:
        port = server.wait_ready()
        if args.warmup > 0:
            run_wrk(port, args.warmup, args.connections, args.threads)
        rss_kb = read_rss_kb(server.proc.pid)
        load_before = os.getloadavg()
        faults_before = read_faults(server.proc.pid)
        result, raw = run_wrk(port, args.duration, args.connections, args.threads)
        time.sleep(0.3)  # let the last children exit and be reaped into cminflt
        faults_after = read_faults(server.proc.pid)
    finally:
        server.stop()
        stderr = server.stderr_text()
        server.close()
    record = {
        "label": label, "kind": kind, "strategy": strategy, "server": server.info,
        "loadavg_before": [round(x, 2) for x in load_before], "server_rss_kb": rss_kb,
        "page_faults_per_request": (
            None if faults_before is None or faults_after is None or not result.requests
            else (faults_after - faults_before) / result.requests
        ),
        **asdict(result),
        "stop": server.stop_info,
    }
    if stderr.strip():
        record["server_stderr_tail"] = stderr
    record["wrk_output"] = raw
    return record


def run_throughput(args, log) -> dict[str, dict[str, list[dict]]]:
    """{strategy: {label: [record per round]}}"""
    runs: dict[str, dict[str, list[dict]]] = {}
    for strategy in args.only:
        runs[strategy] = {label: [] for label, _, _ in SERVERS}
        for rnd in range(args.rounds):
            order = SERVERS[rnd % len(SERVERS):] + SERVERS[:rnd % len(SERVERS)]
            for label, kind, backlog in order:
                record = measure_one(label, kind, strategy, backlog, args)
                record["round"] = rnd + 1
                runs[strategy][label].append(record)
                errors = describe_errors([record])
                log(f"  {strategy:6} round {rnd + 1}/{args.rounds} {label:13} "
                    f"{record['requests_per_sec']:10.1f} req/s  p99 {fmt_ms(record['latency_p99_ms'])}"
                    f"  max {fmt_ms(record['latency_max_ms'])}  errors: {errors}"
                    f"  load {record['loadavg_before'][0]:.2f}")
                if "server_stderr_tail" in record:
                    log(f"    server stderr: {record['server_stderr_tail'].strip().splitlines()[-1]}")
    return runs


def describe_errors(records: list[dict]) -> str:
    totals: dict[str, int] = {}
    for record in records:
        for name, count in record["socket_errors"].items():
            totals[name] = totals.get(name, 0) + count
        if record["non_2xx"]:
            totals["non-2xx"] = totals.get("non-2xx", 0) + record["non_2xx"]
    return ", ".join(f"{name} {count}" for name, count in totals.items()) or "0"


def fmt_kb(value: float | None) -> str:
    return "-" if value is None else f"{value / 1024:.1f} MB"


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}ms"


def summarize_throughput(runs) -> dict:
    summary: dict[str, dict] = {}
    for strategy, by_label in runs.items():
        entry: dict[str, dict] = {}
        for label, records in by_label.items():
            rps = [r["requests_per_sec"] for r in records]
            entry[label] = {
                "median_rps": statistics.median(rps),
                "min_rps": min(rps),
                "max_rps": max(rps),
                "rounds_rps": rps,
                "errors": describe_errors(records),
                "error_total": sum(sum(r["socket_errors"].values()) + r["non_2xx"] for r in records),
                "median_p99_ms": _median_opt([r["latency_p99_ms"] for r in records]),
                "max_latency_ms": max((r["latency_max_ms"] or 0.0) for r in records),
                "server_rss_kb": _median_opt([r.get("server_rss_kb") for r in records]),
                "median_faults_per_request": _median_opt([r.get("page_faults_per_request") for r in records]),
            }
        gs = entry["gearshift"]["median_rps"]
        for label in ("stdlib", "stdlib-q1024"):
            median = entry[label]["median_rps"]
            entry[label]["ratio_gearshift_over"] = gs / median if median else None
        summary[strategy] = entry
    return summary


def _median_opt(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def throughput_tables(summary: dict) -> str:
    out = []
    for label, title in (
        ("stdlib", "stdlib as shipped (request_queue_size=5; gearshift uses 1024)"),
        ("stdlib-q1024", f"stdlib with request_queue_size={STDLIB_BACKLOG_BIG} (same backlog as gearshift)"),
    ):
        out.append(f"### Throughput vs {title}\n")
        out.append("| strategy | gearshift req/s | stdlib req/s | ratio gearshift/stdlib | errors |")
        out.append("|---|---:|---:|---:|---|")
        for strategy, entry in summary.items():
            gs, std = entry["gearshift"], entry[label]
            ratio = std["ratio_gearshift_over"]
            errors = f"gearshift: {gs['errors']}; stdlib: {std['errors']}"
            out.append(
                f"| {strategy} | {gs['median_rps']:.0f} | {std['median_rps']:.0f} | "
                f"{'-' if ratio is None else f'{ratio:.2f}'} | {errors} |"
            )
        out.append("")
    out.append("Per-round req/s (order rotated each round), median p99 latency, worst latency, "
               "server RSS after warm-up (the parent's, which fork() copies), median minor page "
               "faults per request (the server and its children, from /proc; steadier than req/s):\n")
    out.append("| strategy | server | rounds req/s | p99 (median) | max latency | RSS | faults/request |")
    out.append("|---|---|---|---:|---:|---:|---:|")
    for strategy, entry in summary.items():
        for label, stats in entry.items():
            rounds = ", ".join(f"{x:.0f}" for x in stats["rounds_rps"])
            faults = stats.get("median_faults_per_request")
            out.append(f"| {strategy} | {label} | {rounds} | {fmt_ms(stats['median_p99_ms'])} | "
                       f"{fmt_ms(stats['max_latency_ms'])} | {fmt_kb(stats['server_rss_kb'])} | "
                       f"{'-' if faults is None else f'{faults:.0f}'} |")
    out.append("")
    return "\n".join(out)


# -- shutdown latency ------------------------------------------------------------------------


def run_shutdown(args, log) -> dict[str, list[float]]:
    import socketserver

    from core_server import Handler

    import gearshift

    class StdlibServer(socketserver.TCPServer):
        allow_reuse_address = True

    factories = {
        "gearshift": lambda: gearshift.Server(("127.0.0.1", 0), Handler, strategy="sync"),
        "stdlib": lambda: StdlibServer(("127.0.0.1", 0), Handler),
    }
    rng = random.Random(args.seed)
    samples: dict[str, list[float]] = {name: [] for name in factories}
    for i in range(args.shutdown_iterations):
        names = list(factories) if i % 2 == 0 else list(factories)[::-1]
        for name in names:
            server = factories[name]()
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                                      name=f"bench-{name}", daemon=True)
            try:
                thread.start()
                time.sleep(rng.uniform(0.0, 0.5))
                t0 = time.perf_counter()
                server.shutdown()
                samples[name].append((time.perf_counter() - t0) * 1000.0)
            finally:
                server.server_close()
                thread.join(5.0)
            if thread.is_alive():
                raise RuntimeError(f"{name}: serve_forever() still running 5 s after shutdown()")
    log(f"  shutdown latency: {args.shutdown_iterations} samples each")
    return samples


def percentile(values: list[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    k = (len(ordered) - 1) * pct / 100.0
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summarize_shutdown(samples: dict[str, list[float]]) -> dict:
    summary = {
        name: {"median_ms": statistics.median(v), "p90_ms": percentile(v, 90), "max_ms": max(v),
               "min_ms": min(v), "n": len(v)}
        for name, v in samples.items()
    }
    gs = summary["gearshift"]["median_ms"]
    summary["ratio_stdlib_over_gearshift_median"] = summary["stdlib"]["median_ms"] / gs if gs > 0 else None
    return summary


def shutdown_table(summary: dict) -> str:
    ratio = summary["ratio_stdlib_over_gearshift_median"]
    lines = [
        "### shutdown() latency (serve_forever(poll_interval=0.5), shutdown after random 0-0.5 s)\n",
        "| server | n | median ms | p90 ms | max ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, label in (("gearshift", "gearshift (sync)"), ("stdlib", "socketserver.TCPServer")):
        s = summary[name]
        lines.append(f"| {label} | {s['n']} | {s['median_ms']:.3f} | {s['p90_ms']:.3f} | {s['max_ms']:.3f} |")
    lines.append("")
    lines.append(f"Ratio of medians stdlib/gearshift: {'-' if ratio is None else f'{ratio:.0f}x'}\n")
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------


def environment() -> dict:
    env = {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }
    with contextlib.suppress(Exception):
        env["wrk"] = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
    with contextlib.suppress(Exception):
        env["somaxconn"] = int(Path("/proc/sys/net/core/somaxconn").read_text())
    with contextlib.suppress(Exception):
        env["gearshift_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=HERE.parent, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        env["gearshift_dirty"] = bool(subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=HERE.parent, capture_output=True,
            text=True, timeout=10).stdout.strip())
    return env


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="gearshift vs socketserver: throughput and shutdown latency")
    parser.add_argument("--duration", type=int, default=5,
                        help="measured wrk seconds per run, whole seconds as wrk wants (default 5)")
    parser.add_argument("--connections", type=int, default=16, help="wrk -c (default 16)")
    parser.add_argument("--threads", type=int, default=1, help="wrk -t (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server; median is reported (default 3)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="discarded wrk seconds before each run, 0 for none (default 1)")
    parser.add_argument("--only", default=",".join(STRATEGIES),
                        help="comma-separated strategies to benchmark (default sync,thread,fork)")
    parser.add_argument("--shutdown-iterations", type=int, default=30, help="samples per server (default 30)")
    parser.add_argument("--seed", type=int, default=12345, help="seed of the shutdown delays")
    parser.add_argument("--no-throughput", action="store_true", help="skip the wrk benchmark")
    parser.add_argument("--no-shutdown", action="store_true", help="skip the shutdown-latency benchmark")
    parser.add_argument("--output", type=Path, help="JSON path (default benchmarks/results/core-<date>.json)")
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(STRATEGIES))
    if unknown or not only:
        parser.error(f"--only takes a comma-separated subset of {','.join(STRATEGIES)}, not {args.only!r}")
    args.only = [s for s in STRATEGIES if s in only]
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.duration <= 0 or args.connections < 1 or args.threads < 1 or args.rounds < 1:
        parser.error("--duration, --connections, --threads and --rounds must be positive")
    if args.threads > args.connections:
        parser.error("wrk needs --threads <= --connections")
    if args.shutdown_iterations < 1:
        parser.error("--shutdown-iterations must be >= 1")
    return args


def _terminate(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.no_throughput and shutil.which("wrk") is None:
        print("wrk not found: install it (Debian/Ubuntu: apt-get install wrk)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(HERE))
    from bytecode import compile_gearshift

    compile_gearshift()  # as pip does for the stdlib: see bytecode.py
    atexit.register(kill_all_live)
    signal.signal(signal.SIGTERM, _terminate)
    # Explicitly: a shell starts background jobs with SIGINT ignored, and Python then keeps it so.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = _dt.datetime.now()
    result: dict = {
        "benchmark": "core",
        "started": started.isoformat(timespec="seconds"),
        "args": {k: v for k, v in vars(args).items() if k != "output"},
        "environment": environment(),
    }
    output = args.output or RESULTS_DIR / f"core-{started:%Y%m%d-%H%M%S}.json"
    tables = []
    try:
        if not args.no_throughput:
            total = len(args.only) * len(SERVERS) * args.rounds
            log(f"throughput: {total} runs of ~{args.warmup + args.duration + 1:.0f} s "
                f"(wrk -t{args.threads} -c{args.connections} -d{args.duration}s, Connection: close)")
            runs = run_throughput(args, log)
            summary = summarize_throughput(runs)
            result["throughput"] = {"summary": summary, "runs": runs}
            tables.append(throughput_tables(summary))
        if not args.no_shutdown:
            log("shutdown latency ...")
            samples = run_shutdown(args, log)
            summary = summarize_shutdown(samples)
            result["shutdown"] = {"summary": summary, "samples_ms": samples}
            tables.append(shutdown_table(summary))
    except KeyboardInterrupt:
        log("interrupted; stopping servers")
        kill_all_live()
        return 130
    finally:
        kill_all_live()
    result["environment"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["finished"] = _dt.datetime.now().isoformat(timespec="seconds")
    text = "\n".join(tables)
    result["tables_markdown"] = text
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"## gearshift core benchmark ({result['started']}, Python {result['environment']['python']}, "
          f"{result['environment']['cpu_count']} CPUs, load at start {result['environment']['loadavg_start']})\n")
    print(text)
    print(f"JSON: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
