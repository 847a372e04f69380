"""Per-request latency of a Django page under gearshift's strategies (issue 12).

The page is ``/admin/login/`` of a fresh ``startproject`` (``tests/http/django_project/
fresh_settings.py``: the admin, its middleware and templates), served by the ``gearshift``
command. The question it answers: what does a real framework page cost under each strategy,
next to ``thread``? Under ``fork`` every connection is a new child that redoes the lazy work
Django leaves to the first request of a process (URL resolver, template loading, translations).

Run from the repository root, with the project's venv (Django is a test extra)::

    .venv/bin/python benchmarks/bench_django.py                         # thread, fork, prefork
    .venv/bin/python benchmarks/bench_django.py --strategies thread,fork --requests 300

For each strategy in turn: start the server (``-s NAME`` plus the arguments in
``STRATEGY_ARGS``; a strategy the installed gearshift does not have is reported as
unavailable), check one answer by hand (200 and the login form), warm up, then measure

- a sequential client (one request at a time, ``http.client``), ``--requests`` requests each
  on a new connection (``Connection: close``), then as many on one keep-alive connection;
- ``wrk -c4`` (``--connections``) for ``--duration`` seconds, keep-alive and
  ``Connection: close``.

and print a Markdown table of p50 / p99 in ms with each figure's ratio to ``thread``'s in the
same run (the ``(1.00x)`` column), and failed requests. Before starting it waits (up to
``--idle-wait`` seconds) for the load average to fall below 1 and for no ``wrk`` to run: the
machine is shared, and other work on the two cores shows in every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
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
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from bytecode import compile_gearshift  # noqa: E402

APP_DIR = ROOT / "tests" / "http"
APP = "django_project.fresh_wsgi:application"
PATH = "/admin/login/"
HOST = "127.0.0.1"

#: Command-line arguments per strategy, after ``-s NAME``: two workers for ``prefork``, as in
#: the issue's bars.
STRATEGY_ARGS: dict[str, list[str]] = {
    "thread": [],
    "threadpool": [],
    "fork": [],
    "sync": [],
    "prefork": ["-w", "2"],
}

WRK_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "errors": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""

#: The measurements, in the table's column order: (key, header).
COLUMNS = [
    ("seq-close", "sequential, new connection each"),
    ("seq-keep-alive", "sequential, keep-alive"),
    ("wrk-keep-alive", "wrk -c{c} keep-alive"),
    ("wrk-close", "wrk -c{c} Connection: close"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategies", default="thread,fork,prefork",
                        help="comma-separated gearshift strategies; the first ratio base is thread")
    parser.add_argument("--requests", type=int, default=200, help="requests per sequential run (default 200)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run (default 5)")
    parser.add_argument("--connections", type=int, default=4, help="wrk -c (default 4)")
    parser.add_argument("--warmup", type=int, default=50, help="sequential requests before measuring (default 50)")
    parser.add_argument("--idle-wait", type=float, default=120.0,
                        help="longest wait for a quiet machine before measuring anyway (default 120 s)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter that runs gearshift")
    args = parser.parse_args(argv)
    strategies = [name.strip() for name in args.strategies.split(",") if name.strip()]
    wrk = shutil.which("wrk")
    if wrk is None:
        parser.error("wrk is not on PATH (Debian: apt-get install wrk)")
    try:
        import django  # noqa: F401
    except ImportError:
        parser.error("Django is not installed in this interpreter: pip install -e '.[test]'")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("GEARSHIFT_", "LISTEN_", "DJANGO_"))}
    compile_gearshift(args.python, env=env)
    subprocess.run([args.python, "-m", "compileall", "-q", str(APP_DIR / "django_project")], check=True, env=env)
    quiet = wait_until_quiet(args.idle_wait)

    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_LUA)
        lua = Path(f.name)
    installed = installed_strategies(args.python, env)
    results: dict[str, dict[str, Any]] = {}
    try:
        for name in strategies:
            print(f"== {name}", file=sys.stderr, flush=True)
            if name not in installed:
                results[name] = {"unavailable": f"not an installed strategy (installed: {', '.join(installed)})"}
                continue
            results[name] = bench_one(name, args, env, wrk, lua)
    finally:
        lua.unlink(missing_ok=True)
    print(markdown(results, args, quiet))
    return 0


def installed_strategies(python: str, env: dict[str, str]) -> list[str]:
    """The names ``gearshift --list-strategies`` lists (built-in and plugins)."""
    listing = subprocess.run([python, "-m", "gearshift", "--list-strategies"], capture_output=True, text=True,
                             env=env, check=True).stdout.splitlines()
    return [line.split()[0] for line in listing[1:] if line.strip()]


def wait_until_quiet(limit: float) -> str:
    """Wait for a load average below 1 and no wrk running, at most ``limit`` seconds; return
    what the machine looked like when measuring began."""
    deadline = time.monotonic() + limit
    while True:
        load = os.getloadavg()[0]
        others = subprocess.run(["pgrep", "-x", "wrk"], capture_output=True, text=True).stdout.split()
        if (load < 1.0 and not others) or time.monotonic() >= deadline:
            state = f"load average {load:.2f}" + (f", {len(others)} other wrk running" if others else ", no other wrk")
            if load >= 1.0 or others:
                print(f"measuring on a busy machine: {state}", file=sys.stderr)
            return state
        time.sleep(2)


def bench_one(name: str, args: argparse.Namespace, env: dict[str, str], wrk: str, lua: Path) -> dict[str, Any]:
    port = free_port()
    argv = [args.python, "-m", "gearshift", APP, "-b", f"{HOST}:{port}", "-s", name,
            "--log-level", "warning", "--no-access-log", *STRATEGY_ARGS.get(name, [])]  # as the other servers
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(argv, cwd=APP_DIR, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
        try:
            if not wait_for_port(port, proc):
                log.seek(0)
                lines = [line for line in log.read().splitlines() if line.strip()]
                return {"unavailable": lines[-1] if lines else f"exited with {proc.returncode}"}
            check_page(port)
            sequential(port, args.warmup, keep_alive=False)
            result: dict[str, Any] = {
                "seq-close": sequential(port, args.requests, keep_alive=False),
                "seq-keep-alive": sequential(port, args.requests, keep_alive=True),
                "wrk-keep-alive": run_wrk(wrk, lua, port, args, close=False),
                "wrk-close": run_wrk(wrk, lua, port, args, close=True),
            }
        finally:
            stop(proc)
        log.seek(0)
        text = log.read()
    if "Traceback" in text:
        result["log"] = text[-2000:]
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[str], timeout: float = 30.0) -> bool:
    """True once the server listens; False if it exited first (an unknown strategy, say)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.5):
            return True
        time.sleep(0.05)
    raise RuntimeError(f"the server did not listen on port {port} within {timeout:.0f} s")


