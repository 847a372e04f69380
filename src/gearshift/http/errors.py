"""Protocol errors and limits of the HTTP/1.1 request parser.

Every way a request can be rejected is an :class:`HTTPError` carrying the status code to answer
with, decided once, where the violation is detected (h11's ``error_status_hint`` idea): the
connection code never has to guess a status from an exception type.

Status codes used by the parser:

* 400 Bad Request — malformed syntax or framing of any kind (request line, header field, chunk
  framing, conflicting or invalid ``Content-Length``/``Transfer-Encoding``, missing or duplicate
  ``Host``, bare CR or LF, connection closed mid-request).
* 413 Content Too Large — the body exceeds ``max_body_size``.
* 414 URI Too Long — the request line exceeds ``max_request_line``.
* 431 Request Header Fields Too Large — a header line, the number of header lines or the whole
  header section exceeds its limit (also: an oversized chunk-size line or trailer section).
* 501 Not Implemented — a transfer coding other than ``chunked``; the ``CONNECT`` method.
* 505 HTTP Version Not Supported — a well-formed version other than 1.0 and 1.1.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["ClientGone", "HTTPError", "ProtocolLimits", "RequestTimeout"]


class HTTPError(Exception):
    """A request the server must refuse, with the status to refuse it with.

    ``reason`` is a short, fixed, human-readable explanation. It never contains bytes from the
    request, so it is safe to put in the body of the error response.
    """

    status: int
    reason: str
    #: Header fields the error response carries besides the fixed ones (``Retry-After``).
    headers: tuple[tuple[str, str], ...] = ()

    def __init__(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.headers = headers

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"HTTPError({self.status!r}, {self.reason!r})"


class ClientGone(ConnectionError):
    """The client's socket failed, or the client took the response too slowly: nothing more can
    be read or written on this connection.

    Raised by the connection's own reads and writes (``wsgi.input``, ``write()``, the response
    body), chaining the socket's error, so that a ``ConnectionError`` the application meets in
    its own I/O (a backend refusing a connection) stays the application's error, answered with a
    500 and a traceback, while this one is only the client leaving.
    """


class RequestTimeout(HTTPError, TimeoutError):
    """408: the client did not send the request (its head or its body) in time.

    Also a :class:`TimeoutError`, so an application whose ``wsgi.input.read()`` raises it sees
    the ``OSError`` a timed-out socket read raises anywhere else, and never a short body.
    """

    def __init__(self, reason: str) -> None:
        TimeoutError.__init__(self, reason)
        self.status = 408
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ProtocolLimits:
    """Size limits the parser enforces, on complete and on still-incomplete input alike.

    All sizes are in bytes and exclude line terminators unless stated otherwise.

    * ``max_request_line`` — length of the request line (method, target, version and the two
      spaces, without CRLF). Over it: 414.
    * ``max_header_size`` — length of one header field line (``name: value`` as received,
      without CRLF). Over it: 431.
    * ``max_headers`` — number of header field lines. Over it: 431.
    * ``max_header_block`` — total size of the header field lines, each counted with its CRLF
      (the request line and the empty line ending the head are not counted). Over it: 431.
      Also bounds each chunk-size line of a chunked body (with its extensions), and its trailer
      section (counted the same way).
    * ``max_body_size`` — body bytes: a declared ``Content-Length`` over it is refused as soon as
      the head is parsed, a chunked body as soon as the decoded data passes it. ``None`` means
      unlimited; ``0`` allows only empty bodies. Over it: 413.
    """

    max_request_line: int = 8190
    max_header_size: int = 8190
    max_headers: int = 100
    max_header_block: int = 65536
    max_body_size: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "max_body_size":
                if value is None:
                    continue
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(f"max_body_size must be an int >= 0 or None, not {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{f.name} must be a positive int, not {value!r}")
