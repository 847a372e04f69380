"""PEP 3333 pieces that do not touch a socket: the environ, ``wsgi.input``, ``wsgi.file_wrapper``,
and the checks on what an application hands to ``start_response``.

The connection (``connection.py``) owns the socket and the parser; this module turns a parsed
request into an environ and validates the application's answer, so that a header containing CR,
LF or NUL is refused here and can never reach the wire.
"""

from __future__ import annotations

import operator
import re
import sys
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any, SupportsIndex
from urllib.parse import unquote_to_bytes

if TYPE_CHECKING:
    from .parser import Request
    from .proxy import ProxyHeaders

#: Headers an application must not set (PEP 3333: hop-by-hop headers are the server's business).
#: ``Connection: close`` is tolerated and honoured, since frameworks do send it.
HOP_BY_HOP = frozenset({
    "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
    "transfer-encoding", "upgrade",
})

_STATUS = re.compile(r"[1-5][0-9][0-9] [\x20-\x7e\t]*\Z")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_FIELD_VALUE = re.compile(r"[\x20-\x7e\x80-\xff\t]*\Z")


class ResponseHeadersError(ValueError):
    """The application's status or headers cannot be sent as they are (raised by start_response)."""


# What response_head() learns from a header, by its name; one dict lookup passes over the usual
# header. A Connection header is _CLOSE when it holds "close".
_OTHER, _CONTENT_LENGTH, _CONNECTION, _CLOSE, _DATE, _SERVER, _HOP_BY_HOP = range(7)
_SPECIAL_HEADERS = {
    "content-length": _CONTENT_LENGTH, "connection": _CONNECTION, "date": _DATE, "server": _SERVER,
    **dict.fromkeys(HOP_BY_HOP, _HOP_BY_HOP),
}
#: Status strings and header pairs already validated, with their encoded lines: applications send
#: the same few again and again, and a hit costs one dict lookup instead of the regexes and the
#: encoding. Bounded, since a header value may echo the request (emptied when full).
_CHECKED_LIMIT = 1024
_checked_status: dict[str, tuple[int, bytes]] = {}
_checked_headers: dict[tuple[str, str], tuple[int, bytes, int | None]] = {}


def check_response(status: str, headers: list[tuple[str, str]]) -> tuple[int, int | None, bool, bool, bool]:
    """Validate ``start_response`` arguments; return (status code, Content-Length or None,
    whether the app asked for ``Connection: close``, whether it set its own ``Date``, and its own
    ``Server``: the server adds those two only when absent)."""
    code, length, close, has_date, has_server, _ = response_head(status, headers)
    return code, length, close, has_date, has_server


def response_head(status: str, headers: list[tuple[str, str]]) -> tuple[int, int | None, bool, bool, bool, bytes]:
    """:func:`check_response`'s answer, plus the response head it validated, encoded: the status
    line and the application's header lines (the server adds its own after them)."""
    checked = _checked_status.get(status) if type(status) is str else None
    if checked is None:
        checked = _check_status(status)
    code, status_line = checked
    if type(headers) is not list:
        raise ResponseHeadersError(
            f"response headers must be a list of (name, value) tuples, not {type(headers).__name__}"
        )
    lines = [status_line]
    content_length = None
    close = has_date = has_server = False
    for header in headers:
        if type(header) is not tuple or len(header) != 2:
            raise ResponseHeadersError(f"response header {header!r} is not a (name, value) tuple")
        try:
            known = _checked_headers.get(header)
        except TypeError:  # an unhashable name or value, which _check_header refuses
            known = None
        kind, line, length = _check_header(header) if known is None else known
        lines.append(line)
        if kind == _OTHER:
            continue
        if kind == _CONTENT_LENGTH:
            if content_length is not None and content_length != length:
                raise ResponseHeadersError("conflicting Content-Length headers")
            content_length = length
        elif kind == _CLOSE:
            close = True
        elif kind == _DATE:
            has_date = True
        elif kind == _SERVER:
            has_server = True
    return code, content_length, close, has_date, has_server, b"".join(lines)


def _check_status(status: object) -> tuple[int, bytes]:
    if type(status) is not str or not _STATUS.match(status):
        raise ResponseHeadersError(f"invalid status line {status!r}: need 'NNN Reason' in ASCII without CR/LF")
    checked = (int(status[:3]), b"HTTP/1.1 " + status.encode("latin-1") + b"\r\n")
    if len(_checked_status) >= _CHECKED_LIMIT:
        _checked_status.clear()
    _checked_status[status] = checked
    return checked


