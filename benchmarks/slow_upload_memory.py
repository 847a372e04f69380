"""Memory under slow uploads: N clients each upload a body slowly, all at once, to one server.

Run from the repository root::

    .venv/bin/python benchmarks/slow_upload_memory.py                    # 500 x 1 MB on threadpool
    .venv/bin/python benchmarks/slow_upload_memory.py --strategy thread  # the same on thread
    .venv/bin/python benchmarks/slow_upload_memory.py --max-body-in-memory 1048576

Method
    The server runs in a subprocess of its own (this script with ``--serve``): ``make_server``
    with the given strategy (``threadpool`` with ``threads=4`` by default), its TMPDIR a fresh
    directory, and an app that reads ``wsgi.input`` to the end and answers its SHA-256. The
    clients run here, in one thread: each opens a connection and sends a request head with
    ``Content-Length: <size>``; then, in rounds, every client sends the next ``--piece`` bytes of
    its body, with ``--pause`` seconds between rounds, so that every upload is in progress at
    once for the whole run (a slow link, seen from the server). Halfway through the bodies, and
    again after every answer has been read and checked, the script samples the server process:

    * ``RSS`` (``VmRSS``) and its peak so far (``VmHWM``), from ``/proc/<pid>/status``;
    * its threads (``/proc/<pid>/task``);
    * its temporary files: the descriptors in ``/proc/<pid>/fd`` that point into its TMPDIR (a
      ``tempfile.TemporaryFile`` has no name, but its descriptor still shows the directory),
      with the bytes they hold.

    ``RSS before`` is the server after one warm-up request, before the clients connect.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import select
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def serve(options: dict[str, object]) -> None:
    import gearshift

    def app(environ: dict[str, object], start_response):  # type: ignore[no-untyped-def]
        digest = hashlib.sha256()
        stream = environ["wsgi.input"]
        while block := stream.read(65536):  # type: ignore[attr-defined]
            digest.update(block)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [digest.hexdigest().encode()]

    server = gearshift.make_server("127.0.0.1", 0, app, **options)  # type: ignore[arg-type]
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def sample(pid: int, tmpdir: str) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    lines = [line.split(":") for line in status.splitlines() if line.startswith("Vm")]
    fields = {name: value.split()[0] for name, value in lines}
    files = size = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(tmpdir + "/"):
                files += 1
                size += os.stat(f"/proc/{pid}/fd/{fd}").st_size
        except OSError:
            continue
    return {
        "rss_kb": int(fields["VmRSS"]), "peak_rss_kb": int(fields["VmHWM"]),
        "threads": len(os.listdir(f"/proc/{pid}/task")), "temp_files": files, "temp_bytes": size,
    }


def read_response(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def run(args: argparse.Namespace) -> dict[str, object]:
    options: dict[str, object] = {"strategy": args.strategy, "graceful_timeout": 10.0}
    if args.strategy == "threadpool":
        options["threads"] = args.threads
        options["max_body_in_memory"] = args.max_body_in_memory
    elif args.strategy == "thread":
        options["daemon_threads"] = True
    with tempfile.TemporaryDirectory() as tmpdir:
        env = dict(os.environ, TMPDIR=tmpdir)
        proc = subprocess.Popen([sys.executable, __file__, "--serve", json.dumps(options)], stdout=subprocess.PIPE,
                                env=env)
        try:
            assert proc.stdout is not None
            port = int(proc.stdout.readline())
            body = os.urandom(args.size)
            expected = hashlib.sha256(body).hexdigest().encode()
            head = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % args.size
            with socket.create_connection(("127.0.0.1", port)) as warm:
                warm.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                read_response(warm)
            before = sample(proc.pid, tmpdir)
            socks = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(args.clients)]
            started = time.monotonic()
            for sock in socks:
                sock.sendall(head)
            middle = None
            for offset in range(0, args.size, args.piece):
                piece = body[offset:offset + args.piece]
                for sock in socks:
                    sock.sendall(piece)
                if middle is None and offset + args.piece >= args.size // 2:
                    time.sleep(args.pause)  # let the server take what was sent
                    middle = sample(proc.pid, tmpdir)
                time.sleep(args.pause)
            answers = 0
            for sock in socks:
                response = read_response(sock)
                answers += response.startswith(b"HTTP/1.1 200 ") and response.endswith(expected)
                sock.close()
            elapsed = time.monotonic() - started
            select.select([], [], [], 0.5)  # the server closes its side and its files
            after = sample(proc.pid, tmpdir)
        finally:
            proc.terminate()
            proc.wait(20)
    return {"options": options, "clients": args.clients, "size": args.size, "ok": answers,
            "seconds": round(elapsed, 1), "before": before, "middle": middle, "after": after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", default="threadpool")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--size", type=int, default=1_000_000, help="body bytes per client")
    parser.add_argument("--piece", type=int, default=32768, help="bytes each client sends per round")
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between rounds")
    parser.add_argument("--max-body-in-memory", type=int, default=65536)
    args = parser.parse_args()
    raise_fd_limit()
    if args.serve is not None:
        serve(json.loads(args.serve))
        return
    result = run(args)
    print(json.dumps(result, indent=1))
    mb = 1024.0
    print(f"\n{result['clients']} uploads of {result['size']} bytes, {result['options']}: {result['ok']} answered "
          f"correctly in {result['seconds']} s")
    for name in ("before", "middle", "after"):
        s = result[name]
        assert isinstance(s, dict)
        print(f"  {name:>6}: RSS {s['rss_kb'] / mb:7.1f} MB (peak {s['peak_rss_kb'] / mb:7.1f} MB), "
              f"{s['threads']:4d} threads, {s['temp_files']:4d} temp files holding {s['temp_bytes'] / 1e6:7.1f} MB")


if __name__ == "__main__":
    main()
