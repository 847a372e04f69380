"""Access-log lines: gunicorn's format atoms, or one JSON object per line.

The connection builds an :class:`AccessRecord` only when logger ``gearshift.access`` is enabled
for INFO (the command enables it; a library user's logging configuration decides otherwise), so
a server without an access log pays one ``isEnabledFor`` per request. The format is compiled
once, when the server is made: an unknown atom is an error then, not a silent ``-`` in every
line.

Every value a client chose (the request line, headers, the user name) is escaped in the text
format as Apache does: ``"`` and ``\\`` get a backslash, controls and non-ASCII bytes become
``\\xHH``. So no header can end a quoted field early or start a new line, and a log parser sees
the fields the server wrote. The ``json`` format escapes with :func:`json.dumps` (gunicorn's
printf-style format cannot: a header holding ``"`` forges JSON keys).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .parser import Request

#: The default line: gunicorn's (Apache's "combined" format) and the request's duration in seconds.
DEFAULT_FORMAT = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(L)ss'
JSON = "json"

#: The atoms, as in gunicorn's ``access_log_format``.
ATOMS = {
    "h": "remote address (after trusted proxy headers)",
    "l": "'-'",
    "u": "user name (HTTP Basic authentication) or '-'",
    "t": "date and time, [10/Oct/2000:13:55:36 -0700]",
    "r": "request line (GET /path?q HTTP/1.1); for a refused request, what was received",
    "m": "request method",
    "U": "URL path (PATH_INFO)",
    "q": "query string",
    "H": "protocol (HTTP/1.1)",
    "s": "status",
    "B": "response body length",
    "b": "response body length, or '-' for none",
    "f": "Referer",
    "a": "User-Agent",
    "T": "request time in whole seconds",
    "M": "request time in whole milliseconds",
    "D": "request time in whole microseconds",
    "L": "request time in seconds, with decimals",
    "p": "process id, as <1234>",
    "{name}i": "request header",
    "{name}o": "response header",
    "{NAME}e": "environ variable",
}

_ATOM = re.compile(r"%\((\{[^}]*\}[ioe]|[^)]*)\)s|%%|%")
_UNSAFE = re.compile(r'[\x00-\x1f\x7f-\U0010ffff"\\]')


class AccessRecord:
    """What one access line tells: the request (None if its head could not be parsed), its
    environ (None if the application did not run), the status, the body bytes sent."""

    __slots__ = ("client_address", "request", "environ", "status", "size", "duration", "response_headers",
                 "received")

    def __init__(self, client_address: Any, request: Request | None, environ: dict[str, Any] | None, status: int,
                 size: int, duration: float, response_headers: Sequence[tuple[str, str]] = (),
                 received: bytes | None = None) -> None:
        self.client_address = client_address
        self.request = request
        self.environ = environ
        self.status = status
        self.size = size
        self.duration = duration
        self.response_headers = response_headers
        self.received = received  # the start of a request head that was refused

    # -- values (unescaped) ---------------------------------------------------------------------

    def remote_addr(self) -> str:
        if self.environ is not None and self.environ.get("REMOTE_ADDR"):
            return str(self.environ["REMOTE_ADDR"])
        address = self.client_address
        return str(address[0]) if type(address) is tuple else "-"

    def method(self) -> str:
        """The request's method, or ``-`` for a request refused before its head was parsed."""
        return self.request.method if self.request is not None else "-"

    def request_line(self) -> str:
        request = self.request
        if request is not None:
            return f"{request.method} {request.target.decode('latin-1')} HTTP/{request.version}"
        if self.received:
            return self.received.partition(b"\r\n")[0][:200].decode("latin-1")
        return "-"

    def header(self, name: str) -> str | None:
        """A request header, by its name in any case."""
        environ = self.environ
        if environ is not None:
            key = name.upper().replace("-", "_")
            value = environ.get(key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key)
            return None if value is None else str(value)
        if self.request is not None:
            wanted = name.lower().encode("latin-1", "replace")
            values = [v.decode("latin-1") for n, v in self.request.headers if n.lower() == wanted]
            return ", ".join(values) if values else None
        return None

    def response_header(self, name: str) -> str | None:
        wanted = name.lower()
        values = [v for n, v in self.response_headers if n.lower() == wanted]
        return ", ".join(values) if values else None

    def user(self) -> str | None:
        authorization = self.header("Authorization")
        if not authorization or authorization[:6].lower() != "basic ":
            return None
        try:
            decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[0] or None

    def path(self) -> str:
        if self.environ is not None:
            return str(self.environ.get("PATH_INFO", ""))
        return self.request.path.decode("latin-1") if self.request is not None else "-"

    def query(self) -> str:
        return self.request.query.decode("latin-1") if self.request is not None else ""

    def protocol(self) -> str:
        return f"HTTP/{self.request.version}" if self.request is not None else "-"


