"""Slow-client benchmark: how promptly a normal client is answered while slow clients hold connections.

Run (from the repository root, with the peers' venv of ``bench_http.py``)::

    benchmarks/.venv/bin/python benchmarks/bench_slow.py                       # 3 servers, ~3 min
    benchmarks/.venv/bin/python benchmarks/bench_slow.py --only gearshift-threadpool,waitress
    benchmarks/.venv/bin/python benchmarks/bench_slow.py --slowloris 100 --slow-body 0 --slow-read 0

Every server serves ``slow_app.app`` from its own subprocess (the recipes of
``http_servers.py``). For each server in turn: start it, measure the normal client alone for
``--baseline`` s, start the attacker, wait until its connections are open, measure the normal
client again for ``--duration`` s, stop the attacker, check that the server still answers, stop
the server.

- The **normal client** runs in this process: one request at a time, each on a new connection
  (``GET /``, ``Connection: close``), one every ``--pace`` s, each bounded by ``--timeout`` s. A
  request that times out, cannot connect, or is not answered 200 is an error, and counts in
  the percentiles as slower than any answer.
- The **attacker** is a separate process (this file with ``--attack``, on asyncio), so that its
  work never delays the measurement's. It keeps ``--slowloris`` connections sending a request
  head one header line every ``--interval`` s and never ending it, ``--slow-body`` connections
  that send a whole ``POST /upload`` head (``Content-Length: 1000000``) and then 10 body bytes
  every ``--interval`` s, and ``--slow-read`` connections that ask for ``/big`` (8 MiB) with a
  4 KiB receive buffer and read 1 KiB every ``--interval`` s. When the server ends one of them,
  the attacker records what it did and opens a new one, so the pressure stays constant.

What the server did to the slow clients, per kind: **served** (a complete response: the slow
reader read all of it, or the server answered the unfinished request with 2xx), **refused** (the
connection failed, or was answered 503), **timed out** (answered 408 or another 4xx/5xx, or closed
without a complete response), **held** (still open when the attack stopped). The RSS column is
the server's (all processes of its group) at the end of the attack.

Output: the table on stdout and in ``benchmarks/latest-slow.md``, everything (each request's
latency, the attacker's tallies) in ``benchmarks/results/slow-<date>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import http_servers  # noqa: E402
from bench_http import _on_signal, free_port, group_stats, scan_log, versions, wait_for_port  # noqa: E402
from bytecode import compile_gearshift  # noqa: E402

RESULTS = HERE / "results"
LATEST_MD = HERE / "latest-slow.md"
APP = "slow_app:app"
SERVERS = ("gearshift-threadpool", "waitress", "gunicorn-gthread-1x4")
KINDS = ("slowloris", "slow-body", "slow-read")
OUTCOMES = ("served", "refused", "timed out", "held")
#: how many connection attempts the attacker has in flight at once while it ramps up, so the
#: ramp does not overflow a listen backlog (which would be measuring the backlog, not the server)
CONNECT_AT_ONCE = 64

_live: list[subprocess.Popen] = []  # servers to stop on any exit path


# ---------------------------------------------------------------------------------------------
# the attacker (a separate process: ``bench_slow.py --attack PORT ...``)
# ---------------------------------------------------------------------------------------------


class Tally:
    """What happened to one kind of slow connection."""

    def __init__(self) -> None:
        self.opened = 0
        self.connect_failed = 0
        self.statuses: dict[str, int] = {}  # status code of the answer (to an unfinished request)
        self.closed_unanswered = 0  # EOF or reset with no complete response
        self.served = 0  # slow-read: the whole body arrived
        self.open = 0
        self.lifetimes: list[float] = []  # seconds from connect to the server ending it

    def outcomes(self) -> dict[str, int]:
        answered = {int(k): v for k, v in self.statuses.items()}
        ok = sum(v for k, v in answered.items() if k < 400)
        refused = self.connect_failed + answered.get(503, 0)
        timed_out = self.closed_unanswered + sum(v for k, v in answered.items() if k >= 400 and k != 503)
        return {"served": self.served + ok, "refused": refused, "timed out": timed_out, "held": self.open}

    def as_dict(self) -> dict[str, Any]:
        life = sorted(self.lifetimes)
        return {
            "opened": self.opened, "connect_failed": self.connect_failed, "statuses": self.statuses,
            "closed_unanswered": self.closed_unanswered, "served_body": self.served, "open_at_end": self.open,
            "outcomes": self.outcomes(),
            "lifetime_median_s": round(statistics.median(life), 2) if life else None,
        }  # fmt: skip


async def _status_of(reader: asyncio.StreamReader) -> str | None:
    """Read until the server answers (its status code) or ends the connection (None)."""
    try:
        line = await reader.readline()
    except (ConnectionError, OSError):
        return None
    parts = line.split()
    return parts[1].decode("ascii", "replace") if len(parts) >= 2 and line.startswith(b"HTTP/") else None


async def _open(port: int, rcvbuf: int | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf:  # before connect(), so that the window the server sees is this small
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (http_servers.HOST, port)), 10)
        return await asyncio.open_connection(sock=sock)
    except BaseException:
        sock.close()
        raise


class Attacker:
    def __init__(self, port: int, interval: float) -> None:
        self.port = port
        self.interval = interval
        self.tallies = {kind: Tally() for kind in KINDS}
        self.stopping = asyncio.Event()
        self.connecting = asyncio.Semaphore(CONNECT_AT_ONCE)
        self.started = 0  # connections that sent their first bytes (or failed to connect) once

    async def keep(self, kind: str) -> None:
        """One slow client, reopened each time the server ends it, until the attack stops."""
        first = True
        while not self.stopping.is_set():
            await self.one(kind, first)
            first = False
            with contextlib.suppress(TimeoutError):  # not a hot loop against a refusing server
                await asyncio.wait_for(self.stopping.wait(), 0.5)

    async def one(self, kind: str, first: bool) -> None:
        tally = self.tallies[kind]
        async with self.connecting:
            try:
                reader, writer = await _open(self.port, 4096 if kind == "slow-read" else None)
                writer.write(self.request_start(kind))
                await writer.drain()
            except (OSError, TimeoutError):
                tally.connect_failed += 1
                self.started += first
                return
        tally.opened += 1
        tally.open += 1
        self.started += first
        began = time.monotonic()
        ended_by_server = True
        try:
            if kind == "slow-read":
                ended_by_server = await self.read_slowly(reader, tally)
            else:
                ended_by_server = await self.trickle(kind, reader, writer, tally)
        finally:
            tally.open -= 1
            if ended_by_server:
                tally.lifetimes.append(time.monotonic() - began)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def request_start(self, kind: str) -> bytes:
        host = f"Host: {http_servers.HOST}:{self.port}\r\n".encode()
        if kind == "slowloris":
            return b"GET / HTTP/1.1\r\n" + host + b"User-Agent: slowloris\r\n"
        if kind == "slow-body":
            return (b"POST /upload HTTP/1.1\r\n" + host + b"Content-Type: application/octet-stream\r\n"
                    b"Content-Length: 1000000\r\n\r\n")  # fmt: skip
        return b"GET /big HTTP/1.1\r\n" + host + b"\r\n"

    async def trickle(self, kind: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      tally: Tally) -> bool:
        """Send a little every interval until the server answers or closes (True) or the attack
        stops (False)."""
        answer = asyncio.ensure_future(_status_of(reader))
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            n = 0
            while True:
                done, _ = await asyncio.wait({answer, stop}, timeout=self.interval,
                                             return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
                if answer in done:
                    status = answer.result()
                    if status is None:
                        tally.closed_unanswered += 1
                    else:
                        tally.statuses[status] = tally.statuses.get(status, 0) + 1
                    return True
                if stop in done:
                    return False
                n += 1
                try:
                    writer.write(f"X-Slow-{n}: {n}\r\n".encode() if kind == "slowloris" else b"0123456789")
                    await writer.drain()
                except (ConnectionError, OSError):
                    pass  # the answer (or the EOF) is read above
        finally:
            for task in (answer, stop):
                task.cancel()

    async def read_slowly(self, reader: asyncio.StreamReader, tally: Tally) -> bool:
        """Read 1 KiB every interval; True once the server ends it (or the body is complete)."""
        head = b""
        got = 0
        length: int | None = None
        while not self.stopping.is_set():
            try:
                chunk = await reader.read(1024)
            except (ConnectionError, OSError):
                chunk = b""
            if not chunk:
                status = head.split()[1].decode() if head.startswith(b"HTTP/") and len(head.split()) > 1 else None
                if status is not None and status != "200":
                    tally.statuses[status] = tally.statuses.get(status, 0) + 1
                else:
                    tally.closed_unanswered += 1
                return True
            if length is None:
                head += chunk
                end = head.find(b"\r\n\r\n")
                if end >= 0:
                    length = _content_length(head[:end])
                    got = len(head) - end - 4
            else:
                got += len(chunk)
            if length is not None and got >= length:
                tally.served += 1
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.interval)
        return False

    async def run(self, counts: dict[str, int], ramp_timeout: float) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_reader(sys.stdin.fileno(), self._stdin_readable)
        total = sum(counts.values())
        tasks = [asyncio.ensure_future(self.keep(kind)) for kind in KINDS for _ in range(counts[kind])]
        deadline = time.monotonic() + ramp_timeout
        while self.started < total and time.monotonic() < deadline and not self.stopping.is_set():
            await asyncio.sleep(0.1)
        await asyncio.sleep(min(1.0, self.interval))  # the servers' first reaction to the last ones
        self.report("READY")
        await self.stopping.wait()
        self.report("HOLDING")  # what was open when the measurement ended, before closing them
        await asyncio.gather(*tasks, return_exceptions=True)

    def _stdin_readable(self) -> None:
        if not os.read(sys.stdin.fileno(), 1):  # the harness closed our stdin: stop
            asyncio.get_running_loop().remove_reader(sys.stdin.fileno())
            self.stopping.set()

    def report(self, tag: str) -> None:
        print(f"{tag} " + json.dumps({k: t.as_dict() for k, t in self.tallies.items()}), flush=True)


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            with contextlib.suppress(ValueError):
                return int(value)
    return None


def attack_main(args: argparse.Namespace) -> int:
    raise_nofile()
    counts = {"slowloris": args.slowloris, "slow-body": args.slow_body, "slow-read": args.slow_read}
    asyncio.run(Attacker(args.attack, args.interval).run(counts, args.ramp_timeout))
    return 0


# ---------------------------------------------------------------------------------------------
# the harness
# ---------------------------------------------------------------------------------------------


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard one (children inherit it: the servers need it too)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def normal_request(port: int, timeout: float) -> tuple[float, str | None]:
    """One request on a new connection: (seconds, None) if answered 200, else (seconds, error)."""
    began = time.monotonic()
    try:
        with socket.create_connection((http_servers.HOST, port), timeout=timeout) as sock:
            sock.settimeout(max(0.01, timeout - (time.monotonic() - began)))
            sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
                sock.settimeout(max(0.01, timeout - (time.monotonic() - began)))
    except TimeoutError:
        return time.monotonic() - began, "timeout"
    except OSError as exc:
        return time.monotonic() - began, type(exc).__name__
    took = time.monotonic() - began
    status = data.split(b" ", 2)[1].decode("ascii", "replace") if data.startswith(b"HTTP/") else "no answer"
    if status != "200":
        return took, f"status {status}"
    if not data.endswith(b"Hello, World!"):
        return took, "short body"
    return took, None


def measure(port: int, duration: float, pace: float, timeout: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    end = time.monotonic() + duration
    while (now := time.monotonic()) < end:
        took, error = normal_request(port, timeout)
        if error is None:
            latencies.append(took)
        else:
            errors[error] = errors.get(error, 0) + 1
        time.sleep(max(0.0, pace - (time.monotonic() - now)))
    return summarize_latencies(latencies, errors)


def summarize_latencies(latencies: list[float], errors: dict[str, int]) -> dict[str, Any]:
    """Percentiles over every request, a failed one counting as slower than any answer (so a
    server that answers nobody has a p99 of "failed", not none)."""
    n_errors = sum(errors.values())
    ordered = sorted(latencies) + [math.inf] * n_errors

    def pct(p: float) -> float | str | None:
        if not ordered:
            return None
        value = ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]
        return "failed" if value == math.inf else round(1000 * value, 2)

    return {"ok": len(latencies), "errors": errors, "n_errors": n_errors,
            "p50_ms": pct(50), "p99_ms": pct(99), "max_ms": pct(100)}  # fmt: skip


def group_rss_mb(pgid: int) -> float:
    """Resident memory of every process in the server's group (gunicorn: master + worker)."""
    pages = sum(int(fields[21]) for fields in group_stats(pgid))  # field 24: rss, in pages
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


