"""Sans-IO HTTP/1.1 request parser: bytes in, :class:`Request` objects out.

The parser wraps llhttp (through ``httptools.HttpRequestParser``) and adds what llhttp does not
do: size limits enforced while a head is still arriving, request-line rules, ``Host`` rules,
transfer-coding rules, body size limits, and one status code per kind of violation
(:class:`~gearshift.http.errors.HTTPError`). No httptools exception ever escapes.

How the work is split
---------------------
* **Heads are framed here.** Bytes of a request head are buffered until the empty line
  (``CRLF CRLF``) arrives, with every limit checked incrementally on the partial buffer, so an
  endless request line or header is refused (414/431) as soon as it passes the limit, without
  waiting for a line end. The complete head is checked (limits, request line) and then given to
  llhttp in one call; llhttp validates header syntax and ``Content-Length``/
  ``Transfer-Encoding`` framing. Header fields are then extracted from the head with one regex.
* **Content-Length bodies are decoded by llhttp**, fed exactly up to their end, so llhttp never
  sees a byte of the next request and the next head is framed here again.
* **Chunked bodies are decoded here, their trailers by llhttp.** Chunk-size lines and chunk data
  are decoded here, because llhttp refuses the whitespace RFC 9112 allows in chunk extensions;
  llhttp is then given the last chunk (``0`` CRLF, its extensions dropped) and the trailer
  section up to each ``CRLF CRLF`` (where the message may end), validates the trailer fields
  and ends the message.

Decisions (RFC 9112 / RFC 9110 leave a choice)
----------------------------------------------
* **Line endings:** CRLF only. A bare LF or bare CR anywhere in a head, in chunk framing or in
  trailers is a 400 (RFC 9112 §2.2 allows accepting bare LF; refusing it removes a class of
  request-smuggling ambiguities, and llhttp's strict mode refuses it too). Empty lines (CRLF)
  before a request line are skipped (RFC 9112 §2.2).
* **Content-Length:** exactly one field line holding a plain decimal number. Several
  ``Content-Length`` lines, or a comma list - even of identical values - are a 400 (RFC 9110
  §8.6 allows either; refusing is what llhttp does and is the safe choice). Values above
  ``2**63 - 1`` are a 400 (not representable; llhttp itself refuses values above ``2**64 - 1``).
* **Transfer-Encoding:** the codings are evaluated over all ``Transfer-Encoding`` lines: if the
  final coding is not ``chunked`` (including ``identity``, an empty value, or ``chunked, gzip``)
  it is a 400 (RFC 9112 §6.3: the length cannot be determined); ``chunked`` twice is a 400; any
  other coding before a final ``chunked`` (``gzip, chunked``) is a 501 (RFC 9112 §6.1). On an
  HTTP/1.0 request any ``Transfer-Encoding`` is a 400 (RFC 9112 §6.1: the framing is faulty).
  ``Content-Length`` together with ``Transfer-Encoding`` is a 400.
* **Methods:** any token (RFC 9110 tchar) is accepted, case-sensitively: ``FOO`` and ``get``
  are delivered as such, and the application answers 405/501 itself. llhttp only knows a fixed
  list of methods, so for any other method llhttp is shown ``GET`` in its place (the method does
  not change request framing in HTTP/1.1, except for ``CONNECT``).
* **Chunk extensions** are accepted and ignored, with BWS around ``;`` and ``=`` and
  quoted-string values (RFC 9112 §7.1.1); a chunk-size line outside that grammar (including
  trailing whitespace or an empty value) is a 400, and one longer than ``max_header_block`` a
  431.
* **Singleton fields:** a repeated field of :data:`SINGLETON_FIELDS` (``Content-Type``,
  ``Authorization``, ``Range``, ...: fields RFC 9110 defines as one value, not a list) is a 400.
* **CONNECT:** 501 (this server does not tunnel).
* **Upgrade:** ``Upgrade``/``Connection: upgrade`` are ignored; the request is an ordinary
  request (with its body, if it declares one) and stays on HTTP/1.1. The headers are still
  passed to the application.
* **Request target:** origin-form (``/...``), absolute-form (``http://`` or ``https://``, any
  case, with a non-empty authority) or ``*`` for ``OPTIONS`` only; visible ASCII only; a ``#``
  (fragment) is a 400. For absolute-form, ``path`` and ``query`` are taken from the target
  (an empty path is ``b"/"``); for ``*``, ``path`` is ``b"*"``.
* **Host:** an HTTP/1.1 request needs exactly one ``Host`` line; more than one is a 400 in any
  version, and so is a value that is not ``uri-host [":" port]`` (RFC 9112 §3.2). An empty
  ``Host`` is allowed.
* **Expect:** only ``100-continue`` (any case) on HTTP/1.1 sets ``expect_continue``; other
  expectations are ignored.
* **Connection:** ``keep_alive`` is false if any ``Connection`` token is ``close``; otherwise it
  is true on HTTP/1.1, and on HTTP/1.0 only with a ``keep-alive`` token. After a request with
  ``keep_alive`` false, the parser ignores any further bytes (the connection is to be closed
  once that request is answered).
* **Header values:** leading and trailing whitespace (SP/HTAB) is stripped; obs-text
  (bytes 0x80-0xFF) is allowed in values, as RFC 9110 §5.5 allows; CTLs other than HTAB (and
  DEL) are a 400, as are obs-fold and whitespace before the colon or at the start of the header
  section.

Errors and pipelining
---------------------
Requests whose heads were parsed before an error stay in :attr:`RequestParser.requests`; they
were valid and may be answered before the error response. After an :class:`HTTPError` the parser
is dead: every further ``feed``/``feed_eof`` raises the same error again.
"""

