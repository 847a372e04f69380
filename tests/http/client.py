"""A raw HTTP/1.1 client for tests: send exact bytes, read exact responses (pipelining too)."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
STRATEGIES = ["sync", "thread", "threadpool", "fork", "prefork"]
#: Strategies that receive a whole request, body included, before the application runs it
#: (``request_ready``; with the default ``buffer_request_body``).
READS_BODY_AHEAD = {"threadpool", "prefork"}


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    version: int


class _KeepOpen:
    """A file proxy whose close() does nothing, so several responses can be read from one
    socket file (http.client closes its file after each response)."""

    def __init__(self, file):
        self._file = file

    def __getattr__(self, name):
        return getattr(self._file, name)

    def close(self):
        pass


class _FileSocket:
    def __init__(self, file):
        self._file = file

    def makefile(self, *args, **kwargs):
        return _KeepOpen(self._file)


class Client:
    """One connection; ``send`` raw bytes, ``response()`` reads the next response."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self, method: str = "GET") -> Response:
        r = http.client.HTTPResponse(_FileSocket(self.file), method=method)  # type: ignore[arg-type]
        r.begin()
        body = r.read()
        return Response(r.status, r.headers, body, r.version)

    def request(self, method: str, target: str, headers: dict[str, str] | None = None,
                body: bytes = b"", version: str = "1.1") -> Response:
        lines = [f"{method} {target} HTTP/{version}", "Host: test"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body and not any(k.lower() in ("content-length", "transfer-encoding") for k in (headers or {})):
            lines.append(f"Content-Length: {len(body)}")
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        return self.response(method)

    def at_eof(self, timeout: float = 5.0) -> bool:
        """True if the server closed the connection (EOF or reset) within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            return self.file.read(1) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def raw_exchange(port: int, data: bytes, timeout: float = 10.0, half_close: bool = False) -> bytes:
    """Send ``data`` (then shut down our sending side if ``half_close``), and read everything
    until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return read_until_closed(sock)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or resets it)."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def status_of(raw: bytes) -> int:
    assert raw.startswith(b"HTTP/1.1 "), raw[:200]
    return int(raw[9:12])


class ServerProcess:
    """The test app served by ``make_server`` in a subprocess of its own."""

    def __init__(self, strategy: str, options: dict | None = None, app: str = "apps:app") -> None:
        import json
        import tempfile

        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # stderr goes to a file: a pipe nobody reads would fill up and block a chatty server.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115  (closed by stop())
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "app_server.py"), strategy, json.dumps(options or {}), app],
            stdout=subprocess.PIPE, stderr=self._log, env=env,
        )
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            self.proc.wait()
            self.proc.stdout.close()  # type: ignore[union-attr]
            log = self.log()
            self._log.close()
            raise RuntimeError(f"test server did not start: {log}")
        self.port = int(line)
        self.strategy = strategy

    def log(self) -> str:
        """What the server has logged so far. Read with pread: the server writes through the same
        open file, so moving its offset here (seek) would make the server overwrite its own log."""
        fd = self._log.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode("utf-8", "replace")

    def children(self) -> list[int]:
        pids = []
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            with suppress(OSError):
                pids += [int(p) for p in (task / "children").read_text().split()]
        return pids

    def stop(self, timeout: float = 15.0) -> str:
        """SIGTERM, wait, and return what the server logged."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        text = self.log()
        self._log.close()
        return text


@contextmanager
def server_process(strategy: str, options: dict | None = None, app: str = "apps:app"):
    server = ServerProcess(strategy, options, app)
    try:
        yield server
    finally:
        server.stop()


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.02) -> bool:
    """Poll a condition until it holds (True) or ``timeout`` passes (False). (Not core_helpers'
    wait_for: this module is also imported by app_server.py, which has only tests/http/.)"""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


@contextmanager
def serving(server):
    """Run ``server.serve_forever()`` in a thread; shut down, close and join on exit."""
    import threading

    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
        assert not thread.is_alive()


def tls_contexts(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server and a client SSL context around a fresh self-signed certificate for localhost
    (made with the openssl command, in ``directory``)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))
    client_context.check_hostname = False
    return context, client_context