class AttackerProcess:
    """The attacker subprocess and the JSON lines it prints."""

    def __init__(self, port: int, args: argparse.Namespace) -> None:
        argv = [sys.executable, str(Path(__file__).resolve()), "--attack", str(port),
                "--slowloris", str(args.slowloris), "--slow-body", str(args.slow_body),
                "--slow-read", str(args.slow_read), "--interval", str(args.interval),
                "--ramp-timeout", str(args.ramp_timeout)]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     start_new_session=True)  # fmt: skip
        self.lines: dict[str, dict[str, Any]] = {}
        self._got = {tag: threading.Event() for tag in ("READY", "HOLDING")}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            tag, _, payload = line.partition(" ")
            if tag in self._got:
                self.lines[tag] = json.loads(payload)
                self._got[tag].set()

    def wait(self, tag: str, timeout: float) -> dict[str, Any] | None:
        self._got[tag].wait(timeout)
        return self.lines.get(tag)

    def stop(self, timeout: float = 30.0) -> dict[str, Any] | None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()  # the attacker's signal to stop
        holding = self.wait("HOLDING", timeout)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._reader.join(5)
        return holding


def bench_one(name: str, args: argparse.Namespace, logdir: Path) -> dict[str, Any]:
    port = free_port()
    log = logdir / f"{name}.log"
    rec: dict[str, Any] = {"server": name, "port": port, "log": str(log)}
    proc = http_servers.SERVERS[name](port, log, app=APP)
    _live.append(proc)
    try:
        wait_for_port(port, proc)
        rec["alone"] = measure(port, args.baseline, args.pace, args.timeout)
        print(f"  {name}: alone p50 {rec['alone']['p50_ms']} ms, p99 {rec['alone']['p99_ms']} ms", file=sys.stderr)
        attacker = AttackerProcess(port, args)
        try:
            rec["ready"] = attacker.wait("READY", args.ramp_timeout + 30)
            rec["under_attack"] = measure(port, args.duration, args.pace, args.timeout)
            rec["rss_mb"] = group_rss_mb(proc.pid)
        finally:
            rec["attack"] = attacker.stop()
        rec["after"] = measure(port, 1.0, args.pace, args.timeout)
        ua = rec["under_attack"]
        print(f"  {name}: under attack p50 {ua['p50_ms']} ms, p99 {ua['p99_ms']} ms, errors {ua['errors']}",
              file=sys.stderr)  # fmt: skip
    except RuntimeError as exc:
        rec["failed"] = str(exc)
    finally:
        rec["exit_code"] = http_servers.stop(proc)
        _live.remove(proc)
        rec["log_trouble"] = scan_log(log)
    return rec