from __future__ import annotations

import re
from collections import deque
from types import SimpleNamespace

import httptools
from httptools import HttpParserError, HttpParserUpgrade

from .errors import HTTPError, ProtocolLimits

__all__ = ["SINGLETON_FIELDS", "Request", "RequestParser"]

_TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
_TOKEN = re.compile(rb"[%s]+" % _TCHAR)
#: The request line of nearly every valid request; anything else goes to _diagnose_request_line.
_REQUEST_LINE = re.compile(rb"([%s]+) ([\x21-\x7e]+) HTTP/(1\.[01])\r\n" % _TCHAR)
_TARGET = re.compile(rb"[\x21-\x7e]+")
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
_ABSOLUTE_FORM = re.compile(rb"[hH][tT][tT][pP][sS]?://([^/?]+)([^?]*)(?:\?(.*))?", re.DOTALL)
#: uri-host [":" port]: reg-name / IPv4 / IP-literal (RFC 3986), any case. Empty is allowed.
_HOST = re.compile(rb"(?:\[[0-9A-Za-z.:%_~!$&'()*+,;=\-]+\]|[0-9A-Za-z.%_~!$&'()*+,;=\-]*)(?::[0-9]*)?")
#: One header field line of a head llhttp has already validated (names are tokens, every line
#: has a colon, values have no CR): single-character negated classes keep this regex fast.
_FIELD_LINE = re.compile(rb"([^:]+):[ \t]*([^\r]*)\r\n")
_CRLFS = re.compile(rb"(?:\r\n)+")
_TCHAR_BYTES = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")