def check_page(port: int) -> None:
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request("GET", PATH)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200 or b"csrfmiddlewaretoken" not in body:
        raise RuntimeError(f"GET {PATH} answered {response.status}, not the login form: {body[:300]!r}")


def sequential(port: int, count: int, *, keep_alive: bool) -> dict[str, Any]:
    """``count`` GETs one after the other; latency from sending the request to the last byte
    (and, on a new connection each, from connect())."""
    latencies: list[float] = []
    errors = 0
    conn: http.client.HTTPConnection | None = None
    headers = {} if keep_alive else {"Connection": "close"}
    for _ in range(count):
        started = time.perf_counter()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(HOST, port, timeout=30)
            conn.request("GET", PATH, headers=headers)
            response = conn.getresponse()
            response.read()
            ok = response.status == 200
        except (OSError, http.client.HTTPException):
            ok = False
        latencies.append(time.perf_counter() - started)
        if not ok:
            errors += 1
        if not ok or not keep_alive:
            assert conn is not None
            conn.close()
            conn = None
    if conn is not None:
        conn.close()
    return {"p50_ms": percentile(latencies, 50) * 1e3, "p99_ms": percentile(latencies, 99) * 1e3,
            "errors": errors, "requests": count}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if p == 50:
        return statistics.median(ordered)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def run_wrk(wrk: str, lua: Path, port: int, args: argparse.Namespace, *, close: bool) -> dict[str, Any]:
    argv = [wrk, "-t1", f"-c{args.connections}", f"-d{max(1, round(args.duration))}s", "--timeout", "10s",
            "--latency", "-s", str(lua)]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(f"http://{HOST}:{port}{PATH}")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=args.duration + 60)
    match = re.search(r"^WRKJSON (\{.*\})$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or not match:
        return {"failed": f"wrk exited {done.returncode}: {done.stderr.strip() or done.stdout.strip()[-300:]}"}
    stats = json.loads(match.group(1))
    seconds = stats["duration_us"] / 1e6
    return {"p50_ms": stats["p50_us"] / 1e3, "p99_ms": stats["p99_us"] / 1e3, "errors": stats["errors"],
            "requests": stats["requests"], "rps": stats["requests"] / seconds if seconds else 0.0}


def stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM the server's process group (its children or workers too), SIGKILL if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def markdown(results: dict[str, dict[str, Any]], args: argparse.Namespace, quiet: str) -> str:
    base = results.get("thread", {})
    headers = [header.format(c=args.connections) for _, header in COLUMNS]
    lines = [
        f"`GET {PATH}` of a fresh Django project; p50 / p99 in ms, (p50 ÷ thread's p50 in this run); "
        f"{args.requests} sequential requests per run, wrk {args.duration:g} s; {quiet}.",
        "",
        "| strategy | " + " | ".join(headers) + " | wrk req/s keep-alive / close | failed |",
        "| --- | " + " | ".join("---" for _ in headers) + " | --- | --- |",
    ]
    for name, result in results.items():
        if "unavailable" in result:
            lines.append(f"| {name} | unavailable: {result['unavailable']} |" + " |" * (len(headers) + 1))
            continue
        cells = []
        failed = 0
        for key, _ in COLUMNS:
            m = result[key]
            if "failed" in m:
                cells.append(m["failed"])
                continue
            failed += m["errors"]
            own = base.get(key, {}).get("p50_ms")
            ratio = f" ({m['p50_ms'] / own:.2f}x)" if own else ""
            cells.append(f"{m['p50_ms']:.1f} / {m['p99_ms']:.1f}{ratio}")
        rps = " / ".join(f"{result[key].get('rps', 0):.0f}" for key in ("wrk-keep-alive", "wrk-close"))
        note = " (traceback in the log)" if "log" in result else ""
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {rps} | {failed}{note} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
