"""The WSGI application the HTTP tests serve, wrapped in ``wsgiref.validate.validator`` so that
every request also checks gearshift's environ and calling conventions against PEP 3333."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from urllib.parse import parse_qs
from wsgiref.validate import validator

ENVIRON_KEYS = (
    "REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "CONTENT_TYPE", "CONTENT_LENGTH",
    "SERVER_NAME", "SERVER_PORT", "SERVER_PROTOCOL", "REMOTE_ADDR", "REMOTE_PORT",
    "wsgi.url_scheme", "wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once",
    "wsgi.input_terminated", "gearshift.strategy",
)


def _read_all(environ):
    stream = environ["wsgi.input"]
    chunks = []
    while chunk := stream.read(7):  # small reads on purpose: exercises the buffer edges
        chunks.append(chunk)
    return b"".join(chunks)


def raw_app(environ, start_response):
    path = environ["PATH_INFO"]
    query = parse_qs(environ["QUERY_STRING"])
    text = [("Content-Type", "text/plain")]
    if path.startswith("/environ"):
        body = _read_all(environ)
        info = {key: environ.get(key) for key in ENVIRON_KEYS}
        info["headers"] = {k: v for k, v in environ.items() if k.startswith("HTTP_")}
        info["body"] = body.decode("latin-1")
        info["pid"] = os.getpid()
        data = json.dumps(info).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]
    if path == "/echo":
        body = _read_all(environ)
        start_response("200 OK", [*text, ("Content-Length", str(len(body)))])
        return [body]
    if path == "/lines":
        stream = environ["wsgi.input"]
        lines = [stream.readline(), stream.readline(5)]
        lines.extend(stream.readlines())
        data = json.dumps([line.decode("latin-1") for line in lines]).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [data]
    if path == "/noread":
        start_response("200 OK", [*text, ("Content-Length", "2")])
        return [b"ok"]
    if path == "/stream":
        start_response("200 OK", text)
        return (b"chunk%d\n" % i for i in range(int(query.get("n", ["3"])[0])))
    if path == "/write":
        write = start_response("200 OK", text)
        write(b"written;")
        return [b"returned"]
    if path == "/length":
        n = int(query["n"][0])
        start_response("200 OK", [*text, ("Content-Length", str(n))])
        return [b"x" * n]
    if path == "/short":
        start_response("200 OK", [*text, ("Content-Length", "10")])
        return [b"12345"]
    if path == "/empty":
        start_response("204 No Content", [])
        return []
    if path == "/fail":
        raise RuntimeError("boom before the response")
    if path == "/fail-after":
        def gen():
            yield b"partial"
            raise RuntimeError("boom after the response started")
        start_response("200 OK", text)
        return gen()
    if path == "/bad-header":
        start_response("200 OK", [*text, ("X-Evil", "a\r\nSet-Cookie: pwned=1")])
        return [b"should not be sent"]
    if path == "/file":
        size = int(query.get("n", ["100000"])[0])
        handle = tempfile.TemporaryFile()  # noqa: SIM115 - the response (FileWrapper) closes it
        handle.write(bytes(range(256)) * (size // 256) + b"z" * (size % 256))
        handle.seek(0)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](handle)
    if path == "/sleep":
        time.sleep(float(query.get("s", ["0.5"])[0]))
        start_response("200 OK", [*text, ("Content-Length", "5")])
        return [b"slept"]
    if path == "/close":
        start_response("200 OK", [*text, ("Content-Length", "2"), ("Connection", "close")])
        return [b"ok"]
    # Anything else: 404, saying what the application saw (the corpus tests read it).
    seen = json.dumps({
        "method": environ["REQUEST_METHOD"], "path": environ["PATH_INFO"],
        "query": environ["QUERY_STRING"], "uri": environ["REQUEST_URI"],
        "body": _read_all(environ).decode("latin-1"),
    }).encode()
    start_response("404 Not Found", [("Content-Type", "application/json"), ("Content-Length", str(len(seen)))])
    return [seen]


app = validator(raw_app)


class AppBaseException(BaseException):
    """Not an Exception: what a WSGI server must still answer with a 500 and survive."""


def _raise(kind: str) -> None:
    if kind == "exit":
        raise SystemExit(3)
    if kind == "base":
        raise AppBaseException("custom BaseException from the app")
    if kind == "generator-exit":
        raise GeneratorExit("a misbehaving iterator")
    if kind == "keyboard":
        raise KeyboardInterrupt
    if kind == "error":
        raise RuntimeError("an ordinary application error")
    raise ValueError(f"unknown kind {kind!r}")


class _Body:
    """A response iterable that raises ``kind`` from ``where``: __iter__, next (before or after
    a first chunk) or close()."""

    def __init__(self, kind: str, where: str) -> None:
        self.kind, self.where, self.count = kind, where, 0

    def __iter__(self):
        if self.where == "iter":
            _raise(self.kind)
        return self

    def __next__(self) -> bytes:
        self.count += 1
        if self.where == "next" or (self.where == "next-after" and self.count == 2):
            _raise(self.kind)
        if self.count > 1:
            raise StopIteration
        return b"partial"

    def close(self) -> None:
        if self.where == "close":
            _raise(self.kind)


def error_app(environ, start_response):
    """``/raise/KIND/WHERE``: KIND is exit, base, generator-exit, keyboard or error
    (a RuntimeError); WHERE is call (the
    app itself raises), iter, next, next-after (after a first chunk was sent) or close.
    ``/backend-down`` fails to connect to a backend; ``/stream`` streams 100 MB; ``/read-body``
    echoes the body; ``/own-headers`` sets Date and Server itself (in mixed case); anything else answers 200."""
    parts = environ["PATH_INFO"].split("/")
    if parts[1] == "raise":
        kind, where = parts[2], parts[3]
        if where == "call":
            _raise(kind)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _Body(kind, where)
    if parts[1] == "backend-down":
        # The app's own I/O failing with a ConnectionError is an app error, not a client gone.
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        socket.create_connection(("127.0.0.1", port), timeout=5).close()  # nothing listens there
    if parts[1] == "stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (b"x" * 1000 for _ in range(100000))
    if parts[1] == "read-body":
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    if parts[1] == "own-headers":
        start_response("200 OK", [("Content-Length", "2"), ("date", "Thu, 01 Jan 2015 00:00:00 GMT"),
                                  ("SERVER", "my-app/1.0")])
        return [b"ok"]
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