def _check_header(header: tuple[object, object]) -> tuple[int, bytes, int | None]:
    name, value = header
    if type(name) is not str or not _TOKEN.match(name):
        raise ResponseHeadersError(f"invalid response header name {name!r}")
    if type(value) is not str or not _FIELD_VALUE.match(value):
        raise ResponseHeadersError(
            f"invalid value for response header {name}: {value!r} (CR, LF, NUL and other controls are refused)"
        )
    kind = _SPECIAL_HEADERS.get(name.lower(), _OTHER)
    length = None
    if kind == _CONTENT_LENGTH:
        if not value.isdigit() or not value.isascii():
            raise ResponseHeadersError(f"invalid Content-Length {value!r}")
        length = int(value)
    elif kind == _CONNECTION:
        if "close" in value.lower():
            kind = _CLOSE
    elif kind == _HOP_BY_HOP:
        raise ResponseHeadersError(f"hop-by-hop header {name!r} is not allowed from a WSGI application")
    checked = (kind, f"{name}: {value}\r\n".encode("latin-1"), length)
    if len(_checked_headers) >= _CHECKED_LIMIT:
        _checked_headers.clear()
    _checked_headers[(name, value)] = checked
    return checked


_environ_keys: dict[bytes, str | None] = {}


def environ_key(name: bytes) -> str | None:
    """``Content-Type`` -> ``CONTENT_TYPE``, ``X-Foo`` -> ``HTTP_X_FOO``; None for names with
    ``_``, which would be indistinguishable from ``-`` once in the environ (a spoofing vector
    behind proxies that filter on the dashed name)."""
    key = _environ_keys.get(name)
    if key is None and name not in _environ_keys:
        text = name.decode("latin-1").upper()
        if "_" in text:
            key = None
        elif text in ("CONTENT-TYPE", "CONTENT-LENGTH"):
            key = text.replace("-", "_")
        else:
            key = "HTTP_" + text.replace("-", "_")
        if len(_environ_keys) < 4096:  # bounded: header names are attacker-chosen
            _environ_keys[name] = key
    return key


def build_environ(base: dict[str, Any], request: Request, client_address: Any, wsgi_input: Any,
                  proxy: ProxyHeaders | None = None) -> dict[str, Any]:
    """The per-request environ: ``base`` (server-wide keys) plus what this request says, then
    what a trusted proxy's forwarding headers say (``proxy``: None for any other peer).

    A ``SCRIPT_NAME`` in ``base`` (``root_path``) is removed from the start of ``PATH_INFO``
    when the path starts with it, at a segment boundary (``/app`` from ``/app/x``, not from
    ``/apple``); a path outside it is passed on whole, since the proxy in front may have removed
    the prefix already."""
    environ = base.copy()
    path = request.path
    environ["REQUEST_METHOD"] = request.method
    # "OPTIONS *" has no path: PEP 3333 wants PATH_INFO empty or starting with "/"; the raw
    # target stays in REQUEST_URI (as in gunicorn and uWSGI) for the rare app that cares.
    environ["PATH_INFO"] = "" if path == b"*" else (unquote_to_bytes(path) if b"%" in path else path).decode("latin-1")
    environ["REQUEST_URI"] = request.target.decode("latin-1")
    environ["QUERY_STRING"] = request.query.decode("latin-1")
    environ["SERVER_PROTOCOL"] = "HTTP/" + request.version
    if type(client_address) is tuple:
        environ["REMOTE_ADDR"] = client_address[0]
        environ["REMOTE_PORT"] = str(client_address[1])
    else:  # Unix socket peers have no address
        environ["REMOTE_ADDR"] = ""
        environ["REMOTE_PORT"] = ""
    environ["wsgi.input"] = wsgi_input
    for name, value in request.headers:
        key = environ_key(name)
        if key is None:
            continue
        text = value.decode("latin-1")
        if key in environ and key.startswith("HTTP_"):
            environ[key] += ("; " if key == "HTTP_COOKIE" else ", ") + text
        else:
            environ[key] = text
    root = base.get("SCRIPT_NAME")
    if root:
        path_info = environ["PATH_INFO"]
        if path_info.startswith(root) and path_info[len(root):len(root) + 1] in ("", "/"):
            environ["PATH_INFO"] = path_info[len(root):]
    if proxy is not None:
        proxy.apply(environ)
    return environ


