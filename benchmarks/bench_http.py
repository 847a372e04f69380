"""HTTP benchmark: gearshift's strategies against common Python WSGI servers, with wrk.

Setup (once; the peers go into their own venv, never into the project's test venv)::

    python3 -m venv benchmarks/.venv
    benchmarks/.venv/bin/pip install -e . -r benchmarks/requirements.txt

Run (from the repository root; needs ``wrk`` on PATH, e.g. ``apt-get install wrk``)::

    benchmarks/.venv/bin/python benchmarks/bench_http.py                  # everything, ~23 min
    benchmarks/.venv/bin/python benchmarks/bench_http.py --connections 32  # no -c256 sweep, ~12 min
    benchmarks/.venv/bin/python benchmarks/bench_http.py --modes keep-alive,close  # no pipelining, ~17 min
    benchmarks/.venv/bin/python benchmarks/bench_http.py --rounds 3 --duration 10
    benchmarks/.venv/bin/python benchmarks/bench_http.py --only gearshift-thread,werkzeug-threaded
    benchmarks/.venv/bin/python benchmarks/bench_http.py --profile gearshift-sync   # cProfile

Every server (see ``http_servers.py``) serves ``hello_app.app`` (``b"Hello, World!"``) from its
own subprocess on 127.0.0.1, with logging off. For each round and each server in turn (the order
is reversed on every other round): start it, wait for its port, check one response by hand
(status, body, whether a second request on the same connection is answered, and whether two
requests written at once get their two responses), then for each concurrency level
(``--connections``, ``32,256`` by default) and mode (``--modes``: keep-alive, then
``Connection: close``, then pipelined) a warm-up wrk run (``--warmup`` s, discarded) and a measured
run (``wrk -t1 -cN -d5s --latency``), then stop the server's whole process group. The server's CPU
time (its whole process group, from /proc) is read around each measured run.

Pipelined is keep-alive with wrk's pipeline.lua: every write is 16 identical ``GET /`` requests,
and the next 16 go once all 16 responses are in. wrk counts each response, so req/s and CPU µs
per request are per request; its latency is per batch of 16, so no p50/p99 is shown for this
mode. A server that fails the two-request check (it closes after the first response, as
werkzeug, gunicorn's sync worker and fork-floor do, or answers only the first request of a read,
as loop-floor and handoff-floor do) gets no pipelined runs: wrk would count one response per batch,
or time out, and the table shows "—" with a footnote instead of that figure.

Reported req/s are the median over rounds of successful (non-error status) responses per second.
wrk's non-2xx/3xx responses and socket errors (connect/read/write/timeout) are summed over the
measured runs and shown in the table; a server that crashed, or whose log has a traceback, is
flagged there too. A gearshift figure with errors fails its bar: a server that errors is not
faster.

Output: a Markdown table (req/s per mode and level), a latency table (p50/p99, CPU µs per
request; no p50/p99 for pipelined) and PASS/FAIL per bar and level on stdout, the same table in
``benchmarks/latest-http.md``, and ``benchmarks/results/http-<date>.json`` (every run, raw wrk
output, versions, load average) and ``.png`` (bar chart). Server logs go to
``benchmarks/results/logs-<date>/``.

Only same-run ratios mean anything: absolute req/s depend on the machine and on whatever else
is running on it (wrk itself takes one of the cores).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import importlib.metadata
import importlib.util
import json
import os
import platform
import pstats
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import http_servers  # noqa: E402
from bytecode import compile_gearshift  # noqa: E402
from hello_app import BODY  # noqa: E402

RESULTS = HERE / "results"
LATEST_MD = HERE / "latest-http.md"
LATEST_PNG = HERE / "latest-http.png"
SETUP_HINT = (
    "set up the benchmark venv (from the repository root):\n"
    "    python3 -m venv benchmarks/.venv\n"
    "    benchmarks/.venv/bin/pip install -e . -r benchmarks/requirements.txt\n"
    "then run:\n"
    "    benchmarks/.venv/bin/python benchmarks/bench_http.py"
)

#: wrk's modes: keep-alive (one request at a time per connection), ``Connection: close`` (one
#: connection per request) and pipelined keep-alive (PIPELINE_DEPTH requests per write)
MODES = ("keep-alive", "close", "pipelined")
#: the modes of a results file from before ``pipelined`` (which had no ``modes`` in its args)
OLD_MODES = ("keep-alive", "close")
#: requests wrk writes at once per connection in the pipelined mode (wrk's pipeline.lua depth)
PIPELINE_DEPTH = 16
#: wrk -c levels of the concurrency sweep; the first is the main table's and the plot's
DEFAULT_CONNECTIONS = "32,256"
#: run order within a round: each gearshift strategy right next to the peers its bars compare it
#: with, so they see the same background load (the table keeps http_servers.SERVERS' order)
RUN_ORDER = (
    "gearshift-sync", "gearshift-prefork-1-sync", "waitress", "gearshift-threadpool", "gunicorn-gthread-1x4",
    "gearshift-thread", "werkzeug-threaded", "gearshift-fork", "werkzeug-processes", "gearshift-prefork-sync",
    "gunicorn-sync", "gearshift-prefork-threadpool", "gunicorn-gthread", "cheroot",
)  # fmt: skip
GEARSHIFT = ("gearshift-sync", "gearshift-thread", "gearshift-fork", "gearshift-threadpool")
THREADPOOL = ("gearshift-threadpool",)

#: (label, numerator servers, denominator server, mode, threshold), checked at every -c level.
#: A tuple of numerators means "the best of these (among those without errors)".
BARS: list[tuple[str, tuple[str, ...], str, str, float]] = [
    ("best gearshift keep-alive / waitress keep-alive", GEARSHIFT, "waitress", "keep-alive", 2.0),
    ("gearshift thread / werkzeug threaded, keep-alive",
     ("gearshift-thread",), "werkzeug-threaded", "keep-alive", 2.5),
    ("gearshift thread / werkzeug threaded, Connection: close",
     ("gearshift-thread",), "werkzeug-threaded", "close", 2.5),
    ("gearshift fork / werkzeug processes, Connection: close",
     ("gearshift-fork",), "werkzeug-processes", "close", 3.0),
    # issue 11: threadpool (threads=4) against the single-process threaded peers and sync
    ("threadpool / waitress, keep-alive", THREADPOOL, "waitress", "keep-alive", 2.0),
    ("threadpool / gunicorn gthread 1x4, keep-alive", THREADPOOL, "gunicorn-gthread-1x4", "keep-alive", 3.0),
    ("threadpool / gearshift sync, keep-alive", THREADPOOL, "gearshift-sync", "keep-alive", 0.8),
    ("threadpool / waitress, Connection: close", THREADPOOL, "waitress", "close", 1.5),
    ("threadpool / gunicorn gthread 1x4, Connection: close", THREADPOOL, "gunicorn-gthread-1x4", "close", 2.0),
    ("threadpool / gearshift sync, Connection: close", THREADPOOL, "gearshift-sync", "close", 0.6),
    # issue 12: prefork, 2 workers, against the multi-process peers
    ("prefork x sync / werkzeug processes, Connection: close",
     ("gearshift-prefork-sync",), "werkzeug-processes", "close", 3.0),
    ("prefork x sync / gunicorn sync, Connection: close",
     ("gearshift-prefork-sync",), "gunicorn-sync", "close", 2.0),
    ("prefork x sync / gunicorn sync, keep-alive", ("gearshift-prefork-sync",), "gunicorn-sync", "keep-alive", 2.0),
    ("prefork x threadpool / gunicorn gthread, keep-alive",
     ("gearshift-prefork-threadpool",), "gunicorn-gthread", "keep-alive", 2.0),
    ("prefork x threadpool / gunicorn gthread, Connection: close",
     ("gearshift-prefork-threadpool",), "gunicorn-gthread", "close", 1.5),
]

#: ratio columns of the main table, at the first -c level: (header, denominator server, mode)
RATIO_COLUMNS = [
    ("keep-alive ÷ waitress", "waitress", "keep-alive"),
    ("close ÷ waitress", "waitress", "close"),
    ("keep-alive ÷ gunicorn-gthread-1x4", "gunicorn-gthread-1x4", "keep-alive"),
    ("close ÷ gunicorn-gthread-1x4", "gunicorn-gthread-1x4", "close"),
    ("close ÷ werkzeug-threaded", "werkzeug-threaded", "close"),
    ("close ÷ werkzeug-processes", "werkzeug-processes", "close"),
]


def case(mode: str, connections: int) -> str:
    """The key of one measured configuration in the records: ``"close -c256"``."""
    return f"{mode} -c{connections}"


def cases(levels: list[int], modes: tuple[str, ...] | list[str] = MODES) -> list[str]:
    return [case(mode, c) for c in levels for mode in modes]


def parse_levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"--connections: a comma list of positive integers, not {text!r}")
    return levels


def parse_modes(text: str) -> list[str]:
    """``--modes``: a comma list of MODES, run (and shown) in MODES' order."""
    picked = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in picked if m not in MODES]
    if unknown or not picked:
        raise argparse.ArgumentTypeError(
            f"--modes: a comma list of {', '.join(MODES)}; not {', '.join(map(repr, unknown)) or repr(text)}"
        )
    return [m for m in MODES if m in picked]