#: Methods llhttp parses as ordinary requests; other tokens are shown to llhttp as GET.
_LLHTTP_METHODS = {
    m: m.decode("ascii")
    for m in (
        b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"TRACE", b"PATCH", b"COPY",
        b"LOCK", b"MKCOL", b"MOVE", b"PROPFIND", b"PROPPATCH", b"SEARCH", b"UNLOCK", b"BIND",
        b"REBIND", b"UNBIND", b"ACL", b"REPORT", b"MKACTIVITY", b"CHECKOUT", b"MERGE",
        b"M-SEARCH", b"NOTIFY", b"SUBSCRIBE", b"UNSUBSCRIBE", b"PURGE", b"MKCALENDAR", b"LINK",
        b"UNLINK", b"SOURCE", b"QUERY",
    )
}
_VERSIONS = {b"1.1": "1.1", b"1.0": "1.0"}
#: Request fields that RFC 9110 defines as one value, not a comma-separated list, so they may
#: appear only once (RFC 9110 §5.3): a repeat cannot be combined, and two readers of the message
#: (a proxy taking the first, the application the last) would disagree. More than one line is a
#: 400. ``Host`` and ``Content-Length`` are refused by their own rules. Response-only singletons
#: (Location, ETag, ...) do not concern a server.
SINGLETON_FIELDS = (
    b"authorization", b"content-location", b"content-range", b"content-type", b"date", b"from",
    b"if-modified-since", b"if-range", b"if-unmodified-since", b"max-forwards",
    b"proxy-authorization", b"range", b"referer", b"user-agent",
)
_HOST_H, _CL_H, _TE_H, _CONN_H, _EXPECT_H = range(1, 6)
_SINGLE_H = 8  # SINGLETON_FIELDS[i] has kind _SINGLE_H + i (a bit in a mask of those seen)
_SPECIAL = {
    b"host": _HOST_H,
    b"content-length": _CL_H,
    b"transfer-encoding": _TE_H,
    b"connection": _CONN_H,
    b"expect": _EXPECT_H,
    **{name: _SINGLE_H + i for i, name in enumerate(SINGLETON_FIELDS)},
}
_SINGLE_NAMES = {_SINGLE_H + i: name.decode("ascii").title() for i, name in enumerate(SINGLETON_FIELDS)}
#: _SPECIAL plus the usual spellings of common header names, to skip most ``name.lower()``s.
_KIND = {
    **{
        spelling: 0
        for name in (
            b"accept", b"accept-encoding", b"accept-language", b"accept-charset", b"authorization",
            b"cache-control", b"content-type", b"cookie", b"dnt", b"if-match", b"if-modified-since",
            b"if-none-match", b"if-range", b"if-unmodified-since", b"origin", b"pragma", b"priority",
            b"range", b"referer", b"sec-fetch-dest", b"sec-fetch-mode", b"sec-fetch-site",
            b"sec-fetch-user", b"te", b"trailer", b"upgrade", b"upgrade-insecure-requests",
            b"user-agent", b"via", b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto",
            b"x-real-ip", b"x-request-id", b"x-requested-with",
        )
        for spelling in (name, name.title())
    },
    **_SPECIAL,
    **{name.title(): kind for name, kind in _SPECIAL.items()},
}
_MAX_CONTENT_LENGTH = 2**63 - 1

# Parser states.
_HEAD = 0  # framing a request head (or between requests)
_IN_HEAD = 1  # llhttp is parsing a head this parser framed
_BODY = 2  # Content-Length body: _remaining bytes still to come
_CHUNKED = 3  # chunked body
_CLOSED = 4  # after a request that ends the connection, or after EOF: bytes are ignored
_DEAD = 5  # after an HTTPError
_SYNTHETIC = 6  # llhttp is parsing the synthetic head of _after_upgrade

# Where a chunked body is (the _CHUNKED state); _remaining counts data or CRLF bytes still due.
_CK_SIZE = 0  # in a chunk-size line (the partial line is in _buf)
_CK_DATA = 1  # in chunk data
_CK_CRLF = 2  # in the CRLF after chunk data
_CK_TRAILER = 3  # after the last chunk: llhttp parses the trailer section

_QUOTED_STRING = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
#: chunk-size [ chunk-ext ] CRLF, chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS value ] ),
#: value = token / quoted-string (RFC 9112 §7.1.1).
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]+)(?:[ \t]*;[ \t]*[%s]+(?:[ \t]*=[ \t]*(?:[%s]+|%s))?)*\r\n" % (_TCHAR, _TCHAR, _QUOTED_STRING)
)


class Request:
    """One parsed request head, plus its body as it arrives.

    * ``method`` — the method token as received (case-sensitive): ``"GET"``, ``"FOO"``.
    * ``target`` — the raw request-target: ``b"/a%20b?x=1"``, ``b"http://h/p"``, ``b"*"``.
    * ``path`` / ``query`` — the target's path (still percent-encoded) and its query without
      ``?`` (``b""`` if none). For absolute-form they come from the URL (empty path: ``b"/"``);
      for ``*`` the path is ``b"*"``.
    * ``version`` — ``"1.0"`` or ``"1.1"``.
    * ``headers`` — ``(name, value)`` pairs in order; names as received, values with
      surrounding whitespace stripped. Trailers of a chunked body are not included.
    * ``keep_alive`` — whether the connection may carry another request after this one.
    * ``expect_continue`` — ``Expect: 100-continue`` on an HTTP/1.1 request.
    * ``chunked`` / ``content_length`` — the body framing (``content_length`` is ``None`` when
      absent or chunked; no framing means no body).
    * ``body`` — body bytes parsed and not yet taken by the consumer (``del body[:n]``).
    * ``body_received`` — body bytes parsed so far in total.
    * ``complete`` — the whole message (including any trailers) has been parsed.
    """

    __slots__ = (
        "method",
        "target",
        "path",
        "query",
        "version",
        "headers",
        "keep_alive",
        "expect_continue",
        "chunked",
        "content_length",
        "body",
        "complete",
        "body_received",
    )

    method: str
    target: bytes
    path: bytes
    query: bytes
    version: str
    headers: list[tuple[bytes, bytes]]
    keep_alive: bool
    expect_continue: bool
    chunked: bool
    content_length: int | None
    body: bytearray
    complete: bool
    body_received: int

    def __init__(self, method: str, target: bytes, path: bytes, query: bytes, version: str) -> None:
        self.method = method
        self.target = target
        self.path = path
        self.query = query
        self.version = version
        self.headers = []
        self.keep_alive = True
        self.expect_continue = False
        self.chunked = False
        self.content_length = None
        self.body = bytearray()
        self.complete = False
        self.body_received = 0

    def __repr__(self) -> str:
        return (
            f"<Request {self.method} {self.target!r} HTTP/{self.version} headers={len(self.headers)}"
            f" body={self.body_received}{'' if self.complete else '+'}>"
        )