def fmt_ms(value: float | str | None) -> str:
    if value is None:
        return "—"
    return value if isinstance(value, str) else f"{value:,.1f}"


def fmt_errors(m: dict[str, Any] | None) -> str:
    if not m:
        return "—"
    if not m["n_errors"]:
        return f"0 / {m['ok']}"
    return f"{m['n_errors']} / {m['ok'] + m['n_errors']} ({', '.join(f'{k} {v}' for k, v in m['errors'].items())})"


def markdown(records: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    a = meta["args"]
    lines = [
        (f"Slow-client benchmark, {meta['date']}: {a['slowloris']} slowloris, {a['slow_body']} slow-body and "
         f"{a['slow_read']} slow-read connections (one step every {a['interval']:g} s), a normal client "
         f"(a new connection per request, one every {a['pace']:g} s, {a['timeout']:g} s timeout) measured for "
         f"{a['duration']:g} s; {meta['cpus']} CPUs, load average {meta['loadavg_start']} at start."),
        "",
        "| server | alone p50 / p99 ms | under attack p50 / p99 ms | max ms | errors / requests | RSS MB |",
        "|---|---:|---:|---:|---|---:|",
    ]  # fmt: skip
    for r in records:
        if r.get("failed"):
            lines.append(f"| {r['server']} | failed: {r['failed']} | | | | |")
            continue
        al, ua = r.get("alone"), r.get("under_attack") or {}
        lines.append(
            f"| {r['server']} | {fmt_ms(al['p50_ms'])} / {fmt_ms(al['p99_ms'])} | "
            f"{fmt_ms(ua.get('p50_ms'))} / {fmt_ms(ua.get('p99_ms'))} | {fmt_ms(ua.get('max_ms'))} | "
            f"{fmt_errors(ua)} | {r.get('rss_mb', '—')} |"
        )
    lines += ["", "What each server did to the slow clients during the attack (connections; served / refused / "
              "timed out / held open at the end; median seconds until the server ended one):", "",
              "| server | " + " | ".join(KINDS) + " |", "|---|" + "---|" * len(KINDS)]  # fmt: skip
    for r in records:
        attack = r.get("attack") or {}
        cells = [r["server"]]
        for kind in KINDS:
            t = attack.get(kind)
            if not t or not t["opened"] + t["connect_failed"]:
                cells.append("—")
                continue
            o = t["outcomes"]
            life = f", {t['lifetime_median_s']:g} s" if t["lifetime_median_s"] is not None else ""
            cells.append(" / ".join(str(o[k]) for k in OUTCOMES) + life)
        lines.append("| " + " | ".join(cells) + " |")
    trouble = [f"- {r['server']}: {r['log_trouble'][0][:160]}" for r in records if r.get("log_trouble")]
    after = [f"- {r['server']}: after the attack {fmt_errors(r.get('after'))} errors"
             for r in records if (r.get("after") or {}).get("n_errors")]  # fmt: skip
    if trouble or after:
        lines += ["", "Problems:", "", *trouble, *after]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--only", default=",".join(SERVERS), help=f"comma list of servers (default {','.join(SERVERS)})")
    p.add_argument("--slowloris", type=int, default=500, help="slowloris connections (default 500)")
    p.add_argument("--slow-body", type=int, default=500, help="slow-body connections (default 500)")
    p.add_argument("--slow-read", type=int, default=200, help="slow-read connections (default 200)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between a slow client's steps (default 5)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds the normal client is measured under attack")
    p.add_argument("--baseline", type=float, default=5.0, help="seconds it is measured alone first (default 5)")
    p.add_argument("--pace", type=float, default=0.05, help="seconds between the normal client's requests")
    p.add_argument("--timeout", type=float, default=5.0, help="the normal client's timeout per request (default 5)")
    p.add_argument("--ramp-timeout", type=float, default=30.0, help="longest wait for the attack's connections")
    p.add_argument("--no-latest", action="store_true", help=f"don't overwrite {LATEST_MD.name}")
    p.add_argument("--attack", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the attacker process
    args = p.parse_args(argv)
    if min(args.slowloris, args.slow_body, args.slow_read) < 0 or args.interval <= 0:
        p.error("connection counts must be >= 0 and --interval > 0")
    if args.attack:
        return attack_main(args)

    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in http_servers.SERVERS or n == "fork-floor"]
    if unknown:
        p.error(f"unknown server(s) {unknown}; choose from {', '.join(http_servers.SERVERS)}")
    nofile = raise_nofile()
    needed = 2 * (args.slowloris + args.slow_body + args.slow_read) + 100
    if nofile < needed:
        p.error(f"RLIMIT_NOFILE hard limit {nofile} < {needed} needed for this many connections")
    compile_gearshift()
    stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    logdir = RESULTS / f"logs-slow-{stamp}"
    logdir.mkdir(parents=True)
    meta: dict[str, Any] = {"date": stamp, "args": vars(args), "cpus": os.cpu_count(),
                            "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()), "versions": versions()}
    per = args.baseline + args.duration + 10
    print(f"bench_slow: {len(names)} servers, about {len(names) * per / 60:.1f} min; logs in {logdir}", file=sys.stderr)
    records = []
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # every way out stops the servers
        signal.signal(sig, _on_signal)
    try:
        for name in names:
            records.append(bench_one(name, args, logdir))
    except KeyboardInterrupt:
        print("\ninterrupted; stopping servers", file=sys.stderr)
        return 130
    finally:
        while _live:
            http_servers.stop(_live.pop(), grace=3.0)
    md = markdown(records, meta)
    print(md)
    out = RESULTS / f"slow-{stamp}.json"
    out.write_text(json.dumps({"meta": meta, "runs": records}, indent=1))
    if not args.no_latest:
        LATEST_MD.write_text("<!-- written by benchmarks/bench_slow.py; re-run it to refresh -->\n\n" + md)
    print(f"wrote {out}" + ("" if args.no_latest else f", {LATEST_MD}"), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
