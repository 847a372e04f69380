"""The demo WSGI application that ``gearshift`` serves when no ``MODULE:APP`` is given.

Each page says which strategy, process and thread served it, so that trying
``gearshift -s fork`` and ``gearshift -s thread`` side by side shows the difference. Endpoints:

``/``                the HTML page
``/json``            the same facts as JSON
``/stream``          a chunked response: a few lines, a short pause before each
``/slow?seconds=N``  answers after N seconds (0 to 30, default 1): try Ctrl+C meanwhile
``/fail``            raises an exception: the server logs it and answers 500
``/echo``            POST: answers with the request body
"""

from __future__ import annotations

import html
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

StartResponse = Callable[..., Any]

#: The longest /slow may sleep, so a typo cannot hold a worker for an hour.
MAX_SLOW_SECONDS = 30.0
#: The largest body /echo reads.
MAX_ECHO_BYTES = 1 << 20
STREAM_LINES = 5
STREAM_PAUSE = 0.2


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """The demo application: dispatch on PATH_INFO."""
    path = environ.get("PATH_INFO", "/") or "/"
    route = ROUTES.get(path)
    if route is None:
        return _text(start_response, "404 Not Found", f"no page {path}; try /\n")
    handler, methods = route
    method = environ["REQUEST_METHOD"]
    if method not in methods:
        allowed = ", ".join(sorted(methods))
        return _text(start_response, "405 Method Not Allowed", f"{path} takes {allowed}\n", [("Allow", allowed)])
    return handler(environ, start_response)


def facts(environ: dict[str, Any]) -> dict[str, Any]:
    """What the page shows: who served this request."""
    return {
        "strategy": environ.get("gearshift.strategy", "unknown"),
        "pid": os.getpid(),
        "thread": threading.current_thread().name,
        "multithread": bool(environ.get("wsgi.multithread")),
        "multiprocess": bool(environ.get("wsgi.multiprocess")),
        "server": environ.get("SERVER_SOFTWARE", ""),
    }


def index(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    info = facts(environ)
    rows = "\n".join(
        f"<tr><th>{html.escape(key)}</th><td>{html.escape(str(value))}</td></tr>" for key, value in info.items()
    )
    page = PAGE.format(
        strategy=html.escape(str(info["strategy"])), rows=rows, max_slow=int(MAX_SLOW_SECONDS),
    )
    body = page.encode("utf-8")
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]


def as_json(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    body = json.dumps({**facts(environ), "time": time.time()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def stream(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    # No Content-Length: an HTTP/1.1 server sends this chunked, one chunk per line.
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store")])
    info = facts(environ)

    def lines() -> Iterator[bytes]:
        for number in range(1, STREAM_LINES + 1):
            if number > 1:
                time.sleep(STREAM_PAUSE)
            yield (
                f"line {number} of {STREAM_LINES} from pid {info['pid']}, "
                f"thread {info['thread']}, strategy {info['strategy']}\n"
            ).encode()

    return lines()


def slow(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    query = parse_qs(environ.get("QUERY_STRING", ""))
    raw = query.get("seconds", ["1"])[-1]
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= MAX_SLOW_SECONDS:  # also rejects nan
        return _text(start_response, "400 Bad Request", f"seconds must be a number from 0 to {MAX_SLOW_SECONDS:g}\n")
    started = time.monotonic()
    time.sleep(seconds)
    info = facts(environ)
    return _text(
        start_response, "200 OK",
        f"slept {time.monotonic() - started:.2f} s in pid {info['pid']}, thread {info['thread']}\n",
    )


def fail(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    raise RuntimeError("this is the demo's /fail endpoint: the server logs this error and answers 500")


def echo(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    stream_in = environ["wsgi.input"]
    length_text = environ.get("CONTENT_LENGTH", "")
    if length_text:
        try:
            length = int(length_text)
        except ValueError:
            return _text(start_response, "400 Bad Request", "bad Content-Length\n")
        if length > MAX_ECHO_BYTES:
            return _text(start_response, "413 Content Too Large", f"/echo takes at most {MAX_ECHO_BYTES} bytes\n")
        body = _read(stream_in, length)
    elif environ.get("wsgi.input_terminated"):  # chunked: read to the end, within the limit
        body = _read(stream_in, MAX_ECHO_BYTES + 1)
        if len(body) > MAX_ECHO_BYTES:
            return _text(start_response, "413 Content Too Large", f"/echo takes at most {MAX_ECHO_BYTES} bytes\n")
    else:
        return _text(start_response, "411 Length Required", "send a Content-Length\n")
    content_type = environ.get("CONTENT_TYPE") or "application/octet-stream"
    start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


def _read(stream_in: Any, limit: int) -> bytes:
    parts = []
    remaining = limit
    while remaining > 0:
        chunk = stream_in.read(min(remaining, 65536))
        if not chunk:
            break
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


def _text(
    start_response: StartResponse, status: str, text: str, extra: list[tuple[str, str]] | None = None
) -> list[bytes]:
    body = text.encode("utf-8")
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))), *(extra or [])]
    start_response(status, headers)
    return [body]


ROUTES: dict[str, tuple[Callable[..., Iterable[bytes]], frozenset[str]]] = {
    "/": (index, frozenset({"GET", "HEAD"})),
    "/json": (as_json, frozenset({"GET", "HEAD"})),
    "/stream": (stream, frozenset({"GET", "HEAD"})),
    "/slow": (slow, frozenset({"GET", "HEAD"})),
    "/fail": (fail, frozenset({"GET", "HEAD", "POST"})),
    "/echo": (echo, frozenset({"POST", "PUT"})),
}

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>gearshift demo: strategy {strategy}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 44rem; margin: 2rem auto; padding: 0 1rem; }}
th {{ text-align: left; padding-right: 1.5rem; }}
code {{ background: #f3f3f3; padding: 0 .25rem; }}
</style>
</head>
<body>
<h1>gearshift demo</h1>
<p>This page was served by strategy <strong>{strategy}</strong>. Reload it: with <code>fork</code>
the pid changes every time; with <code>thread</code> the thread does; with <code>sync</code>
neither does.</p>
<table>
{rows}
</table>
<h2>Try</h2>
<ul>
<li><a href="/stream">/stream</a>: a chunked response, one line every {pause} s</li>
<li><a href="/slow?seconds=5">/slow?seconds=5</a>: answers after 5 s (at most {max_slow});
  press Ctrl+C in the terminal meanwhile: the request still completes, then the server exits</li>
<li><a href="/fail">/fail</a>: the application raises; the server logs it and answers 500</li>
<li><a href="/json">/json</a>: the facts above as JSON</li>
<li>/echo: <code>curl --data hello http://HOST:PORT/echo</code> answers with the body</li>
</ul>
<form method="post" action="/echo" enctype="text/plain">
<input name="message" value="hello"> <button>POST to /echo</button>
</form>
<p>Serve your own application: <code>gearshift mymodule:app -s fork</code>.
List strategies: <code>gearshift --list-strategies</code>.</p>
</body>
</html>
""".replace("{pause}", str(STREAM_PAUSE))