class RequestParser:
    """Incremental HTTP/1.1 request parser (see the module docstring for the rules).

    ``requests`` holds the requests whose head is complete, oldest first; the consumer
    ``popleft()``s each when it starts it and keeps its own reference to follow ``body`` and
    ``complete`` as more data is fed.
    """

    __slots__ = (
        "requests",
        "_limits",
        "_max_request_line",
        "_max_header_size",
        "_max_headers",
        "_max_header_block",
        "_max_body",
        "_ll",
        "_proto",
        "_state",
        "_error",
        "_cur",
        "_head",
        "_hdr_start",
        "_remaining",
        "_buf",
        "_scan",
        "_lines",
        "_last_nl",
        "_rl_end",
        "_tail",
        "_run",
        "_chunk",
    )

    def __init__(self, limits: ProtocolLimits = ProtocolLimits()) -> None:
        self.requests: deque[Request] = deque()
        self._limits = limits
        self._max_request_line = limits.max_request_line
        self._max_header_size = limits.max_header_size
        self._max_headers = limits.max_headers
        self._max_header_block = limits.max_header_block
        self._max_body = limits.max_body_size
        # httptools looks the callbacks up once, by name, on this object.
        self._proto = SimpleNamespace(
            on_headers_complete=self._on_headers_complete,
            on_body=self._on_body,
            on_message_complete=self._on_message_complete,
        )
        self._ll = httptools.HttpRequestParser(self._proto)
        self._state = _HEAD
        self._error: HTTPError | None = None
        self._cur: Request | None = None  # the request whose head or body llhttp is parsing
        self._head = b""
        self._hdr_start = 0
        self._remaining = 0
        self._buf = bytearray()  # a partial head
        self._reset_partial()
        self._chunk = _CK_SIZE  # where a chunked body is (_CHUNKED state)
        self._tail = b""  # the last (up to 3) trailer-section bytes given to llhttp
        self._run = 0  # trailer-section bytes given to llhttp

    # -- public API ----------------------------------------------------------------------------

    @property
    def limits(self) -> ProtocolLimits:
        return self._limits

    @property
    def idle(self) -> bool:
        """True when no part of a request is buffered or being received (between requests)."""
        state = self._state
        return (state == _HEAD and not self._buf) or state == _CLOSED

    def feed(self, data: bytes) -> None:
        """Parse ``data``; may complete several pipelined requests. Raises :class:`HTTPError`."""
        if self._error is not None:
            raise self._error
        if type(data) is not bytes:
            data = bytes(data)
        pos = 0
        n = len(data)
        view: memoryview | None = None
        try:
            while pos < n:
                state = self._state
                if state == _HEAD:
                    if not self._buf and data[pos] != 13:
                        # Fast path: nothing buffered, and the data holds a whole head.
                        end = data.find(b"\r\n\r\n", pos)
                        if end >= 0:
                            end += 4
                            self._start_request(data if pos == 0 and end == n else data[pos:end])
                            pos = end
                            continue
                    pos = self._feed_head(data, pos, n)
                elif state == _BODY:
                    take = self._remaining
                    if take > n - pos:
                        take = n - pos
                    if view is None:
                        view = memoryview(data)
                    self._remaining -= take
                    self._ll_feed(view[pos : pos + take])
                    pos += take
                elif state == _CHUNKED:
                    if view is None:
                        view = memoryview(data)
                    pos = self._feed_chunked(data, view, pos, n)
                else:  # _CLOSED: the connection ends after the last request; ignore the rest
                    return
        except HTTPError as exc:
            self._die(exc)
            raise

    def feed_eof(self) -> None:
        """The peer closed its side. Raises ``HTTPError(400)`` if a request was cut short.

        Between requests it does nothing, and any bytes fed afterwards are ignored.
        """
        if self._error is not None:
            raise self._error
        state = self._state
        if state == _HEAD and self._buf:
            error = HTTPError(400, "the connection closed in the middle of a request head")
        elif state in (_BODY, _CHUNKED):
            error = HTTPError(400, "the connection closed before the request body was complete")
        else:
            self._state = _CLOSED
            return
        self._die(error)
        raise error

    # -- feeding -------------------------------------------------------------------------------

    def _die(self, error: HTTPError) -> None:
        self._error = error
        self._state = _DEAD
        self._buf = bytearray()
        self._cur = None

    def _feed_head(self, data: bytes, pos: int, n: int) -> int:
        """Frame a request head; return the position in ``data`` where it ended (or ``n``)."""
        buf = self._buf
        if buf:
            if len(buf) < 4:
                # Too short to hold a head's start and to have been checked much: start over on
                # the joined bytes (this also handles a CRLF split across two feeds).
                joined = bytes(buf) + data[pos:]
                old = len(buf)
                self._buf = bytearray()
                self._reset_partial()
                return pos - old + self._feed_head(joined, 0, len(joined))
            # Continuing a partial head: find its end, which may straddle the two pieces.
            end = (buf[-3:] + data[pos : pos + 3]).find(b"\r\n\r\n")
            if end >= 0:
                end += pos + 1  # the straddling CRLFCRLF ends inside data's first 3 bytes
            else:
                end = data.find(b"\r\n\r\n", pos)
                if end >= 0:
                    end += 4
            if end < 0:
                buf += data[pos:]
                self._check_partial(buf)
                return n
            buf += data[pos:end]
            head = bytes(buf)
            self._buf = bytearray()
            self._reset_partial()
            self._start_request(head)
            return end
        if data[pos] == 13:  # empty lines before the request line are ignored (RFC 9112 §2.2)
            match = _CRLFS.match(data, pos)
            if match is not None:
                pos = match.end()
                if pos == n:
                    return n
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            buf += data[pos:]
            self._check_partial(buf)
            return n
        end += 4
        self._start_request(data if pos == 0 and end == n else data[pos:end])
        return end

    def _reset_partial(self) -> None:
        self._scan = 0  # bytes of _buf already checked
        self._lines = 0  # complete lines (LFs) in _buf[:_scan]
        self._last_nl = -1  # position of the last LF in _buf[:_scan]
        self._rl_end = -1  # position of the CRLF ending the request line

    def _check_partial(self, buf: bytearray) -> None:
        """Check an incomplete head incrementally (each byte is examined once)."""
        size = len(buf)
        if size == 1 and buf[0] == 13:
            return  # maybe the start of an empty line; decided by the next byte
        if self._scan == 0 and buf[0] not in _TCHAR_BYTES:
            raise HTTPError(400, "malformed request line")  # e.g. a TLS handshake
        end = size - 1 if buf[-1] == 13 else size  # a final CR waits for its LF
        scan = self._scan
        if end > scan:
            crlf = buf.count(b"\r\n", scan, end)
            if buf.count(b"\n", scan, end) != crlf or buf.count(b"\r", scan, end) != crlf:
                raise HTTPError(400, "bare CR or LF in the request head (only CRLF ends a line)")
            if crlf:
                if self._rl_end < 0:
                    self._rl_end = buf.find(b"\r\n", scan, end)
                self._lines += crlf
                self._last_nl = buf.rfind(b"\n", scan, end)
            self._scan = end
        rl_end = self._rl_end
        if rl_end < 0:
            if end > self._max_request_line:
                raise HTTPError(414, "the request line is too long")
            return
        if rl_end > self._max_request_line:
            raise HTTPError(414, "the request line is too long")
        if end - self._last_nl - 1 > self._max_header_size:
            raise HTTPError(431, "a request header field is too large")
        if self._lines - 1 > self._max_headers:
            raise HTTPError(431, "too many request header fields")
        if end - rl_end - 2 > self._max_header_block:
            raise HTTPError(431, "the request header section is too large")

    def _start_request(self, head: bytes) -> None:
        """Check a complete head (request line + header lines + CRLF) and give it to llhttp."""
        rl_end = head.find(b"\r\n")
        if rl_end > self._max_request_line:
            raise HTTPError(414, "the request line is too long")
        block = len(head) - rl_end - 4  # the header field lines, with their CRLFs
        if block > self._max_header_block:
            raise HTTPError(431, "the request header section is too large")
        if head.count(b"\n") - 2 > self._max_headers:
            raise HTTPError(431, "too many request header fields")
        max_field = self._max_header_size
        if block > max_field and max(map(len, head[rl_end + 2 : -4].split(b"\r\n"))) > max_field:
            raise HTTPError(431, "a request header field is too large")
        match = _REQUEST_LINE.match(head)
        if match is None:
            raise _diagnose_request_line(head[:rl_end])
        method, target, version = match.groups()
        if method == b"CONNECT":
            raise HTTPError(501, "the CONNECT method is not supported")

        if target[0] == 47:  # b"/": origin-form, by far the most common
            if 35 in target:  # b"#"
                raise HTTPError(400, "a fragment (#) is not allowed in the request target")
            q = target.find(b"?")
            if q < 0:
                path, query = target, b""
            else:
                path, query = target[:q], target[q + 1 :]
        elif target == b"*":
            if method != b"OPTIONS":
                raise HTTPError(400, "the request target * is only allowed with OPTIONS")
            path, query = target, b""
        else:
            absolute = _ABSOLUTE_FORM.fullmatch(target)
            if absolute is None or 35 in target or 64 in absolute.group(1):  # b"#", b"@"
                raise HTTPError(400, "invalid request target")
            path = absolute.group(2) or b"/"
            query = absolute.group(3) or b""

        name = _LLHTTP_METHODS.get(method)
        if name is None:
            name = method.decode("ascii")
            llhead = b"GET" + head[len(method) :]
        else:
            llhead = head

        self._cur = Request(name, target, path, query, _VERSIONS[version])
        self._head = head
        self._hdr_start = rl_end + 2
        self._state = _IN_HEAD
        try:
            self._ll.feed_data(llhead)
        except HttpParserUpgrade:
            self._after_upgrade()
        except HttpParserError as exc:
            raise _error_from(exc) from None
        if self._state == _IN_HEAD:  # pragma: no cover - llhttp and this framing disagree
            raise HTTPError(400, "malformed request head")

    def _feed_chunked(self, data: bytes, view: memoryview, pos: int, n: int) -> int:
        """Decode chunked-body bytes from ``pos``; return where this step stopped.

        Chunk-size lines and chunk data are decoded here (llhttp refuses the whitespace RFC 9112
        allows around chunk extensions); the last chunk and the trailer section go to llhttp,
        which validates the trailer fields and ends the message.
        """
        phase = self._chunk
        if phase == _CK_SIZE and not self._buf:
            # Fast path: whole chunks (size line, data, CRLF) already in ``data``; anything else
            # (a partial or malformed line, the last chunk) is left to the steps below.
            match_line = _CHUNK_LINE.match
            limit = self._max_header_block
            request = self._cur
            assert request is not None  # the head is parsed: _CHUNKED has a current request
            body = request.body
            received = request.body_received
            while (size_line := match_line(data, pos)) is not None:
                start = size_line.end()
                digits = size_line.group(1)
                if start - pos > limit or len(digits) > 16:
                    break
                stop = start + int(digits, 16)
                if stop == start or stop + 2 > n:
                    break
                if data[stop] != 13 or data[stop + 1] != 10:
                    raise HTTPError(400, "chunk data is not followed by CRLF")
                body += view[start:stop]
                received += stop - start
                pos = stop + 2
            request.body_received = received
            if self._max_body is not None and received > self._max_body:
                raise HTTPError(413, "the request body is too large")
            if pos >= n:
                return pos
        if phase == _CK_DATA:
            take = min(self._remaining, n - pos)
            self._remaining -= take
            if not self._remaining:
                self._chunk = _CK_CRLF
                self._remaining = 2
            self._on_body(view[pos : pos + take])
            return pos + take
        if phase == _CK_CRLF:
            while pos < n and self._remaining:
                if data[pos] != (13 if self._remaining == 2 else 10):
                    raise HTTPError(400, "chunk data is not followed by CRLF")
                self._remaining -= 1
                pos += 1
            if not self._remaining:
                self._chunk = _CK_SIZE
            return pos
        if phase == _CK_SIZE:
            buf = self._buf
            nl = data.find(b"\n", pos)
            if nl < 0:
                buf += data[pos:]
                if len(buf) > self._max_header_block:
                    raise HTTPError(431, "a chunk-size line is too large")
                return n
            end = nl + 1
            line = bytes(buf) + data[pos:end] if buf else data[pos:end]
            self._buf = bytearray()
            if len(line) > self._max_header_block:
                raise HTTPError(431, "a chunk-size line is too large")
            match = _CHUNK_LINE.fullmatch(line)
            if match is None:
                if line[-2:] != b"\r\n":
                    raise HTTPError(400, "bare LF in chunk framing (only CRLF ends a line)")
                raise HTTPError(400, "malformed chunk-size line")
            digits = match.group(1).lstrip(b"0")
            if len(digits) > 16 or (digits and int(digits, 16) > _MAX_CONTENT_LENGTH):
                raise HTTPError(400, "chunk size out of range")
            if digits:
                self._chunk = _CK_DATA
                self._remaining = int(digits, 16)
            else:
                # The last chunk (its extensions dropped): llhttp parses the trailer section.
                self._chunk = _CK_TRAILER
                self._tail = b"0\r\n"
                self._run = 0
                self._ll_feed(b"0\r\n")
            return end
        # _CK_TRAILER: give llhttp the trailer section up to the next CRLFCRLF (where it may end).
        tail = self._tail
        end = (tail + data[pos : pos + 3]).find(b"\r\n\r\n")
        if end >= 0:
            end += pos + 4 - len(tail)
        else:
            end = data.find(b"\r\n\r\n", pos)
            end = n if end < 0 else end + 4
        if end - pos > self._max_header_block:  # bounds the error of the run count below
            end = pos + self._max_header_block
        self._ll_feed(view[pos:end])
        if self._state == _CHUNKED:
            self._tail = (tail + data[pos:end])[-3:] if end - pos < 3 else data[end - 3 : end]
            # Counted per piece, so a trailer section is refused at most 2 * max_header_block long.
            self._run += end - pos
            if self._run > self._max_header_block:
                raise HTTPError(431, "the chunked body's trailer section is too large")
        return end

    def _start_chunked(self) -> None:
        self._state = _CHUNKED
        self._chunk = _CK_SIZE
        self._buf = bytearray()
        self._run = 0
        self._tail = b""

    def _ll_feed(self, data: bytes | memoryview) -> None:
        """Give llhttp body bytes."""
        try:
            self._ll.feed_data(data)
        except HttpParserUpgrade:  # pragma: no cover - only a head can upgrade
            raise HTTPError(400, "malformed request") from None
        except HttpParserError as exc:
            raise _error_from(exc) from None

    def _after_upgrade(self) -> None:
        """llhttp stopped after a head with ``Upgrade`` + ``Connection: upgrade``.

        This server does not upgrade: the request is an ordinary one. llhttp has treated it as
        bodiless; if it declared a body, a fresh llhttp parser is put into the body state by a
        synthetic head, and the body is read as usual.
        """
        request = self.requests[-1] if self.requests else None
        self._ll = httptools.HttpRequestParser(self._proto)
        if request is None or not request.complete or request.body_received:  # pragma: no cover
            raise HTTPError(400, "malformed request head")
        if request.chunked:
            synthetic = b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            state = _CHUNKED
            self._start_chunked()
        elif request.content_length:
            synthetic = b"PUT / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % request.content_length
            state = _BODY
            self._remaining = request.content_length
        else:
            return
        request.complete = False
        self._state = _SYNTHETIC
        self._ll.feed_data(synthetic)
        self._cur = request
        self._state = state

    # -- llhttp callbacks ----------------------------------------------------------------------

    def _on_headers_complete(self) -> None:
        if self._state != _IN_HEAD:
            if self._state == _SYNTHETIC:
                return
            raise HTTPError(400, "malformed request")  # pragma: no cover - framing desync
        request = self._cur
        head = self._head
        start = self._hdr_start
        headers = _FIELD_LINE.findall(head, start, len(head) - 2)
        if head.find(b" \r\n", start) >= 0 or head.find(b"\t\r\n", start) >= 0:
            headers = [(name, value.rstrip(b" \t")) for name, value in headers]
        request.headers = headers

        hosts = 0
        host = b""
        length: bytes | None = None
        codings: list[bytes] | None = None
        close = keep = False
        singles = 0
        for name, value in headers:
            kind = _KIND.get(name)
            if kind is None:
                kind = _SPECIAL.get(name.lower())
            if not kind:
                continue
            if kind >= _SINGLE_H:
                bit = 1 << kind
                if singles & bit:
                    raise HTTPError(400, f"more than one {_SINGLE_NAMES[kind]} header")
                singles |= bit
            elif kind == _HOST_H:
                hosts += 1
                host = value
            elif kind == _CL_H:
                if length is not None:
                    raise HTTPError(400, "more than one Content-Length")
                length = value
            elif kind == _TE_H:
                if codings is None:
                    codings = []
                codings.extend(value.split(b","))
            elif kind == _CONN_H:
                value = value.lower()
                if value == b"keep-alive":
                    keep = True
                elif value == b"close":
                    close = True
                else:
                    for token in value.split(b","):
                        token = token.strip(b" \t")
                        if token == b"close":
                            close = True
                        elif token == b"keep-alive":
                            keep = True
            elif value.lower() == b"100-continue" and request.version == "1.1":
                request.expect_continue = True

        if hosts != 1:
            if hosts > 1:
                raise HTTPError(400, "more than one Host header")
            if request.version == "1.1":
                raise HTTPError(400, "an HTTP/1.1 request needs a Host header")
        elif host and _HOST.fullmatch(host) is None:
            raise HTTPError(400, "invalid Host header")

        if close:
            request.keep_alive = False
        elif request.version == "1.0":
            request.keep_alive = keep

        if codings is not None:
            if length is not None:
                raise HTTPError(400, "both Content-Length and Transfer-Encoding")
            if request.version == "1.0":
                raise HTTPError(400, "Transfer-Encoding is not allowed in an HTTP/1.0 request")
            names = [name for c in codings if (name := c.strip(b" \t").lower())]
            if not names or names[-1] != b"chunked":
                raise HTTPError(400, "the final transfer coding is not chunked")
            if len(names) > 1:
                if b"chunked" in names[:-1]:
                    raise HTTPError(400, "chunked is applied more than once")
                raise HTTPError(501, "transfer codings other than chunked are not supported")
            request.chunked = True
            self._start_chunked()
        elif length is not None:
            if not length.isdigit():
                raise HTTPError(400, "invalid Content-Length")
            size = int(length)
            if size > _MAX_CONTENT_LENGTH:
                raise HTTPError(400, "Content-Length out of range")
            if self._max_body is not None and size > self._max_body:
                raise HTTPError(413, "the request body is too large")
            request.content_length = size
            if size:
                self._remaining = size
                self._state = _BODY
            else:
                self._state = _HEAD
        else:
            self._state = _HEAD
        self.requests.append(request)

    def _on_body(self, data: bytes | memoryview) -> None:
        request = self._cur
        request.body += data
        request.body_received += len(data)
        if self._max_body is not None and request.body_received > self._max_body:
            raise HTTPError(413, "the request body is too large")

    def _on_message_complete(self) -> None:
        request = self._cur
        if request is None:  # pragma: no cover - llhttp and this framing disagree
            raise HTTPError(400, "malformed request")
        request.complete = True
        self._cur = None
        self._state = _HEAD if request.keep_alive else _CLOSED


def _diagnose_request_line(line: bytes) -> HTTPError:
    """Say what is wrong with a request line the fast regex did not accept."""
    parts = line.split(b" ")
    if len(parts) != 3 or not all(parts):
        return HTTPError(400, "malformed request line")
    method, target, version = parts
    if _TOKEN.fullmatch(method) is None:
        return HTTPError(400, "invalid request method")
    if _TARGET.fullmatch(target) is None:
        return HTTPError(400, "invalid request target")
    if _VERSION.fullmatch(version) is None:
        return HTTPError(400, "malformed HTTP version")
    return HTTPError(505, "HTTP version not supported")


def _error_from(exc: HttpParserError) -> HTTPError:
    """The HTTPError for an httptools error: ours if a callback raised it, else a 400."""
    cause = exc.__context__
    if isinstance(cause, HTTPError):
        return cause
    # llhttp's reasons are fixed ASCII strings; be careful anyway, they go into a response.
    text = str(exc.args[0]) if exc.args else ""
    if not text or not text.isascii() or not text.isprintable() or len(text) > 100:
        return HTTPError(400, "malformed request")
    return HTTPError(400, "malformed request: " + text)
