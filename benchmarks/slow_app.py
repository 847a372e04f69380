"""The WSGI application ``bench_slow.py`` serves: hello world, an upload and a big download.

- ``/`` (anything else): ``b"Hello, World!"``, what the measured normal client asks for;
- ``/upload``: reads the whole request body, as an upload handler does, then says hello, so a
  server that runs the application before the body has arrived holds a thread in ``read()``;
- ``/big``: an 8 MiB body with ``Content-Length``, what the slow readers ask for (a slow reader
  of a response that fits in the socket buffers costs a server nothing).
"""

from __future__ import annotations

BODY = b"Hello, World!"
BIG_SIZE = 8 << 20
BIG = b"x" * BIG_SIZE


def app(environ, start_response):  # type: ignore[no-untyped-def]
    path = environ.get("PATH_INFO", "/")
    if path == "/big":
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(BIG_SIZE))])
        return [BIG]
    if path == "/upload":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        environ["wsgi.input"].read(length)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))])
    return [BODY]