# wrk reports its own exact counters through this done() hook, one JSON line on stdout.
WRK_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
"""
# The pipelined mode (wrk's pipeline.lua): one string of PIPELINE_DEPTH identical requests, Host
# header included (wrk.format adds it), written at once on every connection. wrk counts every
# response, so req/s are right, but it records one latency per batch (from the write to the last
# response), which is why the tables show none for this mode.
PIPELINE_LUA = r"""
init = function(args)
  local r = {}
  for i = 1, DEPTH do
    r[i] = wrk.format("GET", "/")
  end
  pipeline = table.concat(r)
end

request = function()
  return pipeline
end
""".replace("DEPTH", str(PIPELINE_DEPTH))
ERROR_KINDS = ("connect", "read", "write", "timeout", "status")
NOT_PIPELINING = "does not answer pipelined requests"

_live: list[subprocess.Popen] = []  # servers to stop on any exit path


# ---------------------------------------------------------------------------------------------
# plumbing
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((http_servers.HOST, 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((http_servers.HOST, port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server did not listen on port {port} within {timeout:.0f} s")


def read_response(fp: Any) -> tuple[int, bytes, bool]:
    """One HTTP/1.x response from a buffered socket file: status, body (Content-Length or chunked;
    else up to EOF) and whether the server will close after it."""
    line = fp.readline(65537)
    if not line:
        raise ConnectionError("connection closed")
    version, status, *_ = line.decode("latin-1").split(None, 2) + [""]
    if not version.startswith("HTTP/1.") or not status.isdigit():
        raise http.client.HTTPException(f"bad status line {line[:80]!r}")
    headers = http.client.parse_headers(fp)
    close = "close" in (headers.get("Connection") or "").lower() or (
        version == "HTTP/1.0" and "keep-alive" not in (headers.get("Connection") or "").lower())
    if "chunked" in (headers.get("Transfer-Encoding") or "").lower():
        chunks = []
        while size := int(fp.readline(1026).split(b";")[0], 16):
            chunks.append(fp.read(size))
            fp.readline(3)
        while fp.readline(65537) not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return int(status), b"".join(chunks), close
    if headers.get("Content-Length") is not None:
        length = int(headers["Content-Length"])
        body = fp.read(length)
        if len(body) < length:
            raise ConnectionError(f"body cut short ({len(body)} of {length} bytes)")
        return int(status), body, close
    return int(status), fp.read(), True


def probe_pipelining(port: int, n: int = 2, timeout: float = 2.0) -> tuple[bool, str]:
    """Write ``n`` requests at once on one connection, as the pipelined mode does: are they all
    answered, in order, with the right response, the connection kept open between them?"""
    head = f"GET / HTTP/1.1\r\nHost: {http_servers.HOST}:{port}\r\n\r\n".encode()
    got = 0
    try:
        with socket.create_connection((http_servers.HOST, port), timeout) as sock, sock.makefile("rb") as fp:
            sock.sendall(head * n)
            while got < n:
                status, body, close = read_response(fp)
                if status != 200 or body != BODY:
                    return False, f"response {got + 1} of {n}: status {status}, body {body[:40]!r}"
                got += 1
                if close and got < n:
                    return False, f"closes the connection after response {got} of {n}"
    except TimeoutError:
        return False, f"{got} of {n} answered; no response {got + 1} within {timeout:g} s"
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return False, f"{got} of {n} answered, then {type(exc).__name__}: {exc}"
    return True, f"{n} of {n} answered"


def probe(port: int, pipelining: bool = True) -> dict[str, Any]:
    """One request by hand: status, body, and whether the connection is kept for a second; and
    (``pipelining``) whether two requests written at once get their two responses."""
    conn = http.client.HTTPConnection(http_servers.HOST, port, timeout=5)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        body = resp.read()
        out: dict[str, Any] = {
            "status": resp.status,
            "body_ok": body == BODY,
            "content_type": resp.getheader("Content-Type"),
            "server": resp.getheader("Server"),
            "version": resp.version,
        }
        try:
            conn.request("GET", "/")
            resp2 = conn.getresponse()
            out["keep_alive"] = resp2.status == 200 and resp2.read() == BODY and not resp.will_close
        except (OSError, http.client.HTTPException):
            out["keep_alive"] = False
        out["ok"] = out["status"] == 200 and out["body_ok"]
        if pipelining:
            out["pipelining_honored"], out["pipelining"] = probe_pipelining(port)
        return out
    except (OSError, http.client.HTTPException) as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        conn.close()


def run_wrk(port: int, mode: str, duration: float, args: argparse.Namespace, lua: dict[str, Path],
            connections: int) -> dict[str, Any]:
    argv = [
        args.wrk, f"-t{min(args.threads, connections)}", f"-c{connections}", f"-d{max(1, round(duration))}s",
        "--timeout", f"{args.timeout}s", "--latency", "-s", str(lua[mode]),
    ]  # fmt: skip
    if mode == "close":
        argv += ["-H", "Connection: close"]
    argv.append(f"http://{http_servers.HOST}:{port}/")
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=duration + args.timeout + 30)
    except subprocess.TimeoutExpired as exc:
        return {"argv": argv, "failed": f"wrk hung (killed after {exc.timeout:.0f} s)", "rps": 0.0}
    out: dict[str, Any] = {"argv": argv, "stdout": cp.stdout, "stderr": cp.stderr, "rc": cp.returncode}
    m = re.search(r"^WRKJSON (\{.*\})$", cp.stdout, re.MULTILINE)
    if cp.returncode != 0 or not m:
        out["failed"] = f"wrk exited {cp.returncode}: {cp.stderr.strip() or cp.stdout.strip()[-300:]}"
        out["rps"] = 0.0
        return out
    stats = json.loads(m.group(1))
    out.update(stats)
    seconds = stats["duration_us"] / 1e6
    out["rps"] = (stats["requests"] - stats["status"]) / seconds if seconds > 0 else 0.0
    out["errors"] = {k: stats[k] for k in ERROR_KINDS}
    return out


def group_processes(pgid: int) -> list[tuple[Path, list[str]]]:
    """Every process in the process group ``pgid`` (a server and its workers or children): its
    ``/proc/<pid>`` directory and its ``stat`` split after the command name (index N is the man
    page's field N+3)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it exited meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()
        if len(fields) > 21 and fields[2] == str(pgid):  # field 5: the process group
            out.append((entry, fields))
    return out


def group_stats(pgid: int) -> list[list[str]]:
    return [fields for _, fields in group_processes(pgid)]


def group_cpu_seconds(pgid: int) -> float:
    """CPU time (user + system) the server has used: every process of its group, with the
    children they reaped (fork's) and the threads that ended (thread's)."""
    ticks = sum(int(f) for fields in group_stats(pgid) for f in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def scan_log(path: Path) -> list[str]:
    """Lines of a server log that look like trouble (tracebacks, errors)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    lines = text.splitlines()
    hits = [ln for ln in lines if re.search(r"Traceback|Error|Exception|CRITICAL|WORKER TIMEOUT", ln)]
    return hits[:20]


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("gearshift", "waitress", "werkzeug", "gunicorn", "cheroot", "httptools", "matplotlib"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[dist] = importlib.metadata.version(dist)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out["wrk"] = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0].strip()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out["gearshift_git"] = subprocess.run(
            ["git", "-C", str(HERE.parent), "describe", "--always", "--dirty"], capture_output=True, text=True
        ).stdout.strip()
    return out


def check_setup(names: list[str], wrk: str | None) -> None:
    problems = []
    if not wrk:
        problems.append("wrk not found on PATH (apt-get install wrk)")
    required = {http_servers.REQUIRES[n] for n in names}
    missing = sorted(r for r in required if importlib.util.find_spec(r) is None)
    if missing:
        problems.append(f"not importable with {sys.executable}: {', '.join(missing)}")
    if problems:
        print("bench_http: " + "; ".join(problems), file=sys.stderr)
        print(SETUP_HINT, file=sys.stderr)
        sys.exit(2)
    venv = (HERE / ".venv").resolve()
    if Path(sys.prefix).resolve() != venv:
        print(f"note: running with {sys.executable}, not {venv}/bin/python\n{SETUP_HINT}\n", file=sys.stderr)


@contextlib.contextmanager
def wrk_scripts() -> Any:
    """The wrk Lua script of each mode, in temporary files: WRK_LUA's done() hook for all, with
    the pipeline's request() for ``pipelined``."""
    paths: dict[str, Path] = {}
    try:
        for mode in MODES:
            with tempfile.NamedTemporaryFile("w", suffix=f"-{mode}.lua", delete=False) as f:
                f.write(WRK_LUA + (PIPELINE_LUA if mode == "pipelined" else ""))
                paths[mode] = Path(f.name)
        yield paths
    finally:
        for path in paths.values():
            path.unlink(missing_ok=True)


def _on_signal(signum, frame):  # type: ignore[no-untyped-def]
    raise KeyboardInterrupt(f"signal {signum}")


def stop_all() -> None:
    while _live:
        http_servers.stop(_live.pop(), grace=3.0)


# ---------------------------------------------------------------------------------------------
# benchmark
# ---------------------------------------------------------------------------------------------


def bench_one(name: str, rnd: int, args: argparse.Namespace, lua: dict[str, Path], logdir: Path) -> dict[str, Any]:
    port = free_port()
    log = logdir / f"{name}-r{rnd}.log"
    rec: dict[str, Any] = {"server": name, "round": rnd, "port": port, "log": str(log), "modes": {}}
    proc = http_servers.SERVERS[name](port, log)
    _live.append(proc)
    try:
        try:
            wait_for_port(port, proc)
        except RuntimeError as exc:
            rec["failed"] = str(exc)
            return rec
        rec["probe"] = probe(port, pipelining="pipelined" in args.modes)
        if not rec["probe"]["ok"]:
            rec["failed"] = f"probe failed: {rec['probe']}"
            return rec
        for key, mode, connections in ((case(m, c), m, c) for c in args.levels for m in args.modes):
            if mode == "pipelined" and not rec["probe"].get("pipelining_honored"):
                # its figure would count one response per batch, or wrk's timeouts: not a measure
                rec.setdefault("skipped", {})[key] = f"{NOT_PIPELINING}: {rec['probe'].get('pipelining')}"
                continue
            if args.warmup > 0:
                warm = run_wrk(port, mode, args.warmup, args, lua, connections)
                rec.setdefault("warmup", {})[key] = {k: warm.get(k) for k in ("rps", "errors", "failed")}
            cpu_before = group_cpu_seconds(proc.pid)
            run = rec["modes"][key] = run_wrk(port, mode, args.duration, args, lua, connections)
            if run.get("requests"):
                run["cpu_us_per_request"] = 1e6 * (group_cpu_seconds(proc.pid) - cpu_before) / run["requests"]
            if proc.poll() is not None:
                rec["crashed"] = f"server exited with code {proc.returncode} during the {key} run"
                break
        rec["probe_after"] = probe(port, pipelining=False) if "crashed" not in rec else {"ok": False}
    finally:
        rec["exit_code"] = http_servers.stop(proc)
        _live.remove(proc)
        rec["log_trouble"] = scan_log(log)
    return rec


def summarize(records: list[dict[str, Any]], names: list[str], keys: list[str]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for name in names:
        recs = [r for r in records if r["server"] == name]
        s: dict[str, Any] = {"problems": []}
        for r in recs:
            for key in ("failed", "crashed"):
                if r.get(key):
                    s["problems"].append(f"r{r['round']}: {r[key]}")
            if r.get("probe_after") and not r["probe_after"].get("ok") and not r.get("crashed") and not r.get("failed"):
                s["problems"].append(f"r{r['round']}: no answer after the load: {r['probe_after']}")
            if r.get("log_trouble"):
                s["problems"].append(f"r{r['round']}: log: {r['log_trouble'][0][:120]}")
        s["keep_alive_honored"] = any(r.get("probe", {}).get("keep_alive") for r in recs)
        s["pipelining_honored"] = any(r.get("probe", {}).get("pipelining_honored") for r in recs)
        s["pipelining"] = next((r["probe"]["pipelining"] for r in recs if "pipelining" in r.get("probe", {})
                                and not r["probe"]["pipelining_honored"]), None)  # fmt: skip
        for key in keys:
            runs = [r["modes"][key] for r in recs if key in r["modes"]]
            skipped = [r["round"] for r in recs if key in r.get("skipped", {})]
            if skipped and runs:  # answered pipelined requests in one round, not in another
                s["problems"].append(f"{key}: skipped in round(s) {', '.join(str(x + 1) for x in skipped)}, "
                                     f"{NOT_PIPELINING}")  # fmt: skip
            errors = {k: 0 for k in ERROR_KINDS}
            for run in runs:
                if run.get("failed"):
                    s["problems"].append(f"{key}: {run['failed']}")
                for k, v in run.get("errors", {}).items():
                    errors[k] += v
            ok_runs = [run for run in runs if not run.get("failed")]
            # wrk records no latency for a response slower than --timeout (it counts a "timeout" error)
            answered = [run for run in ok_runs if run["requests"] > run["timeout"]]
            if key.startswith("pipelined"):
                answered = []  # wrk's latency there is per batch of PIPELINE_DEPTH, not per request
            s[key] = {
                "rps": statistics.median(run["rps"] for run in ok_runs) if ok_runs else None,
                "rps_runs": [round(run["rps"], 1) for run in runs],
                "p50_ms": statistics.median(run["p50_us"] / 1000 for run in answered) if answered else None,
                "p99_ms": statistics.median(run["p99_us"] / 1000 for run in answered) if answered else None,
                "cpu_us": statistics.median(cpus) if (cpus := [run["cpu_us_per_request"] for run in ok_runs
                                                                if "cpu_us_per_request" in run]) else None,
                "errors": errors,
                "n_errors": sum(errors.values()),
                "skipped": len(skipped),
            }
        summary[name] = s
    return summary


def ratio(summary: dict[str, Any], num: str, den: str, mode: str) -> float | None:
    a = summary.get(num, {}).get(mode, {}).get("rps")
    b = summary.get(den, {}).get(mode, {}).get("rps")
    if not a or not b:
        return None
    return a / b


def round_ratios(records: list[dict[str, Any]], nums: tuple[str, ...], den: str, mode: str) -> list[float]:
    """The bar's ratio within each round (the pair ran back to back there), best numerator."""
    out = []
    for rnd in sorted({r["round"] for r in records}):
        def rps(name: str, rnd: int = rnd) -> float | None:
            for r in records:
                if r["round"] == rnd and r["server"] == name and mode in r["modes"]:
                    run = r["modes"][mode]
                    return None if run.get("failed") else run["rps"]
            return None

        b = rps(den)
        tops = [a for a in (rps(n) for n in nums) if a]
        if b and tops:
            out.append(round(max(tops) / b, 2))
    return out


def evaluate_bars(summary: dict[str, Any], records: list[dict[str, Any]], levels: list[int]) -> list[dict[str, Any]]:
    out = []
    for (label, nums, den, bar_mode, threshold), connections in ((b, c) for c in levels for b in BARS):
        mode = case(bar_mode, connections)
        present = [n for n in nums if n in summary and summary[n].get(mode, {}).get("rps") is not None]
        row: dict[str, Any] = {"bar": label, "threshold": threshold, "mode": mode, "connections": connections,
                               "denominator": den}
        if not present or den not in summary or summary[den].get(mode, {}).get("rps") is None:
            row.update(verdict="SKIP", why="not measured in this run")
            out.append(row)
            continue
        clean = [n for n in present if summary[n][mode]["n_errors"] == 0 and not summary[n]["problems"]]
        pick = max(clean or present, key=lambda n: summary[n][mode]["rps"])
        r = ratio(summary, pick, den, mode)
        row.update(numerator=pick, ratio=r, per_round=round_ratios(records, tuple(clean or present), den, mode))
        if not clean:
            row.update(verdict="FAIL", why=f"{pick} had errors ({summary[pick][mode]['n_errors']}) or problems")
        elif r is None or r < threshold:
            row.update(verdict="FAIL", why=f"{r:.2f}x < {threshold}x" if r else "no ratio")
        else:
            row.update(verdict="PASS", why=f"{r:.2f}x >= {threshold}x")
        if row["per_round"]:
            row["why"] += f"; per round: {', '.join(f'{x:.2f}x' for x in row['per_round'])}"
        if summary[den][mode]["n_errors"] or summary[den]["problems"]:
            row["why"] += f" (note: {den} had errors/problems)"
        out.append(row)
    return out


def fmt_errors(s: dict[str, Any], keys: list[str]) -> str:
    parts = []
    for key in keys:
        errs = s[key]["errors"]
        bad = [f"{k} {v}" for k, v in errs.items() if v]
        if bad:
            parts.append(f"{key.replace('keep-alive', 'ka')}: {', '.join(bad)}")
    for p in s["problems"]:
        parts.append(p.replace("|", "/"))
    return "; ".join(parts) if parts else "0"


def markdown(summary: dict[str, Any], bars: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    a = meta["args"]
    levels = meta_levels(meta)
    modes = meta_modes(meta)
    keys = cases(levels, modes)
    first = levels[0]
    depth = meta.get("pipeline_depth", PIPELINE_DEPTH)
    ratio_columns = [col for col in RATIO_COLUMNS if col[2] in modes]
    pool = f", {a['pool_threads']} threads per pool" if a.get("pool_threads") else ""
    lines = [
        (f"HTTP benchmark, {meta['date']}: `wrk -t{a['threads']} -c{','.join(map(str, levels))} "
         f"-d{a['duration']:g}s`, {', '.join(modes)}"
         f"{f' ({depth} requests per write)' if 'pipelined' in modes else ''}, {a['rounds']} round(s), "
         f"median; {meta['cpus']} CPUs"
         f"{', servers pinned to the last CPU and wrk to the others' if a.get('pin') else ''}"
         f"{pool}, load average "
         f"{meta['loadavg_start']} at start, {meta['loadavg_end']} at end. Only same-run ratios mean anything; "
         f"the ratio columns are at -c{first}."),
        "",
        "| " + " | ".join(["server", *(f"{k} req/s" for k in keys), "errors", *(h for h, _, _ in ratio_columns)])
        + " |",
        "|---|" + "---:|" * len(keys) + "---|" + "---:|" * len(ratio_columns),
    ]  # fmt: skip
    for name, s in summary.items():
        cells = [name]
        for key in keys:
            rps = s[key]["rps"]
            cell = f"{rps:,.0f}" if rps is not None else "—"
            if key.startswith("keep-alive") and rps is not None and not s["keep_alive_honored"]:
                cell += " ¹"
            if s[key].get("skipped") and rps is None:
                cell += " ²"
            cells.append(cell)
        cells.append(fmt_errors(s, keys))
        for _, den, mode in ratio_columns:
            r = ratio(summary, name, den, case(mode, first))
            cells.append(f"{r:.2f}x" if r is not None else "—")
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    if any(not s["keep_alive_honored"] for s in summary.values()) and "keep-alive" in modes:
        notes.append("¹ closes the connection after every response even when the client asks for keep-alive.")
    why = {name: s.get("pipelining") for name, s in summary.items() if any(s[key].get("skipped") for key in keys)}
    if why:
        notes.append(f"² {NOT_PIPELINING}: 2 requests written at once do not get their 2 responses on the "
                     "connection (checked by hand before the runs), so its pipelined runs were skipped; wrk "
                     "would count one response per batch, or time out, not measure it ("
                     + "; ".join(f"{name}: {w}" if w else name for name, w in why.items()) + ").")  # fmt: skip
    if notes:
        lines += ["", *notes]
    lines += ["", "Latency p50 / p99 in ms (wrk's), and the server's CPU time per request in µs (all its "
              "processes and threads, from /proc; steadier than req/s on a loaded machine), medians over rounds:",
              "", "| server | " + " | ".join(k + (" ³" if k.startswith("pipelined") else "") for k in keys) + " |",
              "|---|" + "---:|" * len(keys)]  # fmt: skip
    for name, s in summary.items():
        cells = [name]
        for key in keys:
            p50, p99, cpu = s[key].get("p50_ms"), s[key].get("p99_ms"), s[key].get("cpu_us")
            cell = f"{p50:.1f} / {p99:.1f}" if p50 is not None and p99 is not None else "—"
            cells.append(cell + (f", {cpu:,.0f} µs" if cpu is not None else ""))
        lines.append("| " + " | ".join(cells) + " |")
    if "pipelined" in modes:
        lines += ["", f"³ no latency for the pipelined runs: wrk records one per batch of {depth} requests (from "
                  f"writing them to reading the {depth}th response), not one per request; their req/s and CPU µs "
                  "count every response."]  # fmt: skip
    lines += ["", "Bars (same-run ratios):"]
    for connections in levels:
        lines += ["", f"`-c{connections}`:", ""]
        for b in bars:
            if b.get("connections", first) != connections:
                continue
            best = f" [{b['numerator']}]" if b.get("numerator") and b["bar"].startswith("best") else ""
            lines.append(f"- {b['verdict']}: {b['bar']}{best} >= {b['threshold']:g}x — {b['why']}")
    return "\n".join(lines) + "\n"


def meta_levels(meta: dict[str, Any]) -> list[int]:
    """The -c levels of a run (a results file from before the sweep has one, ``connections``)."""
    a = meta["args"]
    return list(a["levels"]) if "levels" in a else [int(a["connections"])]


def meta_modes(meta: dict[str, Any]) -> list[str]:
    """The modes of a run (a results file from before ``pipelined`` and ``--modes`` ran both of
    OLD_MODES)."""
    a = meta["args"]
    return list(a["modes"]) if "modes" in a else list(OLD_MODES)


def upgrade_records(records: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """Key an older results file's runs by case (it keyed them by mode at one -c level)."""
    if "levels" in meta["args"]:
        return
    connections = int(meta["args"]["connections"])
    for r in records:
        r["modes"] = {case(k, connections) if k in OLD_MODES else k: v for k, v in r.get("modes", {}).items()}


def plot(summary: dict[str, Any], meta: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    levels = meta_levels(meta)
    modes = meta_modes(meta)
    a = meta["args"]
    fig, axes = plt.subplots(len(levels), 1, figsize=(max(7, (0.3 + 0.4 * len(modes)) * len(names) + 2),
                                                      4.8 * len(levels)), squeeze=False)  # fmt: skip
    width = 0.8 / len(modes)
    colors = {"keep-alive": ("#1f77b4", "#9ecae1"), "close": ("#d62728", "#fcae91"),
              "pipelined": ("#2ca02c", "#a1d99b")}  # fmt: skip
    labels = {"pipelined": f"pipelined ({meta.get('pipeline_depth', PIPELINE_DEPTH)} per write)"}
    vertical = len(modes) > 2  # the bars' labels, where three bars share a server's slot
    for ax, connections in zip(axes[:, 0], levels, strict=True):
        ax.margins(y=0.15)  # room for the tallest bar's label
        for i, mode in enumerate(modes):
            key = case(mode, connections)
            xs = [j + (i - (len(modes) - 1) / 2) * width for j in range(len(names))]
            vals = [summary[n][key]["rps"] or 0 for n in names]
            cols = [colors[mode][0] if n.startswith("gearshift") else colors[mode][1] for n in names]
            bars = ax.bar(xs, vals, width, color=cols, label=labels.get(mode, mode), edgecolor="black",
                          linewidth=0.4)  # fmt: skip
            for bar, n in zip(bars, names, strict=True):
                s = summary[n][key]
                label = f"{bar.get_height():,.0f}" if s["rps"] is not None else "—"
                if s.get("skipped") and s["rps"] is None:
                    label = "not pipelining" if vertical else "not\npipelining"
                if s["n_errors"]:
                    label += "\n(errors)"
                ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                            va="bottom", fontsize=6 if vertical else 7, xytext=(0, 2),
                            textcoords="offset points", rotation=90 if vertical else 0)  # fmt: skip
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_ylabel("requests / s (median)")
        ax.set_title(f"hello-world WSGI, wrk -t{a['threads']} -c{connections} -d{a['duration']:g}s, "
                     f"{a['rounds']} rounds — {meta['date']}\n(same-run ratios only; {meta['cpus']} shared cores)",
                     fontsize=9)  # fmt: skip
        ax.legend(title="gearshift: dark", fontsize=8, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def loadavg() -> str:
    with contextlib.suppress(OSError):
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    return "?"


def _run_position(name: str) -> float:
    """Where ``name`` runs in a round: RUN_ORDER, a baseline server right after its twin."""
    if name.startswith("baseline-"):
        return RUN_ORDER.index(f"gearshift-{name.removeprefix('baseline-')}") + 0.5
    return RUN_ORDER.index(name) if name in RUN_ORDER else len(RUN_ORDER)


def run_benchmark(args: argparse.Namespace, names: list[str]) -> int:
    stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    logdir = RESULTS / f"logs-{stamp}"
    logdir.mkdir()
    meta: dict[str, Any] = {
        "date": stamp, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "func"},
        "cpus": os.cpu_count(), "loadavg_start": loadavg(), "versions": versions(),
        "pipeline_depth": PIPELINE_DEPTH,
    }  # fmt: skip
    records: list[dict[str, Any]] = []
    est = len(names) * args.rounds * (len(cases(args.levels, args.modes)) * (args.duration + args.warmup) + 2)
    print(f"bench_http: {len(names)} servers x {args.rounds} rounds, about {est / 60:.1f} min; logs in {logdir}",
          file=sys.stderr)  # fmt: skip
    busy = os.getloadavg()[0]
    if busy > 0.5 * (os.cpu_count() or 1):
        print(f"note: load average {busy:.2f} before the run: other work shares the CPUs, and a strategy that "
              "hands each request between threads loses far more req/s to it than one that does not (see "
              "benchmarks/README.md); compare the CPU µs per request too", file=sys.stderr)  # fmt: skip
    with wrk_scripts() as lua:
        run_order = sorted(names, key=_run_position)
        for rnd in range(args.rounds):
            order = run_order if rnd % 2 == 0 else list(reversed(run_order))
            for name in order:
                rec = bench_one(name, rnd, args, lua, logdir)
                records.append(rec)
                got = ", ".join([f"{m} {rec['modes'][m]['rps']:,.0f}/s" for m in rec["modes"]]
                                + [f"{m} skipped" for m in rec.get("skipped", {})])  # fmt: skip
                trouble = rec.get("failed") or rec.get("crashed") or ""
                errs = sum(sum(r.get("errors", {}).values()) for r in rec["modes"].values())
                print(f"  round {rnd + 1}/{args.rounds} {name:20s} {got}"
                      f"{f'  errors {errs}' if errs else ''}{f'  !! {trouble}' if trouble else ''}",
                      file=sys.stderr)  # fmt: skip
    meta["loadavg_end"] = loadavg()
    summary = summarize(records, [n for n in http_servers.SERVERS if n in names], cases(args.levels, args.modes))
    bars = evaluate_bars(summary, records, args.levels)
    md = markdown(summary, bars, meta)
    print(md)
    json_path = RESULTS / f"http-{stamp}.json"
    json_path.write_text(json.dumps({"meta": meta, "summary": summary, "bars": bars, "runs": records}, indent=1))
    png_path = RESULTS / f"http-{stamp}.png"
    if not args.no_plot:
        try:
            plot(summary, meta, png_path)
        except ImportError as exc:
            print(f"no plot ({exc}); {SETUP_HINT}", file=sys.stderr)
            png_path = None  # type: ignore[assignment]
    else:
        png_path = None  # type: ignore[assignment]
    if not args.no_latest:
        LATEST_MD.write_text(
            "<!-- written by benchmarks/bench_http.py; re-run it to refresh -->\n\n" + md
        )
        if png_path:
            shutil.copyfile(png_path, LATEST_PNG)
    print(f"wrote {json_path}" + (f", {png_path}" if png_path else "") + ("" if args.no_latest else f", {LATEST_MD}"),
          file=sys.stderr)  # fmt: skip
    return 0


# ---------------------------------------------------------------------------------------------
# profile
# ---------------------------------------------------------------------------------------------


def self_time_buckets(stats: pstats.Stats, top: int) -> list[tuple[str, float]]:
    """Self time grouped by source file (Python) or by builtin (C calls: recv, send, poll...)."""
    buckets: dict[str, float] = {}
    for (filename, _line, func), (_cc, _nc, tt, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if filename == "~":
            key = func  # "<method 'recv' of '_socket.socket' objects>"
        else:
            parts = Path(filename).parts
            key = "/".join(parts[-3:]) if "gearshift" in parts else "/".join(parts[-2:])
        buckets[key] = buckets.get(key, 0.0) + tt
    return sorted(buckets.items(), key=lambda kv: -kv[1])[:top]


def top_table(stats: pstats.Stats, key: str, top: int, min_calls: int = 2) -> str:
    """Like pstats' listing, without the one-shot wrappers (``serve_forever``, ``main``...) that
    otherwise fill the top of the cumulative list: only functions called ``min_calls``+ times."""
    rows = []
    for (filename, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if nc < min_calls:
            continue
        where = func if filename == "~" else f"{Path(filename).name}:{line}({func})"
        rows.append((nc, tt, ct, where))
    rows.sort(key=lambda r: -(r[2] if key == "cumulative" else r[1]))
    out = [f"{'ncalls':>9} {'tottime':>8} {'cumtime':>8} {'us/call':>8}  function"]
    for nc, tt, ct, where in rows[:top]:
        per = (ct if key == "cumulative" else tt) / nc * 1e6
        out.append(f"{nc:9d} {tt:8.3f} {ct:8.3f} {per:8.1f}  {where}")
    return "\n".join(out)


def run_profile(args: argparse.Namespace) -> int:
    name = args.profile
    if name not in http_servers.RUNNERS:
        print(f"--profile: one of {', '.join(http_servers.RUNNERS)}", file=sys.stderr)
        return 2
    stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    base = RESULTS / f"profile-{name}-{args.profiler}-{stamp}"
    log = base.with_suffix(".log")
    if args.profiler == "cprofile":
        python_args = ["-m", "cProfile", "-o", str(base.with_suffix(".prof"))]
    else:
        python_args = ["-m", "pyinstrument", "--interval", "0.0005", "-r", "text", "--show-all",
                       "-o", str(base.with_suffix(".txt"))]  # fmt: skip
    port = free_port()
    proc = http_servers.SERVERS[name](port, log, python_args)
    _live.append(proc)
    try:
        wait_for_port(port, proc)
        mode = args.profile_mode
        checked = probe(port, pipelining=mode == "pipelined")
        print(f"probe: {checked}", file=sys.stderr)
        if mode == "pipelined" and not checked.get("pipelining_honored"):
            print(f"warning: {name} {NOT_PIPELINING} ({checked.get('pipelining')}): the profile is not of "
                  "a pipelined load", file=sys.stderr)  # fmt: skip
        with wrk_scripts() as lua:
            res = run_wrk(port, mode, args.duration, args, lua, args.levels[0])
        errors = res.get("errors")
        print(f"{name} under {args.profiler}, {mode}: {res['rps']:,.0f} req/s, errors {errors}"
              f"{'  wrk FAILED: ' + res['failed'] if res.get('failed') else ''}")  # fmt: skip
    finally:
        code = http_servers.stop(proc, grace=30.0)
        _live.remove(proc)
        trouble = scan_log(log)
        if code is None or trouble:
            print(f"server exit code {code}; log {log}: {trouble}", file=sys.stderr)
    if args.profiler == "pyinstrument":
        print(base.with_suffix(".txt").read_text())
        return 0
    prof = base.with_suffix(".prof")
    if not prof.exists():
        print(f"no profile written ({prof}); see {log}", file=sys.stderr)
        return 1
    out = base.with_suffix(".txt")
    with open(out, "w") as fh:
        for sort in ("cumulative", "tottime"):
            st = pstats.Stats(str(prof), stream=fh)
            st.strip_dirs().sort_stats(sort).print_stats(args.profile_top)
        fh.write("\nself time by file / builtin:\n")
        fh.writelines(f"{tt:9.3f}s  {key}\n" for key, tt in self_time_buckets(pstats.Stats(str(prof)), 25))
    st = pstats.Stats(str(prof))
    for sort in ("cumulative", "tottime"):
        print(f"\n=== top {args.profile_top} by {sort} (functions called more than once) ===")
        print(top_table(st, sort, args.profile_top))
    total = sum(v[2] for v in st.stats.values())  # type: ignore[attr-defined]
    print(f"=== self time by file / builtin (total {total:.2f} s) ===")
    for key, tt in self_time_buckets(st, 20):
        print(f"{tt:9.3f}s {100 * tt / total:5.1f}%  {key}")
    print(f"\nwrote {prof} and {out}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=SETUP_HINT,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--duration", type=float, default=5, help="seconds per measured wrk run (default 5)")
    p.add_argument("--connections", default=DEFAULT_CONNECTIONS,
                   help=f"wrk -c, a comma list: the concurrency sweep (default {DEFAULT_CONNECTIONS}; the first "
                        "level is the main table's and --profile's)")
    p.add_argument("--modes", default=",".join(MODES),
                   help=f"comma list of wrk modes to run, of {', '.join(MODES)} (default all; pipelined: "
                        f"{PIPELINE_DEPTH} requests per write, skipped for a server that does not answer "
                        "pipelined requests)")
    p.add_argument("--threads", type=int, default=1, help="wrk -t (default 1)")
    p.add_argument("--rounds", type=int, default=2, help="rounds over all servers; median (default 2)")
    p.add_argument("--warmup", type=float, default=1, help="warm-up seconds per server and mode (default 1)")
    p.add_argument("--timeout", type=int, default=2, help="wrk --timeout seconds (default 2)")
    p.add_argument("--only", default="", help=f"comma list of servers: {','.join(http_servers.SERVERS)}")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--no-latest", action="store_true", help=f"don't overwrite {LATEST_MD.name}")
    p.add_argument("--wrk", default=shutil.which("wrk") or "", help="path to wrk")
    p.add_argument("--pool-threads", type=int, metavar="N",
                   help="threads of every fixed-pool server (gearshift-threadpool and prefork-threadpool, "
                        "waitress, gunicorn-gthread*, handoff-floor, wsgi-handoff-floor; default 4, waitress' "
                        "own): how each pays for more threads than the GIL can run (the server names keep "
                        "their '1x4')")
    p.add_argument("--pin", action="store_true",
                   help="run every server on the last CPU and wrk on the others, so that the kernel does not "
                        "move a server's threads between cores (fair to one-process servers only; see "
                        "benchmarks/README.md, 'Threads on one core')")
    p.add_argument("--baseline", metavar="DIR", type=Path,
                   help="also run baseline-sync/-thread/-fork: gearshift imported from DIR/src (a checkout of "
                        "another commit, e.g. `git worktree add /tmp/base HEAD~1`), each right after its twin")
    p.add_argument("--report", metavar="JSON", help="instead: re-print the table of an earlier results JSON")
    p.add_argument("--profile", metavar="SERVER", help="instead: profile one server (e.g. gearshift-sync) under load")
    p.add_argument("--profiler", choices=("cprofile", "pyinstrument"), default="cprofile")
    p.add_argument("--profile-mode", choices=MODES, default="keep-alive")
    p.add_argument("--profile-top", type=int, default=15)
    args = p.parse_args(argv)
    try:
        args.levels = parse_levels(str(args.connections))
        args.modes = parse_modes(str(args.modes))
    except argparse.ArgumentTypeError as exc:
        p.error(str(exc))

    if args.report:
        data = json.loads(Path(args.report).read_text())
        records, meta = data["runs"], data["meta"]
        upgrade_records(records, meta)
        levels = meta_levels(meta)
        ran = [n for n in http_servers.SERVERS if any(r["server"] == n for r in records)]
        summary = summarize(records, ran, cases(levels, meta_modes(meta)))
        print(markdown(summary, evaluate_bars(summary, records, levels), meta), end="")
        return 0
    baseline: list[str] = []
    if args.baseline:
        src = (args.baseline / "src").resolve()
        if not (src / "gearshift" / "__init__.py").is_file():
            p.error(f"--baseline {args.baseline}: no src/gearshift/__init__.py there")
        baseline = http_servers.add_baseline(src)
        compile_gearshift(env={**os.environ, "PYTHONPATH": str(src)})
    names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else list(http_servers.SERVERS)
    if args.only:
        names += [b for b in baseline if f"gearshift-{b.removeprefix('baseline-')}" in names and b not in names]
    unknown = [n for n in names if n not in http_servers.SERVERS]
    if unknown:
        p.error(f"unknown server(s) {unknown}; choose from {', '.join(http_servers.SERVERS)}")
    check_setup([args.profile] if args.profile else names, args.wrk)
    if args.profiler == "pyinstrument" and importlib.util.find_spec("pyinstrument") is None:
        p.error("pyinstrument is not installed in this interpreter")

    if args.pool_threads is not None:
        if args.pool_threads < 1:
            p.error(f"--pool-threads must be 1 or more, not {args.pool_threads}")
        os.environ[http_servers.POOL_THREADS_ENV] = str(args.pool_threads)  # the servers' processes
        http_servers.POOL_THREADS = args.pool_threads  # the command lines built here (gunicorn's)
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            p.error(f"--pin needs two CPUs or more; this process may use {len(cpus)}")
        http_servers.SERVER_CPUS = {cpus[-1]}
        os.sched_setaffinity(0, cpus[:-1])  # this script and wrk, which inherits it
    compile_gearshift()  # as pip does for every peer: see bytecode.py
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # every way out stops the servers
        signal.signal(sig, _on_signal)
    try:
        return run_profile(args) if args.profile else run_benchmark(args, names)
    except KeyboardInterrupt:
        print("\ninterrupted; stopping servers", file=sys.stderr)
        return 130
    finally:
        stop_all()


if __name__ == "__main__":
    sys.exit(main())