def _size(size: object) -> int:
    """A read size as an int; -1 (to the end) for None and for negative sizes."""
    if size is None:
        return -1
    if type(size) is int:
        return size
    if isinstance(size, SupportsIndex):
        return operator.index(size)
    raise TypeError(f"wsgi.input: size must be an int or None, not {type(size).__name__}")


class InputStream:
    """``wsgi.input``: the request body with the semantics of a buffered binary file
    (``io.BufferedReader``), and never a byte past it.

    ``read(n)`` returns ``n`` bytes, fewer only at the end of the body; ``read()`` returns the rest
    of it; ``readline(n)`` returns up to and including the next newline, at most ``n`` bytes;
    iteration yields lines. Each blocks, asking the connection for more, until it has what it
    needs: frameworks rely on it (Django reads ``request.body`` with one ``read(CONTENT_LENGTH)``),
    and a short read would hand them a truncated body without any error. At the end of the
    body every read returns ``b""`` (``wsgi.input_terminated``), for Content-Length and chunked
    alike.

    Reads take bytes from the parser's body buffer; when it holds too few, the connection reads
    the socket (sending ``100 Continue`` first if the client is waiting for it). What the parser
    puts there is the body alone, so a read can never take bytes of the next request.
    """

    __slots__ = ("_request", "_fetch")

    def __init__(self, request: Request, fetch: Callable[[Request], None]) -> None:
        self._request = request
        self._fetch = fetch  # blocks until the parser has more body for `request` or it is complete

    def read(self, size: int | None = -1) -> bytes:
        request = self._request
        body = request.body
        size = _size(size)
        if size < 0:
            while not request.complete:
                self._fetch(request)
            size = len(body)
        else:
            # A socket read can carry no body bytes at all (chunk sizes, trailers): loop.
            while len(body) < size and not request.complete:
                self._fetch(request)
        if size >= len(body):
            data = bytes(body)
            body.clear()
            return data
        with memoryview(body) as view:
            data = bytes(view[:size])
        del body[:size]
        return data

    def readline(self, size: int | None = -1) -> bytes:
        request = self._request
        body = request.body
        limit = _size(size)
        if limit < 0:
            limit = sys.maxsize
        scanned = 0
        while True:
            end = body.find(b"\n", scanned, limit)
            if end >= 0:
                end += 1
                break
            scanned = len(body)
            if scanned >= limit:
                end = limit
                break
            if request.complete:
                end = scanned
                break
            self._fetch(request)
        with memoryview(body) as view:
            data = bytes(view[:end])
        del body[:end]
        return data

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        """The remaining lines; with ``hint > 0``, stop once they add up to ``hint`` bytes."""
        hint = _size(hint)
        lines, total = [], 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def readinto(self, buffer: bytearray | memoryview) -> int:
        """Fill ``buffer`` (short only at the end of the body); return the number of bytes."""
        with memoryview(buffer) as view, view.cast("B") as target:
            data = self.read(len(target))
            target[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def __iter__(self) -> InputStream:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


class SpooledInput:
    """``wsgi.input`` for a body received in full into a temporary file before the application
    ran (see ``ReadAheadConnection``): the file's own reads, which have the semantics
    :class:`InputStream` documents and never wait for the client. The connection closes the file
    when the request ends."""

    __slots__ = ("_file",)

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file

    def read(self, size: int | None = -1) -> bytes:
        return self._file.read(_size(size))

    def readline(self, size: int | None = -1) -> bytes:
        return self._file.readline(_size(size))

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        return self._file.readlines(_size(hint))

    def readinto(self, buffer: bytearray | memoryview) -> int:
        with memoryview(buffer) as view, view.cast("B") as target:
            data = self._file.read(len(target))
            target[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def __iter__(self) -> SpooledInput:
        return self

    def __next__(self) -> bytes:
        line = self._file.readline()
        if not line:
            raise StopIteration
        return line


class FileWrapper:
    """``wsgi.file_wrapper``: iterates a file in blocks, and lets the connection use
    ``socket.sendfile`` (zero-copy ``os.sendfile``) when the file is a real one."""

    def __init__(self, filelike: IO[bytes], block_size: int = 65536) -> None:
        self.filelike = filelike
        self.block_size = block_size
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        while data := read(self.block_size):
            yield data

    def fileno(self) -> int | None:
        """The descriptor to sendfile() from, or None for file-likes without a real one."""
        try:
            return self.filelike.fileno()
        except (AttributeError, OSError, ValueError):
            return None