def escape(value: str) -> str:
    """Apache's escaping of a logged value (see the module docstring)."""
    if not _UNSAFE.search(value):
        return value
    return _UNSAFE.sub(_escape_char, value)


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    if char in '"\\':
        return "\\" + char
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


_clf_cache: tuple[int, str] = (0, "")


def clf_time() -> str:
    """The time as in the common log format, formatted at most once a second."""
    global _clf_cache
    now = int(time.time())
    if _clf_cache[0] != now:
        _clf_cache = (now, time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(now)))
    return _clf_cache[1]


def _dash(value: str | None) -> str:
    return "-" if value is None or value == "" else escape(value)


def _seconds(record: AccessRecord) -> str:
    seconds, micro = divmod(int(record.duration * 1_000_000), 1_000_000)
    return f"{seconds}.{micro:06d}"


_GETTERS: dict[str, Callable[[AccessRecord], str]] = {
    "h": lambda r: escape(r.remote_addr()),
    "l": lambda r: "-",
    "u": lambda r: _dash(r.user()),
    "t": lambda r: clf_time(),
    "r": lambda r: escape(r.request_line()),
    "m": lambda r: escape(r.method()),
    "U": lambda r: escape(r.path()),
    "q": lambda r: escape(r.query()),
    "H": lambda r: r.protocol(),
    "s": lambda r: str(r.status),
    "B": lambda r: str(r.size),
    "b": lambda r: str(r.size) if r.size else "-",
    "f": lambda r: _dash(r.header("Referer")),
    "a": lambda r: _dash(r.header("User-Agent")),
    "T": lambda r: str(int(r.duration)),
    "M": lambda r: str(int(r.duration * 1000)),
    "D": lambda r: str(int(r.duration * 1_000_000)),
    "L": _seconds,
    "p": lambda r: f"<{os.getpid()}>",
}


def compile_format(fmt: str) -> Callable[[AccessRecord], str]:
    """The function that writes a line in format ``fmt`` (gunicorn's atoms, or ``json``).
    Raises ``ValueError`` naming an unknown atom."""
    if not isinstance(fmt, str):
        raise ValueError(f"access_log_format must be a string, not {fmt!r}")
    if fmt.strip().lower() == JSON:
        return json_line
    parts: list[str | Callable[[AccessRecord], str]] = []
    pos = 0
    for match in _ATOM.finditer(fmt):
        if match.start() > pos:
            parts.append(fmt[pos:match.start()])
        pos = match.end()
        text = match.group()
        if text == "%%":
            parts.append("%")
            continue
        atom = match.group(1)
        if atom is None:
            raise ValueError(f"access_log_format: a lone '%' at offset {match.start()} (write %% for a percent sign)")
        parts.append(_getter(atom))
    if pos < len(fmt):
        parts.append(fmt[pos:])
    return lambda record: "".join(part if type(part) is str else part(record) for part in parts)  # type: ignore[operator]


def _getter(atom: str) -> Callable[[AccessRecord], str]:
    if atom.startswith("{"):
        name, kind = atom[1:-2], atom[-1]
        if not name:
            raise ValueError(f"access_log_format: %({atom})s names no header or variable")
        if kind == "i":
            return lambda r: _dash(r.header(name))
        if kind == "o":
            return lambda r: _dash(r.response_header(name))
        return lambda r: _dash(None if r.environ is None else _text(r.environ.get(name)))
    getter = _GETTERS.get(atom)
    if getter is None:
        known = ", ".join(f"%({a})s" for a in ATOMS)
        raise ValueError(f"access_log_format: unknown atom %({atom})s; the atoms are {known}, or 'json'")
    return getter


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def json_line(record: AccessRecord) -> str:
    """One JSON object; :func:`json.dumps` escapes whatever the client sent."""
    return json.dumps({
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "remote_addr": record.remote_addr(),
        "request": record.request_line(),
        "method": record.request.method if record.request is not None else None,
        "path": record.path() if record.request is not None else None,
        "query": record.query(),
        "protocol": record.protocol() if record.request is not None else None,
        "status": record.status,
        "bytes": record.size,
        "duration": round(record.duration, 6),
        "referer": record.header("Referer"),
        "user_agent": record.header("User-Agent"),
        "user": record.user(),
    }, ensure_ascii=True)
