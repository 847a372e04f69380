"""Sans-IO HTTP/1.1 request parser: bytes in, :class:`Request` objects out.

The parser wraps llhttp (through ``httptools.HttpRequestParser``) and adds what llhttp does not
do: size limits enforced while a head is still arriving, request-line rules, ``Host`` rules,
transfer-coding rules, body size limits, and one status code per kind of violation
(:class:`~gearshift.http.errors.HTTPError`). No httptools exception ever escapes.

How the work is split
---------------------
* **llhttp parses the header section.** Each head's bytes are given to llhttp as they arrive;
  llhttp validates the field syntax (token names, no whitespace before the colon, no CTLs, no
  obs-fold, CRLF only) and the syntax of ``Content-Length``/``Transfer-Encoding``, and reports
  each field to a :class:`_HeadFields`, which notes the fields the rules below concern; the
  parser enforces those rules once llhttp has taken the whole head (``_head_complete``).
* **The request line is parsed here**, with one regex, before llhttp sees it: llhttp knows a
  fixed list of methods only (any token is a method here; llhttp is shown ``GET`` in place of
  one it does not know, which does not change how a request is framed), and it reports an
  unsupported version as a syntax error where RFC 9110 wants a 505.
* **One framing step: the end of each head is found here**, and llhttp is given exactly the
  head's bytes. The size limits need line positions: llhttp's callbacks carry none, and
  httptools buffers an unfinished field line without any callback, so an endless line could not
  be refused by a callback before it ends. Each byte of a head is examined once here (line
  ends, sizes), on a head that arrives whole as on one that arrives byte by byte.
* **Bodies are decoded here, never by llhttp.** A ``Content-Length`` body is counted. Chunked
  framing is decoded here because llhttp refuses the whitespace RFC 9112 §7.1.1 allows around
  chunk extensions (its ``lenient_spaces_after_chunk_size`` allows the whitespace before ``;``
  only, none after it nor around ``=``), and its trailer fields are checked here with the
  field-line grammar. No llhttp leniency is enabled. A head that declares a body leaves llhttp
  waiting for a body it will never see, so the next head goes to a fresh llhttp. llhttp also
  stops after the head of an ``Upgrade`` request, which is where it stops anyway: ``Upgrade``
  needs nothing special.

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
  are delivered as such, and the application answers 405/501 itself.
* **Chunk extensions** are accepted and ignored, with BWS around ``;`` and ``=`` and
  quoted-string values (RFC 9112 §7.1.1); a chunk-size line outside that grammar (including
  trailing whitespace or an empty value) is a 400, and one longer than ``max_header_block`` a
  431. Trailer fields follow the header field grammar; they are checked and dropped.
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
from typing import Final

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
#: field-line CRLF (RFC 9112 §5), as llhttp accepts it in a head: token ":" then SP, HTAB,
#: visible ASCII or obs-text. Used for trailer fields, which llhttp never sees.
_FIELD_LINE = re.compile(rb"[%s]+:[\t\x20-\x7e\x80-\xff]*\r\n" % _TCHAR)
#: Fields that frame a message, so a trailer section must not hold them (RFC 9110 §6.5.1).
_FRAMING_FIELDS = frozenset((b"content-length", b"transfer-encoding"))
_CRLFS = re.compile(rb"(?:\r\n)+")
_TCHAR_BYTES = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")

#: The methods llhttp parses (with their str, for Request.method); it is shown ``GET`` in
#: place of any other token.
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
# The fields the parser acts on, by kind; 0 is any other field.
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
#: _SPECIAL plus the usual spellings of common field names: a field name is looked up as
#: received first, and lowered only when it is not found (``name.lower()`` for every field of a
#: browser's request would cost more than the lookup).
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
_DEFAULT_LIMITS = ProtocolLimits()

_QUOTED_STRING = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
#: chunk-size [ chunk-ext ] CRLF, chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS value ] ),
#: value = token / quoted-string (RFC 9112 §7.1.1).
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]+)(?:[ \t]*;[ \t]*[%s]+(?:[ \t]*=[ \t]*(?:[%s]+|%s))?)*\r\n" % (_TCHAR, _TCHAR, _QUOTED_STRING)
)


class _State:
    """What the parser expects next.

    Plain constants, not an ``enum.Enum``: the state is read and set several times per request,
    and reading an Enum member costs several times what reading a class attribute does.
    """

    REQUEST_LINE: Final = "request line"  # or the empty lines allowed before one; a partial line is in _buf
    HEADERS: Final = "header section"  # given to llhttp as it arrives
    BODY: Final = "Content-Length body"  # _remaining bytes still due
    CHUNK_SIZE: Final = "chunk-size line"  # a partial line is in _buf
    CHUNK_DATA: Final = "chunk data"  # _remaining bytes still due
    CHUNK_END: Final = "CRLF after chunk data"  # _remaining (2 or 1) bytes of it still due
    TRAILERS: Final = "trailer section"  # a partial line is in _buf
    CLOSED: Final = "closed"  # after a request that ends the connection, or after EOF: bytes are ignored
    DEAD: Final = "dead"  # after an HTTPError, which every call raises again


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


class _HeadFields:
    """What llhttp reports while it parses a head: its fields.

    llhttp calls back into this object, never into the parser: the parser holds llhttp and
    llhttp holds this, so nothing refers back to the parser, and a closed connection's parser is
    freed at once by reference counting instead of waiting, with everything it holds, for the
    cyclic garbage collector (one such cycle per connection: one per request, with
    ``Connection: close``).
    """

    __slots__ = ("headers", "special")

    # httptools looks the callbacks up by name, once per llhttp parser: the unused ones are
    # None, so that each look-up finds an attribute. The end of the head needs no callback:
    # llhttp is given exactly the head's bytes, and takes them all only if the head is whole
    # and valid (it raises otherwise).
    on_message_begin = on_url = on_headers_complete = on_body = on_message_complete = None
    on_chunk_header = on_chunk_complete = None

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.headers = headers  # the request's
        self.special: list[tuple[int, bytes]] = []  # (kind, value) of the head's fields in _SPECIAL

    def on_header(self, name: bytes, value: bytes) -> None:
        value = value.rstrip(b" \t")  # llhttp strips the whitespace before a value, not after it
        self.headers.append((name, value))
        kind = _KIND.get(name)
        if kind is None:
            kind = _SPECIAL.get(name.lower())
        if kind:
            self.special.append((kind, value))


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
        "_fields_seen",
        "_ll",
        "_state",
        "_error",
        "refused_head",
        "_request",
        "_buf",
        "_tail",
        "_line",
        "_fields",
        "_block",
        "_remaining",
    )

    def __init__(self, limits: ProtocolLimits = _DEFAULT_LIMITS) -> None:
        self.requests: deque[Request] = deque()
        self._limits = limits
        self._max_request_line = limits.max_request_line
        self._max_header_size = limits.max_header_size
        self._max_headers = limits.max_headers
        self._max_header_block = limits.max_header_block
        self._max_body = limits.max_body_size
        # The request whose head or body is being parsed, or the last one (before the first
        # request line: a placeholder that is never delivered).
        self._request = Request("", b"", b"", b"", "1.1")
        self._fields_seen = _HeadFields(self._request.headers)
        self._ll = httptools.HttpRequestParser(self._fields_seen)
        self._state: str = _State.REQUEST_LINE
        self._error: HTTPError | None = None
        #: After an error: the start of the request refused (its request line), for the access log.
        self.refused_head: bytes | None = None
        self._buf = bytearray()  # a partial request line, chunk-size line or trailer line
        self._tail = b""  # the last (up to 3) bytes of the head so far, to find its end across feeds
        self._line = 0  # bytes of the unfinished header line so far
        self._fields = 0  # header field lines so far
        self._block = 0  # header (or trailer) section bytes so far
        self._remaining = 0  # body, chunk data or CRLF bytes still due

    # -- public API ----------------------------------------------------------------------------

    @property
    def limits(self) -> ProtocolLimits:
        return self._limits

    @property
    def idle(self) -> bool:
        """True when no part of a request is buffered or being received (between requests)."""
        state = self._state
        return (state is _State.REQUEST_LINE and not self._buf) or state is _State.CLOSED

    def feed(self, data: bytes) -> None:
        """Parse ``data``; may complete several pipelined requests. Raises :class:`HTTPError`."""
        if self._error is not None:
            raise self._error
        if type(data) is not bytes:
            data = bytes(data)
        pos = 0
        n = len(data)
        try:
            while pos < n:
                state = self._state
                if state is _State.REQUEST_LINE:
                    pos = self._feed_request_line(data, pos, n)
                elif state is _State.BODY:
                    pos = self._feed_body(data, pos, n)
                elif state is _State.HEADERS:
                    pos = self._feed_headers(data, pos, pos, n)
                elif state is _State.CHUNK_SIZE:
                    pos = self._feed_chunk_size(data, pos, n)
                elif state is _State.CHUNK_DATA:
                    pos = self._feed_chunk_data(data, pos, n)
                elif state is _State.CHUNK_END:
                    pos = self._feed_chunk_end(data, pos, n)
                elif state is _State.TRAILERS:
                    pos = self._feed_trailers(data, pos, n)
                else:  # CLOSED: the connection ends after the last request; ignore the rest
                    return
        except HTTPError as exc:
            self._error = exc
            self.refused_head = self._received(data, pos)
            self._state = _State.DEAD
            self._buf = bytearray()
            raise

    def _received(self, data: bytes, pos: int) -> bytes:
        """The start of the request refused with an error at ``data[pos:]``: the request line
        as received if that line was refused (what the access log shows), else the parsed one."""
        if self._state is _State.REQUEST_LINE:
            # Without a line end after ``pos``, what arrived is all in the buffer already.
            head = bytes(self._buf[:1024])
            return head if data.find(b"\n", pos) < 0 else head + data[pos : pos + 1024]
        request = self._request
        return f"{request.method} ".encode("latin-1") + request.target + f" HTTP/{request.version}".encode()

    def feed_eof(self) -> None:
        """The peer closed its side. Raises ``HTTPError(400)`` if a request was cut short.

        Between requests it does nothing, and any bytes fed afterwards are ignored.
        """
        if self._error is not None:
            raise self._error
        state = self._state
        if state is _State.CLOSED or (state is _State.REQUEST_LINE and not self._buf):
            self._state = _State.CLOSED
            return
        if state is _State.REQUEST_LINE or state is _State.HEADERS:
            self._error = HTTPError(400, "the connection closed in the middle of a request head")
        else:
            self._error = HTTPError(400, "the connection closed before the request body was complete")
        self._state = _State.DEAD
        raise self._error

    # -- heads ---------------------------------------------------------------------------------

    def _feed_request_line(self, data: bytes, pos: int, n: int) -> int:
        """Take a request line (or skip empty lines); return where this step stopped."""
        buf = self._buf
        if not buf and data[pos] == 13:  # empty lines before a request line are ignored (RFC 9112 §2.2)
            match = _CRLFS.match(data, pos)
            if match is not None:
                return match.end()
        end = data.find(b"\n", pos) + 1
        if not end:
            buf += data[pos:]
            if buf[0] not in _TCHAR_BYTES and buf != b"\r":  # a lone CR may start an empty line
                raise HTTPError(400, "malformed request line")  # e.g. a TLS handshake
            if len(buf) - (buf[-1] == 13) > self._max_request_line:  # a final CR waits for its LF
                raise HTTPError(414, "the request line is too long")
            return n
        if not buf:
            skip = self._start_request(data, pos, end)
            return self._feed_headers(data, pos + skip, end, n)
        line = bytes(buf) + data[pos:end]
        if line != b"\r\n":
            skip = self._start_request(line, 0, len(line))
            self._buf = bytearray()  # only now: a refused line is still there for refused_head
            self._ll_feed(line[skip:])
        else:
            self._buf = bytearray()
        return end

    def _start_request(self, line: bytes, start: int, end: int) -> int:
        """Check the request line ``line[start:end]`` (CRLF included) and start its request.

        Returns how many bytes of the method llhttp must not be given (it has been given ``GET``
        in their place), so that llhttp is given the line from ``start`` plus that number.
        """
        if end - start - 2 > self._max_request_line:
            raise HTTPError(414, "the request line is too long")
        match = _REQUEST_LINE.match(line, start)
        if match is None:
            raise _diagnose_request_line(line[start:end])
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
        skip = 0
        if name is None:
            name = method.decode("ascii")
            self._ll_feed(b"GET")
            skip = len(method)
        self._request = request = Request(name, target, path, query, _VERSIONS[version])
        fields = self._fields_seen
        fields.headers = request.headers
        fields.special = []
        self._tail = b"\r\n"
        self._line = self._fields = self._block = 0
        self._state = _State.HEADERS
        return skip

    def _feed_headers(self, data: bytes, ll_start: int, pos: int, n: int) -> int:
        """Take header-section bytes from ``pos``; llhttp is given ``data`` from ``ll_start``.

        Returns where the head ended, or ``n``.
        """
        tail = self._tail
        if ll_start < pos:  # the request line is in ``data``: its CRLF is the 2 bytes before pos
            end = data.find(b"\r\n\r\n", pos - 2)
            found = end >= 0
        else:
            end = (tail + data[pos : pos + 3]).find(b"\r\n\r\n")  # an end straddling two feeds
            found = end >= 0
            if found:
                end += pos - len(tail)  # maybe before pos: where the CRLFCRLF started, in the last feed
            else:
                end = data.find(b"\r\n\r\n", pos)
                found = end >= 0
        if not found:
            self._count_fields(data, pos, n)
            self._tail = data[n - 3 :] if n - pos >= 3 else (tail + data[pos:])[-3:]
            self._ll_feed(data if ll_start == 0 else data[ll_start:])
            return n
        self._count_fields(data, pos, end + 2)  # the empty line ending the head is not counted
        stop = end + 4
        self._ll_feed(data if ll_start == 0 and stop == n else data[ll_start:stop])
        self._head_complete()
        return stop

    def _count_fields(self, data: bytes, pos: int, stop: int) -> None:
        """Check the header-section bytes ``data[pos:stop]`` against the limits."""
        if stop <= pos:
            return
        lines = data.count(b"\n", pos, stop)
        if lines:
            self._fields += lines
            if self._fields > self._max_headers:
                raise HTTPError(431, "too many request header fields")
            last = data.rfind(b"\n", pos, stop)
            # Lines are measured without CRLF; the first one began ``self._line`` bytes before pos.
            if self._line + last - pos - 1 > self._max_header_size:  # then one of them may be too long
                lengths = [len(line) - 1 for line in data[pos:last].split(b"\n")]
                lengths[0] += self._line
                if max(lengths) > self._max_header_size:
                    raise HTTPError(431, "a request header field is too large")
            line = stop - last - 1
        else:
            line = self._line + stop - pos
        cr = data[stop - 1] == 13  # a final CR waits for its LF, and is not counted yet
        if line - cr > self._max_header_size:
            raise HTTPError(431, "a request header field is too large")
        self._line = line
        self._block += stop - pos
        if self._block - cr > self._max_header_block:
            raise HTTPError(431, "the request header section is too large")

    def _ll_feed(self, data: bytes) -> None:
        """Give llhttp bytes of a head."""
        try:
            self._ll.feed_data(data)
        except HttpParserUpgrade:
            # llhttp ends the message after the head of an Upgrade request, the rest being
            # another protocol. This server does not upgrade: the next head goes to a fresh llhttp.
            self._ll = httptools.HttpRequestParser(self._fields_seen)
        except HttpParserError as exc:
            raise _error_from(exc) from None

    def _head_complete(self) -> None:
        """llhttp has taken the whole head: apply the rules above its syntax, and start the body."""
        request = self._request
        hosts = 0
        host = b""
        length: bytes | None = None
        codings: list[bytes] | None = None
        close = keep = False
        singles = 0
        for kind, value in self._fields_seen.special:
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
            self._state = _State.CHUNK_SIZE
        elif length is not None:
            if not length.isdigit():
                raise HTTPError(400, "invalid Content-Length")
            size = int(length)
            if size > _MAX_CONTENT_LENGTH:
                raise HTTPError(400, "Content-Length out of range")
            if self._max_body is not None and size > self._max_body:
                raise HTTPError(413, "the request body is too large")
            request.content_length = size
            self._remaining = size
            self._state = _State.BODY
        self.requests.append(request)
        if self._remaining or request.chunked:
            # llhttp now waits for the body, which is decoded here: the next head goes to a fresh llhttp.
            self._ll = httptools.HttpRequestParser(self._fields_seen)
        else:
            self._end_message()

    def _end_message(self) -> None:
        self._request.complete = True
        self._state = _State.REQUEST_LINE if self._request.keep_alive else _State.CLOSED

    # -- bodies --------------------------------------------------------------------------------

    def _feed_body(self, data: bytes, pos: int, n: int) -> int:
        """Take Content-Length body bytes from ``pos``; return where this step stopped."""
        stop = min(pos + self._remaining, n)
        request = self._request
        request.body += data if pos == 0 and stop == n else data[pos:stop]
        request.body_received += stop - pos
        self._remaining -= stop - pos
        if not self._remaining:
            self._end_message()
        return stop

    def _feed_chunk_size(self, data: bytes, pos: int, n: int) -> int:
        """Take a chunk-size line, or, when nothing is buffered, as many whole chunks as ``data``
        holds; return where this step stopped."""
        buf = self._buf
        if not buf:
            # Whole chunks (size line, data, CRLF) in ``data``; anything else (a partial or
            # malformed line, the last chunk) is left to the line-by-line step below.
            match_line = _CHUNK_LINE.match
            limit = self._max_header_block
            request = self._request
            body = request.body
            received = request.body_received
            view = memoryview(data)
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
        end = data.find(b"\n", pos) + 1
        if not end:
            buf += data[pos:]
            if len(buf) > self._max_header_block:
                raise HTTPError(431, "a chunk-size line is too large")
            return n
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
            self._remaining = int(digits, 16)
            self._state = _State.CHUNK_DATA
        else:  # the last chunk
            self._block = 0
            self._state = _State.TRAILERS
        return end

    def _feed_chunk_data(self, data: bytes, pos: int, n: int) -> int:
        stop = min(pos + self._remaining, n)
        request = self._request
        request.body += data if pos == 0 and stop == n else data[pos:stop]
        request.body_received += stop - pos
        if self._max_body is not None and request.body_received > self._max_body:
            raise HTTPError(413, "the request body is too large")
        self._remaining -= stop - pos
        if not self._remaining:
            self._remaining = 2
            self._state = _State.CHUNK_END
        return stop

    def _feed_chunk_end(self, data: bytes, pos: int, n: int) -> int:
        while pos < n and self._remaining:
            if data[pos] != (13 if self._remaining == 2 else 10):
                raise HTTPError(400, "chunk data is not followed by CRLF")
            self._remaining -= 1
            pos += 1
        if not self._remaining:
            self._state = _State.CHUNK_SIZE
        return pos

    def _feed_trailers(self, data: bytes, pos: int, n: int) -> int:
        """Take a trailer field line, or the empty line ending the message."""
        buf = self._buf
        end = data.find(b"\n", pos) + 1
        if not end:
            buf += data[pos:]
            # A final CR waits for its LF: it may begin the empty line, which is not counted.
            if self._block + len(buf) - (buf[-1] == 13) > self._max_header_block:
                raise HTTPError(431, "the chunked body's trailer section is too large")
            return n
        line = bytes(buf) + data[pos:end] if buf else data[pos:end]
        self._buf = bytearray()
        if line == b"\r\n":
            self._end_message()
            return end
        self._block += len(line)
        if self._block > self._max_header_block:
            raise HTTPError(431, "the chunked body's trailer section is too large")
        if _FIELD_LINE.fullmatch(line) is None:
            raise HTTPError(400, "malformed trailer field")
        if line[: line.index(b":")].lower() in _FRAMING_FIELDS:
            raise HTTPError(400, "a framing field in the trailer section")
        return end


def _diagnose_request_line(line: bytes) -> HTTPError:
    """Say what is wrong with a request line the fast regex did not accept."""
    if line[-2:] != b"\r\n":
        return HTTPError(400, "bare LF in the request line (only CRLF ends a line)")
    parts = line[:-2].split(b" ")
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
    """The HTTPError for an llhttp error: a 400 (the callbacks, :class:`_HeadFields`'s, raise
    nothing of their own)."""
    # llhttp's reasons are fixed ASCII strings; be careful anyway, they go into a response.
    text = str(exc.args[0]) if exc.args else ""
    if not text or not text.isascii() or not text.isprintable() or len(text) > 100:
        return HTTPError(400, "malformed request")
    return HTTPError(400, "malformed request: " + text)
