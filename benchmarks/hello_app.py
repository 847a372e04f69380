"""The hello-world WSGI application every server in ``bench_http.py`` serves.

A fixed 13-byte body with ``Content-Type: text/plain`` and ``Content-Length`` set, so every
server can keep the connection alive (no chunking, no close-delimited body).
"""

from __future__ import annotations

BODY = b"Hello, World!"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def app(environ, start_response):  # type: ignore[no-untyped-def]
    start_response("200 OK", list(HEADERS))
    return [BODY]


application = app
