"""What slow readers cost a ``threadpool`` server: 1,000 clients ask for an 8 MB response and
then read nothing, so every byte the kernel does not hold waits in gearshift (write-behind).

    .venv/bin/python benchmarks/slow_download_memory.py                 # 1,000 readers, both bodies
    .venv/bin/python benchmarks/slow_download_memory.py --clients 200 --body bytes
    .venv/bin/python benchmarks/slow_download_memory.py --send-spool 0   # write-behind off: threads wait

The server runs alone in a subprocess (``--serve``); this process opens the clients (each with
a small receive buffer), waits until the server's resident memory and temporary files stop
growing, measures them and the answer time of one normal request, then reads every response
to the end and checks its bytes. Two bodies: ``bytes`` (an iterable of bytes: what the client
does not take is copied to memory, then to a temporary file) and ``file``
(``wsgi.file_wrapper`` on a file: kept as a range of the file, sent with ``sendfile``).
Output: a Markdown table on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BODY_SIZE = 8 * 1024 * 1024
CHUNK = 256 * 1024


def body() -> bytes:
    # Deterministic, so that the client can check what it got without the server's copy.
    block = hashlib.sha256(b"gearshift").digest() * (CHUNK // 32)
    return block * (BODY_SIZE // CHUNK)


# -- the server (a subprocess) -----------------------------------------------------------------


def serve(port_file: str, threads: int, send_spool: int | None, body_file: str) -> None:
    from gearshift import make_server
    from gearshift.http.wsgi import FileWrapper

    payload = body()
    chunks = [payload[i:i + CHUNK] for i in range(0, len(payload), CHUNK)]
    length = str(len(payload))

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        path = environ["PATH_INFO"]
        if path == "/bytes":
            start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", length)])
            return chunks
        if path == "/file":
            start_response("200 OK", [("Content-Type", "application/octet-stream")])
            return FileWrapper(open(body_file, "rb"))  # noqa: SIM115 - closed by the server
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
        return [b"ok\n"]

    options: dict[str, Any] = {"threads": threads, "send_timeout": 600.0, "min_send_rate": 0}
    if send_spool is not None:
        options["send_spool"] = send_spool
    server = make_server("127.0.0.1", 0, app, strategy="threadpool", **options)
    Path(port_file).write_text(str(server.server_address[1]))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


# -- measuring ---------------------------------------------------------------------------------


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def threads_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def temp_usage(pid: int, spool: str) -> tuple[int, int]:
    """How many temporary files the server holds open in ``spool``, and their bytes on disk."""
    files = used = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        path = f"/proc/{pid}/fd/{fd}"
        with contextlib.suppress(OSError):
            if os.readlink(path).startswith(spool):
                files += 1
                used += os.stat(path).st_blocks * 512
    return files, used


def wait_steady(pid: int, spool: str, quiet: float = 2.0, limit: float = 300.0) -> tuple[int, int, int]:
    """Wait until RSS and temporary usage stop changing for ``quiet`` seconds; return the peak."""
    peak_rss = peak_files = peak_temp = 0
    last: tuple[int, int] = (-1, -1)
    steady_since = time.monotonic()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        now_rss = rss(pid)
        files, temp = temp_usage(pid, spool)
        peak_rss, peak_files, peak_temp = max(peak_rss, now_rss), max(peak_files, files), max(peak_temp, temp)
        current = (now_rss // (1 << 20), temp // (1 << 20))
        if current != last:
            last, steady_since = current, time.monotonic()
        elif time.monotonic() - steady_since >= quiet:
            break
        time.sleep(0.25)
    return peak_rss, peak_files, peak_temp


def slow_client(port: int, path: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
    return sock


def normal_request(port: int, timeout: float = 120.0) -> float:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"GET /small HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        while sock.recv(65536):
            pass
    return time.monotonic() - started


def read_all(clients: list[socket.socket], expected: bytes) -> int:
    """Read every response to the end; return how many had exactly the expected body. Hashed as
    it arrives: 1,000 bodies of 8 MB would not fit in this process either."""
    digest = hashlib.sha256(expected).digest()
    selector = selectors.DefaultSelector()
    heads: dict[socket.socket, bytearray] = {}
    hashes: dict[socket.socket, Any] = {}
    sizes: dict[socket.socket, int] = {}
    for sock in clients:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        heads[sock] = bytearray()
        sizes[sock] = 0
    good = 0
    open_count = len(clients)
    while open_count:
        for key, _ in selector.select(60):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(1 << 20)
            except BlockingIOError:
                continue
            except ConnectionError:
                data = b""
            if not data:
                selector.unregister(sock)
                open_count -= 1
                hashed = hashes.get(sock)
                good += hashed is not None and sizes[sock] == len(expected) and hashed.digest() == digest
                continue
            if sock not in hashes:
                head = heads[sock]
                head += data
                end = head.find(b"\r\n\r\n")
                if end < 0:
                    continue
                hashes[sock] = hashlib.sha256()
                data = bytes(head[end + 4:])
            hashes[sock].update(data)
            sizes[sock] += len(data)
    selector.close()
    return good


def run(kind: str, args: argparse.Namespace, spool: str, body_file: str, expected: bytes) -> dict[str, Any]:
    port_file = Path(spool).parent / "port"
    port_file.unlink(missing_ok=True)
    env = dict(os.environ, TMPDIR=spool)
    command = [sys.executable, __file__, "--serve", str(port_file), "--threads", str(args.threads),
               "--body-file", body_file]
    if args.send_spool is not None:
        command += ["--send-spool", str(args.send_spool)]
    server = subprocess.Popen(command, env=env)
    clients: list[socket.socket] = []
    try:
        while not port_file.exists() or not port_file.read_text():
            if server.poll() is not None:
                raise SystemExit("the server exited")
            time.sleep(0.05)
        port = int(port_file.read_text())
        normal_request(port)
        idle_rss = rss(server.pid)
        print(f"[{kind}] {args.clients} slow readers...", file=sys.stderr)
        started = time.monotonic()
        for _ in range(args.clients):
            clients.append(slow_client(port, "/" + kind))
        peak_rss, peak_files, peak_temp = wait_steady(server.pid, spool)
        settled = time.monotonic() - started
        threads = threads_of(server.pid)
        latency = normal_request(port)
        print(f"[{kind}] reading every response...", file=sys.stderr)
        good = read_all(clients, expected)
        return {
            "body": kind, "clients": args.clients, "idle_rss": idle_rss, "peak_rss": peak_rss,
            "temp_files": peak_files, "temp_bytes": peak_temp, "threads": threads,
            "normal_latency": latency, "settled": settled, "complete": good,
        }
    finally:
        for sock in clients:
            sock.close()
        server.terminate()
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--body", choices=["bytes", "file", "both"], default="both")
    parser.add_argument("--send-spool", type=int, default=None, help="the server's send_spool (default: its own)")
    parser.add_argument("--serve", metavar="PORT_FILE", help=argparse.SUPPRESS)
    parser.add_argument("--body-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.threads, args.send_spool, args.body_file)
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.clients + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.clients + 1000), hard))
    expected = body()
    kinds = ["bytes", "file"] if args.body == "both" else [args.body]
    rows = []
    with tempfile.TemporaryDirectory(prefix="gearshift-slow-") as work:
        spool = Path(work) / "spool"  # the server's TMPDIR: only its temporary files are here
        spool.mkdir()
        body_file = str(Path(work) / "body.bin")
        Path(body_file).write_bytes(expected)
        for kind in kinds:
            rows.append(run(kind, args, f"{spool}/", body_file, expected))
    mb = 1 << 20
    print(f"\n{args.clients} clients, each asking for {BODY_SIZE // mb} MB and reading nothing; "
          f"threadpool threads={args.threads}, send_spool={args.send_spool or 'default'}\n")
    print("| body | server RSS idle | server RSS peak | temp files | temp on disk | threads "
          "| normal request | complete |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['body']} | {r['idle_rss'] / mb:.0f} MB | {r['peak_rss'] / mb:.0f} MB | {r['temp_files']} "
              f"| {r['temp_bytes'] / mb:.0f} MB | {r['threads']} | {r['normal_latency'] * 1000:.0f} ms "
              f"| {r['complete']}/{r['clients']} |")


if __name__ == "__main__":
    main()
