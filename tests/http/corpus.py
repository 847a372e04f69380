"""Request corpus for the HTTP/1.1 parser, as plain data (no test-framework imports).

* :data:`MALFORMED` — requests the server must refuse, each with the status to refuse it with.
  ``raw`` is everything the client sends; some heads are deliberately never finished (the
  server must answer without waiting for the rest). ``limits``, when not ``None``, holds
  keyword arguments for :class:`gearshift.http.errors.ProtocolLimits` the case needs (the other
  cases use the defaults).
* :data:`VALID` — tricky requests that must be accepted, each exactly one request, with the
  method, path, query and body the application must see.
* :data:`VALID_PIPELINES` — several requests in one byte string, with the number of requests.

Used by tests/http/test_parser.py, and meant for socket-level tests too.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["MALFORMED", "VALID", "VALID_PIPELINES", "Case", "Pipeline", "Valid"]


class Case(NamedTuple):
    name: str
    raw: bytes
    status: int
    limits: dict[str, Any] | None = None


class Valid(NamedTuple):
    name: str
    raw: bytes
    method: str
    path: bytes
    query: bytes
    body: bytes


class Pipeline(NamedTuple):
    name: str
    raw: bytes
    count: int


H = b"Host: example.com"


def _get(line: bytes, *headers: bytes) -> bytes:
    """A request head from a request line and header lines (each given without CRLF)."""
    return line + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"


def _post(*headers: bytes) -> bytes:
    return _get(b"POST /upload HTTP/1.1", b"Host: example.com", *headers)


_CHUNKED = b"Transfer-Encoding: chunked"

MALFORMED: list[Case] = [
    # -- request line: method -------------------------------------------------------------------
    Case("method-bad-char", _get(b"GE(T / HTTP/1.1", b"Host: x"), 400),
    Case("method-empty", _get(b" / HTTP/1.1", b"Host: x"), 400),
    Case("method-non-ascii", _get(b"G\xc3\x89T / HTTP/1.1", b"Host: x"), 400),
    Case("method-with-slash", _get(b"GET/ / HTTP/1.1", b"Host: x"), 400),
    Case("request-line-double-space", _get(b"GET  / HTTP/1.1", b"Host: x"), 400),
    Case("request-line-tab-separator", _get(b"GET\t/ HTTP/1.1", b"Host: x"), 400),
    Case("request-line-leading-space", _get(b" GET / HTTP/1.1", b"Host: x"), 400),
    Case("request-line-trailing-space", _get(b"GET / HTTP/1.1 ", b"Host: x"), 400),
    Case("request-line-http09-style", b"GET /\r\n\r\n", 400),
    Case("request-line-only-method", b"GET\r\n\r\n", 400),
    Case("tls-client-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
    Case("binary-garbage", b"\x00\x01\x02\x03\r\n\r\n", 400),
    # -- request line: target -------------------------------------------------------------------
    Case("target-space", _get(b"GET /a b HTTP/1.1", b"Host: x"), 400),
    Case("target-ctl", _get(b"GET /a\x01b HTTP/1.1", b"Host: x"), 400),
    Case("target-del", _get(b"GET /a\x7f HTTP/1.1", b"Host: x"), 400),
    Case("target-non-ascii", _get(b"GET /caf\xc3\xa9 HTTP/1.1", b"Host: x"), 400),
    Case("target-nul", _get(b"GET /a\x00 HTTP/1.1", b"Host: x"), 400),
    Case("target-relative", _get(b"GET index.html HTTP/1.1", b"Host: x"), 400),
    Case("target-query-only", _get(b"GET ?a=b HTTP/1.1", b"Host: x"), 400),
    Case("target-star-not-options", _get(b"GET * HTTP/1.1", b"Host: x"), 400),
    Case("target-fragment", _get(b"GET /a#frag HTTP/1.1", b"Host: x"), 400),
    Case("target-absolute-bad-scheme", _get(b"GET ftp://x/a HTTP/1.1", b"Host: x"), 400),
    Case("target-absolute-empty-authority", _get(b"GET http:///a HTTP/1.1", b"Host: x"), 400),
    Case("target-absolute-userinfo", _get(b"GET http://user@x/a HTTP/1.1", b"Host: x"), 400),
    Case("target-authority-form", _get(b"GET x:80 HTTP/1.1", b"Host: x"), 400),
    # -- request line: version ------------------------------------------------------------------
    Case("version-lowercase", _get(b"GET / http/1.1", b"Host: x"), 400),
    Case("version-garbage", _get(b"GET / HTTP/1.x", b"Host: x"), 400),
    Case("version-two-digit-major", _get(b"GET / HTTP/11.1", b"Host: x"), 400),
    Case("version-missing-minor", _get(b"GET / HTTP/1", b"Host: x"), 400),
    Case("version-no-slash", _get(b"GET / HTTP1.1", b"Host: x"), 400),
    Case("version-2.0", _get(b"GET / HTTP/2.0", b"Host: x"), 505),
    Case("version-0.9", _get(b"GET / HTTP/0.9", b"Host: x"), 505),
    Case("version-1.2", _get(b"GET / HTTP/1.2", b"Host: x"), 505),
    Case("version-3.0", _get(b"GET / HTTP/3.0", b"Host: x"), 505),
    Case("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    # -- request line: size, CONNECT ------------------------------------------------------------
    Case("request-line-too-long", _get(b"GET /" + b"a" * 8200 + b" HTTP/1.1", b"Host: x"), 414),
    Case("request-line-too-long-unfinished", b"GET /" + b"a" * 9000, 414),
    Case("connect", _get(b"CONNECT example.com:443 HTTP/1.1", b"Host: example.com:443"), 501),
    # -- line endings ---------------------------------------------------------------------------
    Case("bare-lf-everywhere", b"GET / HTTP/1.1\nHost: x\n\n", 400),
    Case("bare-lf-after-header", b"GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n", 400),
    Case("bare-lf-ends-head", b"GET / HTTP/1.1\r\nHost: x\r\n\n", 400),
    Case("bare-cr-after-request-line", b"GET / HTTP/1.1\rHost: x\r\n\r\n", 400),
    Case("bare-cr-in-header", b"GET / HTTP/1.1\r\nHost: x\rX: y\r\n\r\n", 400),
    Case("bare-cr-in-value", b"GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n", 400),
    # -- header fields --------------------------------------------------------------------------
    Case("header-space-before-colon", _get(b"GET / HTTP/1.1", b"Host : x"), 400),
    Case("header-tab-before-colon", _get(b"GET / HTTP/1.1", b"Host: x", b"X\t: y"), 400),
    Case("header-empty-name", _get(b"GET / HTTP/1.1", b"Host: x", b": y"), 400),
    Case("header-name-bad-char", _get(b"GET / HTTP/1.1", b"Host: x", b"X(y): z"), 400),
    Case("header-name-non-ascii", _get(b"GET / HTTP/1.1", b"Host: x", b"\xc3\xa9: z"), 400),
    Case("header-no-colon", _get(b"GET / HTTP/1.1", b"Host: x", b"X-Thing"), 400),
    Case("header-value-nul", _get(b"GET / HTTP/1.1", b"Host: x", b"X: a\x00b"), 400),
    Case("header-value-ctl", _get(b"GET / HTTP/1.1", b"Host: x", b"X: a\x01b"), 400),
    Case("header-value-esc", _get(b"GET / HTTP/1.1", b"Host: x", b"X: a\x1bb"), 400),
    Case("header-value-vt", _get(b"GET / HTTP/1.1", b"Host: x", b"X: a\x0bb"), 400),
    Case("header-value-del", _get(b"GET / HTTP/1.1", b"Host: x", b"X: a\x7fb"), 400),
    Case("obs-fold-space", _get(b"GET / HTTP/1.1", b"Host: x", b"X: a", b" b"), 400),
    Case("obs-fold-tab", _get(b"GET / HTTP/1.1", b"Host: x", b"X: a", b"\tb"), 400),
    Case("first-header-leading-space", _get(b"GET / HTTP/1.1", b" Host: x"), 400),
    Case("first-header-leading-tab", _get(b"GET / HTTP/1.1", b"\tHost: x"), 400),
    Case("header-line-too-large", _get(b"GET / HTTP/1.1", b"Host: x", b"X: " + b"a" * 8188), 431),
    Case("header-line-too-large-unfinished", b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 9000, 431),
    Case("too-many-headers", _get(b"GET / HTTP/1.1", b"Host: x", *[b"X-%d: y" % i for i in range(100)]), 431),
    Case(
        "too-many-headers-unfinished",
        b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(102)),
        431,
    ),
    Case(
        "header-block-too-large",
        _get(b"GET / HTTP/1.1", b"Host: x", *[b"X-%d: " % i + b"a" * 8000 for i in range(9)]),
        431,
    ),
    # -- Host -----------------------------------------------------------------------------------
    Case("host-missing-http11", _get(b"GET / HTTP/1.1", b"X: y"), 400),
    Case("host-twice", _get(b"GET / HTTP/1.1", b"Host: a", b"Host: a"), 400),
    Case("host-twice-http10", _get(b"GET / HTTP/1.0", b"Host: a", b"host: b"), 400),
    # -- singleton fields (RFC 9110 §5.3: not a list, so only one line) --------------------------
    Case("content-type-twice",
         _post(b"Content-Type: text/plain", b"Content-Length: 2", b"content-type: text/html") + b"hi", 400),
    Case("content-type-twice-same", _post(b"Content-Type: a/b", b"Content-Type: a/b", b"Content-Length: 0"), 400),
    Case("authorization-twice",
         _get(b"GET / HTTP/1.1", H, b"Authorization: Basic YTpi", b"AUTHORIZATION: Basic Yzpk"), 400),
    Case("range-twice", _get(b"GET / HTTP/1.1", H, b"Range: bytes=0-1", b"Range: bytes=5-6"), 400),
    Case("user-agent-twice", _get(b"GET / HTTP/1.1", H, b"User-Agent: a", b"X: y", b"User-Agent: b"), 400),
    Case("if-modified-since-twice", _get(b"GET / HTTP/1.1", H, b"If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT",
                                         b"If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT"), 400),
    Case("host-with-space", _get(b"GET / HTTP/1.1", b"Host: a b"), 400),
    Case("host-with-path", _get(b"GET / HTTP/1.1", b"Host: a/b"), 400),
    Case("host-with-userinfo", _get(b"GET / HTTP/1.1", b"Host: u@a"), 400),
    Case("host-bad-port", _get(b"GET / HTTP/1.1", b"Host: a:8o"), 400),
    # -- Content-Length -------------------------------------------------------------------------
    Case("cl-negative", _post(b"Content-Length: -1"), 400),
    Case("cl-plus-sign", _post(b"Content-Length: +1") + b"a", 400),
    Case("cl-hex", _post(b"Content-Length: 0x10"), 400),
    Case("cl-empty", _post(b"Content-Length:"), 400),
    Case("cl-space-inside", _post(b"Content-Length: 1 0"), 400),
    Case("cl-underscore", _post(b"Content-Length: 1_0"), 400),
    Case("cl-decimal-point", _post(b"Content-Length: 1.5"), 400),
    Case("cl-non-ascii-digit", _post(b"Content-Length: \xd9\xa1"), 400),
    Case("cl-list-identical", _post(b"Content-Length: 3, 3") + b"abc", 400),
    Case("cl-list-different", _post(b"Content-Length: 3, 4") + b"abc", 400),
    Case("cl-repeated-identical", _post(b"Content-Length: 3", b"Content-Length: 3") + b"abc", 400),
    Case("cl-repeated-different", _post(b"Content-Length: 3", b"Content-Length: 4") + b"abc", 400),
    Case("cl-2-63", _post(b"Content-Length: 9223372036854775808"), 400),
    Case("cl-2-64", _post(b"Content-Length: 18446744073709551616"), 400),
    Case("cl-huge", _post(b"Content-Length: " + b"9" * 40), 400),
    Case("cl-over-limit", _post(b"Content-Length: 11"), 413, {"max_body_size": 10}),
    # -- Transfer-Encoding ----------------------------------------------------------------------
    Case("te-gzip-only", _post(b"Transfer-Encoding: gzip"), 400),
    Case("te-identity", _post(b"Transfer-Encoding: identity"), 400),
    Case("te-empty", _post(b"Transfer-Encoding:"), 400),
    Case("te-chunked-then-gzip", _post(b"Transfer-Encoding: chunked, gzip"), 400),
    Case("te-chunked-with-param", _post(b"Transfer-Encoding: chunked;q=1"), 400),
    Case("te-chunked-twice", _post(b"Transfer-Encoding: chunked, chunked") + b"0\r\n\r\n", 400),
    Case("te-chunked-two-lines", _post(_CHUNKED, _CHUNKED) + b"0\r\n\r\n", 400),
    Case("te-gzip-chunked", _post(b"Transfer-Encoding: gzip, chunked") + b"0\r\n\r\n", 501),
    Case("te-deflate-chunked", _post(b"Transfer-Encoding: deflate, chunked") + b"0\r\n\r\n", 501),
    Case("te-compress-chunked", _post(b"Transfer-Encoding: compress, chunked") + b"0\r\n\r\n", 501),
    Case("te-identity-chunked", _post(b"Transfer-Encoding: identity, chunked") + b"0\r\n\r\n", 501),
    Case("te-unknown-chunked", _post(b"Transfer-Encoding: x-custom, chunked") + b"0\r\n\r\n", 501),
    Case("te-gzip-line-chunked-line", _post(b"Transfer-Encoding: gzip", _CHUNKED) + b"0\r\n\r\n", 501),
    Case("te-http10", _get(b"POST / HTTP/1.0", _CHUNKED) + b"0\r\n\r\n", 400),
    Case("te-and-cl", _post(_CHUNKED, b"Content-Length: 5") + b"0\r\n\r\n", 400),
    Case("cl-and-te", _post(b"Content-Length: 5", _CHUNKED) + b"0\r\n\r\n", 400),
    # -- chunked framing ------------------------------------------------------------------------
    Case("chunk-size-not-hex", _post(_CHUNKED) + b"zz\r\nabc\r\n0\r\n\r\n", 400),
    Case("chunk-size-negative", _post(_CHUNKED) + b"-3\r\nabc\r\n0\r\n\r\n", 400),
    Case("chunk-size-0x-prefix", _post(_CHUNKED) + b"0x3\r\nabc\r\n0\r\n\r\n", 400),
    Case("chunk-size-overflow", _post(_CHUNKED) + b"1" + b"0" * 16 + b"\r\nabc\r\n0\r\n\r\n", 400),
    Case("chunk-size-empty", _post(_CHUNKED) + b"\r\nabc\r\n0\r\n\r\n", 400),
    Case("chunk-size-trailing-space", _post(_CHUNKED) + b"3 \r\nabc\r\n0\r\n\r\n", 400),
    Case("chunk-size-bare-lf", _post(_CHUNKED) + b"3\nabc\r\n0\r\n\r\n", 400),
    Case("chunk-data-too-long", _post(_CHUNKED) + b"3\r\nabcd\r\n0\r\n\r\n", 400),
    Case("chunk-data-no-crlf", _post(_CHUNKED) + b"3\r\nabc0\r\n\r\n", 400),
    Case("chunk-data-bare-lf", _post(_CHUNKED) + b"3\r\nabc\n0\r\n\r\n", 400),
    Case("chunk-ext-unterminated-quote", _post(_CHUNKED) + b'3;a="b\r\nabc\r\n0\r\n\r\n', 400),
    Case("chunk-ext-empty-name", _post(_CHUNKED) + b"3;\r\nabc\r\n0\r\n\r\n", 400),
    Case("chunk-ext-empty-value", _post(_CHUNKED) + b"3;a=\r\nabc\r\n0\r\n\r\n", 400),
    Case("chunk-ext-trailing-space", _post(_CHUNKED) + b"3;a=b \r\nabc\r\n0\r\n\r\n", 400),
    Case("chunk-ext-space-in-name", _post(_CHUNKED) + b"3;a b\r\nabc\r\n0\r\n\r\n", 400),
    Case("chunk-ext-ctl", _post(_CHUNKED) + b"3;a=b\x01\r\nabc\r\n0\r\n\r\n", 400),
    Case("chunk-ext-nul-in-quotes", _post(_CHUNKED) + b'3;a="\x00"\r\nabc\r\n0\r\n\r\n', 400),
    Case("chunk-ext-bare-cr", _post(_CHUNKED) + b"3;a\rb\r\nabc\r\n0\r\n\r\n", 400),
    Case("chunk-ext-bare-lf", _post(_CHUNKED) + b"3 ;a=b\nabc\r\n0\r\n\r\n", 400),
    Case("chunk-ext-before-size", _post(_CHUNKED) + b";a\r\nabc\r\n0\r\n\r\n", 400),
    Case("chunk-size-leading-space", _post(_CHUNKED) + b" 3\r\nabc\r\n0\r\n\r\n", 400),
    Case("last-chunk-ext-bare-lf", _post(_CHUNKED) + b"3\r\nabc\r\n0 ; x\n\r\n", 400),
    Case("last-chunk-bare-lf", _post(_CHUNKED) + b"3\r\nabc\r\n0\n\r\n", 400),
    Case("chunked-end-bare-lf", _post(_CHUNKED) + b"3\r\nabc\r\n0\r\n\n", 400),
    Case("trailer-bad-name", _post(_CHUNKED) + b"3\r\nabc\r\n0\r\nBad Name: v\r\n\r\n", 400),
    Case("trailer-obs-fold", _post(_CHUNKED) + b"3\r\nabc\r\n0\r\nT: v\r\n w\r\n\r\n", 400),
    Case("trailer-bare-lf", _post(_CHUNKED) + b"3\r\nabc\r\n0\r\nT: v\n\r\n", 400),
    Case("trailer-content-length", _post(_CHUNKED) + b"3\r\nabc\r\n0\r\nContent-Length: 3\r\n\r\n", 400),
    Case("trailer-transfer-encoding", _post(_CHUNKED) + b"3\r\nabc\r\n0\r\ntransfer-encoding: chunked\r\n\r\n", 400),
    Case("trailer-value-ctl", _post(_CHUNKED) + b"3\r\nabc\r\n0\r\nT: a\x01\r\n\r\n", 400),
    Case("chunked-over-limit", _post(_CHUNKED) + b"6\r\nabcdef\r\n5\r\nghijk\r\n0\r\n\r\n", 413, {"max_body_size": 10}),
    Case("trailer-section-too-large", _post(_CHUNKED) + b"3\r\nabc\r\n0\r\nT: " + b"a" * 140000, 431),
    # -- incomplete messages (the client closes: 400) --------------------------------------------
    Case("eof-in-body", _post(b"Content-Length: 10") + b"abc", 400),
    Case("eof-in-chunked-body", _post(_CHUNKED) + b"3\r\nabc\r\n", 400),
    Case("eof-in-head", b"GET / HTTP/1.1\r\nHost: x\r\n", 400),
]

VALID: list[Valid] = [
    Valid("query-percent", _get(b"GET /?a=b%20c HTTP/1.1", H), "GET", b"/", b"a=b%20c", b""),
    Valid("path-percent", _get(b"GET /a%20b/%2F?x HTTP/1.1", H), "GET", b"/a%20b/%2F", b"x", b""),
    Valid("empty-query", _get(b"GET /p? HTTP/1.1", H), "GET", b"/p", b"", b""),
    Valid("query-with-question-marks", _get(b"GET /p?a?b=/c HTTP/1.1", H), "GET", b"/p", b"a?b=/c", b""),
    Valid("absolute-form", _get(b"GET http://example.com/a/b?c=d HTTP/1.1", H), "GET", b"/a/b", b"c=d", b""),
    Valid("absolute-form-https-upper", _get(b"GET HTTPS://example.com:8443 HTTP/1.1", H), "GET", b"/", b"", b""),
    Valid("options-star", _get(b"OPTIONS * HTTP/1.1", H), "OPTIONS", b"*", b"", b""),
    Valid("unknown-method", _get(b"FROB /x HTTP/1.1", H), "FROB", b"/x", b"", b""),
    Valid("lowercase-method", _get(b"get /x HTTP/1.1", H), "get", b"/x", b"", b""),
    Valid("rtsp-method-name", _get(b"DESCRIBE /x HTTP/1.1", H), "DESCRIBE", b"/x", b"", b""),
    Valid("webdav-method", _get(b"PROPFIND /x HTTP/1.1", H, b"Depth: 1"), "PROPFIND", b"/x", b"", b""),
    Valid("unknown-method-with-body", _get(b"FROB /x HTTP/1.1", H, b"Content-Length: 2") + b"hi",
          "FROB", b"/x", b"", b"hi"),
    Valid("http10-no-host", _get(b"GET /old HTTP/1.0"), "GET", b"/old", b"", b""),
    Valid("http10-keep-alive", _get(b"GET / HTTP/1.0", b"Connection: Keep-Alive"), "GET", b"/", b"", b""),
    Valid("empty-host", _get(b"GET / HTTP/1.1", b"Host:"), "GET", b"/", b"", b""),
    Valid("host-ipv6-port", _get(b"GET / HTTP/1.1", b"Host: [::1]:8080"), "GET", b"/", b"", b""),
    Valid("host-lowercase-name", _get(b"GET / HTTP/1.1", b"host: example.com"), "GET", b"/", b"", b""),
    Valid("header-ows", _get(b"GET / HTTP/1.1", H, b"X-A:   spaced   ", b"X-B:\ttabbed\t"), "GET", b"/", b"", b""),
    Valid("header-empty-value", _get(b"GET / HTTP/1.1", H, b"X-Empty:", b"X-Blank:   "), "GET", b"/", b"", b""),
    Valid("header-obs-text", _get(b"GET / HTTP/1.1", H, b"X-Latin: caf\xe9"), "GET", b"/", b"", b""),
    Valid("header-repeated", _get(b"GET / HTTP/1.1", H, b"Accept: a", b"X: 1", b"accept: b"), "GET", b"/", b"", b""),
    Valid("list-fields-repeated", _get(b"GET / HTTP/1.1", H, b"Cookie: a=1", b"Cookie: b=2", b"Cache-Control: no-cache",
                                       b"Cache-Control: max-age=0", b"If-None-Match: \"a\"", b"If-None-Match: \"b\"",
                                       b"X-Forwarded-For: 1.2.3.4", b"X-Forwarded-For: 5.6.7.8"),
          "GET", b"/", b"", b""),
    Valid("singleton-fields-once-each", _get(b"GET / HTTP/1.1", H, b"Content-Type: text/plain", b"User-Agent: u",
                                             b"Authorization: Basic YTpi", b"Referer: http://r/", b"Range: bytes=0-1"),
          "GET", b"/", b"", b""),
    Valid("leading-empty-lines", b"\r\n\r\n" + _get(b"GET / HTTP/1.1", H), "GET", b"/", b"", b""),
    Valid("get-with-body", _get(b"GET / HTTP/1.1", H, b"Content-Length: 4") + b"body", "GET", b"/", b"", b"body"),
    Valid("content-length-zero", _post(b"Content-Length: 0"), "POST", b"/upload", b"", b""),
    Valid("content-length-leading-zeros", _post(b"Content-Length: 003") + b"abc", "POST", b"/upload", b"", b"abc"),
    Valid("body-looks-like-request", _post(b"Content-Length: 27") + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
          "POST", b"/upload", b"", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    Valid("expect-100-continue", _post(b"Expect: 100-Continue", b"Content-Length: 5") + b"hello",
          "POST", b"/upload", b"", b"hello"),
    Valid("chunked", _post(_CHUNKED) + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
          "POST", b"/upload", b"", b"hello world"),
    Valid("chunked-uppercase-te", _post(b"Transfer-Encoding: CHUNKED") + b"3\r\nabc\r\n0\r\n\r\n",
          "POST", b"/upload", b"", b"abc"),
    Valid("chunked-te-empty-list-element", _post(b"Transfer-Encoding: , chunked") + b"3\r\nabc\r\n0\r\n\r\n",
          "POST", b"/upload", b"", b"abc"),
    Valid("chunked-hex-sizes", _post(_CHUNKED) + b"A\r\n0123456789\r\n0a\r\nabcdefghij\r\n000\r\n\r\n",
          "POST", b"/upload", b"", b"0123456789abcdefghij"),
    Valid("chunked-extensions", _post(_CHUNKED) + b'3;name=value;q="a b"\r\nabc\r\n0;last\r\n\r\n',
          "POST", b"/upload", b"", b"abc"),
    Valid("chunked-extensions-bws", _post(_CHUNKED) + b"5; some; parameters=stuff\r\nhello\r\n"
          b"1 ;x\r\n \r\n5\t;x=y\r\nworld\r\n0 \t; last = \"q\\\"\\\\ \t\"\r\n\r\n",
          "POST", b"/upload", b"", b"hello world"),
    Valid("chunked-extensions-obs-text-quoted", _post(_CHUNKED) + b'3;q="caf\xe9"\r\nabc\r\n0\r\n\r\n',
          "POST", b"/upload", b"", b"abc"),
    Valid("chunked-trailers", _post(_CHUNKED, b"Trailer: X-Sum") + b"3\r\nabc\r\n0\r\nX-Sum: 1\r\nX-Other: 2\r\n\r\n",
          "POST", b"/upload", b"", b"abc"),
    Valid("chunked-data-contains-crlfcrlf", _post(_CHUNKED) + b"8\r\n" + b"\r\n" * 4 + b"\r\n0\r\n\r\n",
          "POST", b"/upload", b"", b"\r\n\r\n\r\n\r\n"),
    Valid("chunked-data-contains-last-chunk", _post(_CHUNKED) + b"5\r\n0\r\n\r\n\r\n0\r\n\r\n",
          "POST", b"/upload", b"", b"0\r\n\r\n"),
    Valid("chunked-empty", _post(_CHUNKED) + b"0\r\n\r\n", "POST", b"/upload", b"", b""),
    Valid("upgrade-ignored", _get(b"GET /ws HTTP/1.1", H, b"Connection: Upgrade", b"Upgrade: websocket"),
          "GET", b"/ws", b"", b""),
    Valid("upgrade-ignored-with-body",
          _post(b"Connection: upgrade", b"Upgrade: h2c", b"Content-Length: 3") + b"abc",
          "POST", b"/upload", b"", b"abc"),
    Valid("upgrade-ignored-chunked",
          _post(b"Connection: upgrade", b"Upgrade: h2c", _CHUNKED) + b"3\r\nabc\r\n0\r\n\r\n",
          "POST", b"/upload", b"", b"abc"),
    Valid("exactly-100-headers", _get(b"GET / HTTP/1.1", H, *[b"X-%d: y" % i for i in range(99)]),
          "GET", b"/", b"", b""),
    Valid("long-header-line-at-limit", _get(b"GET / HTTP/1.1", H, b"X: " + b"a" * 8187), "GET", b"/", b"", b""),
    Valid("long-request-line-at-limit", _get(b"GET /" + b"a" * 8176 + b" HTTP/1.1", H),
          "GET", b"/" + b"a" * 8176, b"", b""),
]

VALID_PIPELINES: list[Pipeline] = [
    Pipeline("three-gets", _get(b"GET /1 HTTP/1.1", H) + _get(b"GET /2 HTTP/1.1", H) + _get(b"GET /3 HTTP/1.1", H), 3),
    Pipeline(
        "post-chunked-get",
        _post(b"Content-Length: 3") + b"abc" + _post(_CHUNKED) + b"1\r\nx\r\n0\r\n\r\n" + _get(b"GET /3 HTTP/1.1", H),
        3,
    ),
    Pipeline("empty-lines-between", _get(b"GET /1 HTTP/1.1", H) + b"\r\n" + _get(b"GET /2 HTTP/1.1", H), 2),
]
