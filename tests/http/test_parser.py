"""Tests of the sans-IO request parser (gearshift.http.parser) and its limits/errors."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from corpus import MALFORMED, VALID, VALID_PIPELINES, Case, Valid
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gearshift.http.errors import HTTPError, ProtocolLimits
from gearshift.http.parser import SINGLETON_FIELDS, Request, RequestParser

# -- helpers -------------------------------------------------------------------------------------


def snapshot(request: Request) -> tuple[Any, ...]:
    return (
        request.method,
        request.target,
        request.path,
        request.query,
        request.version,
        list(request.headers),
        request.keep_alive,
        request.expect_continue,
        request.chunked,
        request.content_length,
        bytes(request.body),
        request.complete,
        request.body_received,
    )


def feed_chunks(parser: RequestParser, chunks: list[bytes]) -> list[Request]:
    """Feed ``chunks``, collecting requests the way a consumer does (popleft as they appear)."""
    seen: list[Request] = []
    for chunk in chunks:
        parser.feed(chunk)
        while parser.requests:
            seen.append(parser.requests.popleft())
    return seen


def outcome(raw: bytes, chunks: list[bytes] | None = None, limits: ProtocolLimits | None = None, eof: bool = True):
    """("ok", [snapshots]) or ("error", status, [snapshots of requests before the error])."""
    parser = RequestParser(limits or ProtocolLimits())
    seen: list[Request] = []
    try:
        for chunk in chunks if chunks is not None else [raw]:
            parser.feed(chunk)
            while parser.requests:
                seen.append(parser.requests.popleft())
        if eof:
            parser.feed_eof()
    except HTTPError as exc:
        seen.extend(parser.requests)
        return ("error", exc.status, [snapshot(r) for r in seen])
    return ("ok", [snapshot(r) for r in seen])


def split_every(raw: bytes, size: int) -> list[bytes]:
    return [raw[i : i + size] for i in range(0, len(raw), size)]


def parse_one(raw: bytes, **limits: Any) -> Request:
    parser = RequestParser(ProtocolLimits(**limits))
    parser.feed(raw)
    assert len(parser.requests) == 1
    return parser.requests.popleft()


def status_of(raw: bytes | list[bytes], eof: bool = True, **limits: Any) -> int | None:
    parser = RequestParser(ProtocolLimits(**limits))
    try:
        for chunk in [raw] if isinstance(raw, bytes) else raw:
            parser.feed(chunk)
        if eof:
            parser.feed_eof()
    except HTTPError as exc:
        return exc.status
    return None


# -- valid requests ------------------------------------------------------------------------------


def test_simple_get() -> None:
    raw = b"GET /a/b?x=1&y=2 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n"
    parser = RequestParser()
    assert parser.idle
    parser.feed(raw)
    assert parser.idle
    (request,) = parser.requests
    assert request.method == "GET"
    assert request.target == b"/a/b?x=1&y=2"
    assert request.path == b"/a/b"
    assert request.query == b"x=1&y=2"
    assert request.version == "1.1"
    assert request.headers == [(b"Host", b"example.com"), (b"Accept", b"*/*")]
    assert request.keep_alive is True
    assert request.expect_continue is False
    assert request.chunked is False
    assert request.content_length is None
    assert request.body == bytearray()
    assert request.complete is True
    assert request.body_received == 0


def test_post_with_content_length() -> None:
    parser = RequestParser()
    parser.feed(b"POST /form HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello")
    (request,) = parser.requests
    assert request.content_length == 11
    assert not request.chunked
    assert bytes(request.body) == b"hello"
    assert request.body_received == 5
    assert not request.complete
    assert not parser.idle
    parser.feed(b" world")
    assert bytes(request.body) == b"hello world"
    assert request.body_received == 11
    assert request.complete
    assert parser.idle


def test_chunked_with_trailers() -> None:
    raw = (
        b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTrailer: X-Check\r\n\r\n"
        b"5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Check: abc\r\nX-More: 1\r\n\r\n"
    )
    request = parse_one(raw)
    assert request.chunked
    assert request.content_length is None
    assert bytes(request.body) == b"hello 0123456789"
    assert request.body_received == 16
    assert request.complete
    # Trailers are validated but not merged into the headers.
    assert [name for name, _ in request.headers] == [b"Host", b"Transfer-Encoding", b"Trailer"]


def test_three_pipelined_requests_in_one_feed() -> None:
    raw = (
        b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        b"PUT /3 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\n"
    )
    parser = RequestParser()
    parser.feed(raw)
    assert [r.target for r in parser.requests] == [b"/1", b"/2", b"/3"]
    assert [bytes(r.body) for r in parser.requests] == [b"", b"abc", b"de"]
    assert all(r.complete for r in parser.requests)
    assert parser.idle


def test_next_head_parsed_while_body_not_yet_consumed() -> None:
    parser = RequestParser()
    parser.feed(b"POST /1 HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nabc")
    first = parser.requests.popleft()
    del first.body[:2]  # the consumer takes some
    parser.feed(b"defGET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert bytes(first.body) == b"cdef"
    assert first.body_received == 6 and first.complete
    (second,) = parser.requests
    assert second.target == b"/2" and second.complete


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [
        ("1.1", None, True),
        ("1.1", b"close", False),
        ("1.1", b"Close", False),
        ("1.1", b"keep-alive", True),
        ("1.1", b"keep-alive, close", False),
        ("1.1", b"foo,  CLOSE ", False),
        ("1.1", b"closed", True),
        ("1.1", b"upgrade", True),
        ("1.0", None, False),
        ("1.0", b"keep-alive", True),
        ("1.0", b"Keep-Alive", True),
        ("1.0", b"foo, keep-alive", True),
        ("1.0", b"keep-alive, close", False),
        ("1.0", b"close", False),
        ("1.0", b"keep-alive-ish", False),
    ],
)
def test_keep_alive(version: str, connection: bytes | None, keep_alive: bool) -> None:
    raw = b"GET / HTTP/" + version.encode() + b"\r\nHost: x\r\n"
    if connection is not None:
        raw += b"Connection: " + connection + b"\r\n"
    request = parse_one(raw + b"\r\n")
    assert request.version == version
    assert request.keep_alive is keep_alive


def test_connection_headers_on_two_lines() -> None:
    raw = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"
    assert parse_one(raw).keep_alive is False


def test_http10_without_host_and_data_after_close_ignored() -> None:
    parser = RequestParser()
    parser.feed(b"GET /a HTTP/1.0\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
    (request,) = parser.requests
    assert request.version == "1.0" and not request.keep_alive and request.complete
    assert parser.idle
    parser.feed(b"this is ignored: the connection is closing \x00\xff")
    parser.feed_eof()
    assert len(parser.requests) == 1


def test_http10_keep_alive_allows_next_request() -> None:
    parser = RequestParser()
    parser.feed(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\n\r\n")
    assert [r.keep_alive for r in parser.requests] == [True, False]


def test_body_after_connection_close_request_is_read_then_rest_ignored() -> None:
    parser = RequestParser()
    parser.feed(b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
    parser.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    (request,) = parser.requests
    assert bytes(request.body) == b"ok" and request.complete and not request.keep_alive


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        (b"/", b"/", b""),
        (b"/a%20b/c", b"/a%20b/c", b""),
        (b"/p?", b"/p", b""),
        (b"/p?a=1&b=%2F", b"/p", b"a=1&b=%2F"),
        (b"/p?a?b", b"/p", b"a?b"),
        (b"//double", b"//double", b""),
        (b"http://example.com/a?b=c", b"/a", b"b=c"),
        (b"http://example.com", b"/", b""),
        (b"http://example.com?q", b"/", b"q"),
        (b"https://example.com:8443/x/y", b"/x/y", b""),
        (b"HTTP://EXAMPLE.COM/A", b"/A", b""),
    ],
)
def test_target_forms(target: bytes, path: bytes, query: bytes) -> None:
    request = parse_one(b"GET " + target + b" HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert (request.target, request.path, request.query) == (target, path, query)


def test_options_star() -> None:
    request = parse_one(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (request.method, request.target, request.path, request.query) == ("OPTIONS", b"*", b"*", b"")


def test_header_case_ows_and_repeats() -> None:
    raw = (
        b"GET / HTTP/1.1\r\nhOsT: x\r\nX-Spaces:    a b   \r\nX-Tabs:\t\tc\t \t\r\n"
        b"Accept: one\r\nX-Empty:\r\nX-Blank:  \t \r\naccept: two\r\nACCEPT:three\r\n\r\n"
    )
    request = parse_one(raw)
    assert request.headers == [
        (b"hOsT", b"x"),
        (b"X-Spaces", b"a b"),
        (b"X-Tabs", b"c"),
        (b"Accept", b"one"),
        (b"X-Empty", b""),
        (b"X-Blank", b""),
        (b"accept", b"two"),
        (b"ACCEPT", b"three"),
    ]


def test_obs_text_in_value_is_kept() -> None:
    request = parse_one(b"GET / HTTP/1.1\r\nHost: x\r\nX-Name: Jos\xe9\r\n\r\n")
    assert request.headers[1] == (b"X-Name", b"Jos\xe9")


@pytest.mark.parametrize(
    ("version", "value", "expected"),
    [
        ("1.1", b"100-continue", True),
        ("1.1", b"100-Continue", True),
        ("1.1", b"  100-CONTINUE ", True),
        ("1.0", b"100-continue", False),
        ("1.1", b"something-else", False),
    ],
)
def test_expect_continue(version: str, value: bytes, expected: bool) -> None:
    raw = b"POST / HTTP/" + version.encode() + b"\r\nHost: x\r\nExpect: " + value + b"\r\nContent-Length: 2\r\n\r\n"
    parser = RequestParser()
    parser.feed(raw)
    (request,) = parser.requests
    assert request.expect_continue is expected
    assert not request.complete  # the head is delivered before the body, so 100 can be sent


@pytest.mark.parametrize(
    "method", [b"FOO", b"get", b"Get", b"M-SEARCH", b"PROPFIND", b"PRI", b"DESCRIBE", b"X!#$%&'*+-.^_`|~1"]
)
def test_unknown_and_unusual_method_tokens_are_accepted(method: bytes) -> None:
    raw = method + b" /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /next HTTP/1.1\r\nHost: x\r\n\r\n"
    parser = RequestParser()
    parser.feed(raw)
    first, second = parser.requests
    assert first.method == method.decode()
    assert bytes(first.body) == b"abc" and first.complete
    assert second.target == b"/next"


def test_httptools_alone_rejects_unknown_methods() -> None:
    """Why the parser shows llhttp ``GET`` in place of methods llhttp does not know."""
    import httptools

    for line in (b"FOO / HTTP/1.1", b"get / HTTP/1.1"):
        with pytest.raises(httptools.HttpParserInvalidMethodError):
            httptools.HttpRequestParser(object()).feed_data(line + b"\r\nHost: x\r\n\r\n")


def test_request_repr() -> None:
    parser = RequestParser()
    parser.feed(b"POST /r HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab")
    assert repr(parser.requests[0]) == "<Request POST b'/r' HTTP/1.1 headers=2 body=2+>"


def test_connect_is_not_implemented() -> None:
    assert status_of(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n") == 501
    assert status_of(b"CONNECT /x HTTP/1.1\r\nHost: x\r\n\r\n") == 501


@pytest.mark.parametrize("body", [b"", b"abc"])
@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_upgrade_is_ignored(framing: str, body: bytes) -> None:
    if framing == "length":
        head, encoded = b"Content-Length: %d\r\n" % len(body), body
    else:
        head = b"Transfer-Encoding: chunked\r\n"
        encoded = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    raw = (
        b"POST /a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" + head + b"\r\n" + encoded
        + b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    for chunks in ([raw], split_every(raw, 1), split_every(raw, 5)):
        parser = RequestParser()
        requests = feed_chunks(parser, chunks)
        assert [r.target for r in requests] == [b"/a", b"/b"]
        assert bytes(requests[0].body) == body and requests[0].complete
        assert (b"Upgrade", b"websocket") in requests[0].headers
        assert parser.idle


def test_leading_empty_lines_are_skipped_even_split() -> None:
    raw = b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n"
    for size in (1, 2, 3, 5):
        parser = RequestParser()
        assert [r.target for r in feed_chunks(parser, split_every(raw, size))] == [b"/", b"/2"]
        assert parser.idle


def test_feed_accepts_bytearray_and_memoryview() -> None:
    parser = RequestParser()
    parser.feed(bytearray(b"GET / HTTP/1.1\r\n"))
    parser.feed(memoryview(b"Host: x\r\n\r\n"))
    assert parser.requests[0].complete


# -- corpus --------------------------------------------------------------------------------------


def test_corpus_is_big_enough() -> None:
    assert len(MALFORMED) >= 40
    assert len({case.name for case in MALFORMED}) == len(MALFORMED)
    assert {case.status for case in MALFORMED} == {400, 413, 414, 431, 501, 505}
    assert len({case.name for case in VALID}) == len(VALID)


def _limits(case: Case) -> ProtocolLimits:
    return ProtocolLimits(**(case.limits or {}))


@pytest.mark.parametrize("case", MALFORMED, ids=[c.name for c in MALFORMED])
def test_malformed_whole(case: Case) -> None:
    parser = RequestParser(_limits(case))
    with pytest.raises(HTTPError) as info:
        parser.feed(case.raw)
        parser.feed_eof()
    error = info.value
    assert error.status == case.status, error
    assert error.reason and error.reason.isascii() and error.reason.isprintable()
    assert not parser.requests or case.name.startswith(("eof-in-", "chunk", "trailer", "last-chunk"))
    # The parser is dead: it repeats the same error.
    with pytest.raises(HTTPError) as again:
        parser.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert again.value is error
    with pytest.raises(HTTPError) as again:
        parser.feed_eof()
    assert again.value is error


@pytest.mark.parametrize("case", MALFORMED, ids=[c.name for c in MALFORMED])
def test_malformed_split(case: Case) -> None:
    """Fed one byte at a time (and in 7-byte pieces) the verdict is the same."""
    for size in (1, 7):
        result = outcome(case.raw, split_every(case.raw, size), _limits(case))
        assert result[:2] == ("error", case.status), (size, result[:2])


def test_unfinished_heads_are_refused_before_they_end() -> None:
    for name in ("request-line-too-long-unfinished", "header-line-too-large-unfinished", "too-many-headers-unfinished",
                 "tls-client-hello", "bare-lf-everywhere"):
        (case,) = [c for c in MALFORMED if c.name == name]
        assert status_of(case.raw, eof=False) == case.status, name


@pytest.mark.parametrize("case", VALID, ids=[c.name for c in VALID])
def test_valid_corpus(case: Valid) -> None:
    results = []
    for chunks in ([case.raw], split_every(case.raw, 1), split_every(case.raw, 3), split_every(case.raw, 64)):
        parser = RequestParser()
        requests = feed_chunks(parser, chunks)
        parser.feed_eof()
        assert len(requests) == 1
        (request,) = requests
        assert request.complete
        assert (request.method, request.path, request.query, bytes(request.body)) == (
            case.method,
            case.path,
            case.query,
            case.body,
        )
        assert parser.idle
        results.append(snapshot(request))
    assert all(r == results[0] for r in results)


def test_valid_pipelines() -> None:
    for case in VALID_PIPELINES:
        whole = outcome(case.raw)
        assert whole[0] == "ok" and len(whole[1]) == case.count, case.name
        assert outcome(case.raw, split_every(case.raw, 1)) == whole


# -- errors: pipelining, EOF, dead parser ---------------------------------------------------------


def test_error_in_later_pipelined_request_keeps_earlier_ones() -> None:
    parser = RequestParser()
    with pytest.raises(HTTPError) as info:
        parser.feed(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\nGET /3 HTTP/9.9\r\n\r\n")
    assert info.value.status == 505
    assert [r.target for r in parser.requests] == [b"/1", b"/2"]
    assert all(r.complete for r in parser.requests)
    assert not parser.idle


def test_error_in_body_after_head_delivered() -> None:
    parser = RequestParser()
    parser.feed(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    request = parser.requests.popleft()
    with pytest.raises(HTTPError) as info:
        parser.feed(b"zz\r\n")
    assert info.value.status == 400
    assert not request.complete
    assert bytes(request.body) == b"abc"


def test_feed_eof() -> None:
    parser = RequestParser()
    parser.feed_eof()  # nothing received: fine

    parser = RequestParser()
    parser.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    parser.feed_eof()  # between requests: fine
    assert len(parser.requests) == 1

    for partial in (
        b"G",
        b"GET / HTTP/1.1\r\nHost: x\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r",
    ):
        parser = RequestParser()
        parser.feed(partial)
        assert not parser.idle
        with pytest.raises(HTTPError) as info:
            parser.feed_eof()
        assert info.value.status == 400


def test_idle() -> None:
    parser = RequestParser()
    assert parser.idle
    parser.feed(b"GET / HT")
    assert not parser.idle
    parser.feed(b"TP/1.1\r\nHost: x\r\n\r\n")
    assert parser.idle
    parser.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n")
    assert not parser.idle
    parser.feed(b"x")
    assert parser.idle
    parser.feed(b"\r\n")  # an empty line between requests is skipped
    assert parser.idle


def test_httperror_and_reasons() -> None:
    error = HTTPError(431, "too big")
    assert (error.status, error.reason) == (431, "too big")
    assert str(error) == "431 too big"
    assert isinstance(error, Exception)


# -- limits --------------------------------------------------------------------------------------


def test_limits_defaults_and_validation() -> None:
    limits = ProtocolLimits()
    assert (limits.max_request_line, limits.max_header_size, limits.max_headers, limits.max_header_block) == (
        8190,
        8190,
        100,
        65536,
    )
    assert limits.max_body_size is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        limits.max_headers = 5  # type: ignore[misc]
    for field in ("max_request_line", "max_header_size", "max_headers", "max_header_block"):
        for bad in (0, -1, 1.5, "10", True, None):
            with pytest.raises(ValueError, match=field):
                ProtocolLimits(**{field: bad})
    for bad in (-1, 1.5, "10", True):
        with pytest.raises(ValueError, match="max_body_size"):
            ProtocolLimits(max_body_size=bad)
    assert ProtocolLimits(max_body_size=0).max_body_size == 0


def _bytewise_status(data: bytes, **limits: Any) -> tuple[int | None, int]:
    """Feed byte by byte without EOF; (status, number of bytes fed when it was raised)."""
    parser = RequestParser(ProtocolLimits(**limits))
    for i in range(len(data)):
        try:
            parser.feed(data[i : i + 1])
        except HTTPError as exc:
            return exc.status, i + 1
    return None, len(data)


def test_request_line_limit() -> None:
    limit = 40
    line = b"GET /" + b"a" * (limit - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"
    assert len(line) == limit
    ok = parse_one(line + b"\r\nHost: x\r\n\r\n", max_request_line=limit)
    assert ok.complete
    long_line = line.replace(b"/", b"/b", 1)
    assert status_of(long_line + b"\r\nHost: x\r\n\r\n", max_request_line=limit) == 414
    # Incomplete: refused when byte limit+1 of the line arrives, with no CRLF in sight.
    endless = b"GET /" + b"a" * 100
    assert _bytewise_status(endless, max_request_line=limit) == (414, limit + 1)
    assert status_of(endless, eof=False, max_request_line=limit) == 414
    # The whole (too long) request line arrives at once, the head is unfinished.
    assert status_of(long_line + b"\r\nHost:", eof=False, max_request_line=limit) == 414
    # At the limit with the CR already received: still waiting, not refused.
    assert _bytewise_status(line + b"\r", max_request_line=limit) == (None, limit + 1)


def test_header_size_limit() -> None:
    limit = 30
    field = b"X-Long: " + b"v" * (limit - 8)
    assert len(field) == limit
    head = b"GET / HTTP/1.1\r\nHost: x\r\n"
    assert parse_one(head + field + b"\r\n\r\n", max_header_size=limit).headers[1] == (b"X-Long", b"v" * (limit - 8))
    assert status_of(head + field + b"v\r\n\r\n", max_header_size=limit) == 431
    endless = head + b"X-Long: " + b"v" * 100
    assert _bytewise_status(endless, max_header_size=limit) == (431, len(head) + limit + 1)
    assert status_of(endless, eof=False, max_header_size=limit) == 431
    # The request line is limited by max_request_line only.
    long_target = b"GET /" + b"a" * 100 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert parse_one(long_target, max_header_size=limit).path == b"/" + b"a" * 100


def test_header_count_limit() -> None:
    limit = 5
    fields = [b"X-%d: y\r\n" % i for i in range(limit - 1)]
    head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(fields)
    assert len(parse_one(head + b"\r\n", max_headers=limit).headers) == limit
    assert status_of(head + b"X-Extra: y\r\n\r\n", max_headers=limit) == 431
    endless = head + b"".join(b"Z-%d: z\r\n" % i for i in range(20))
    assert _bytewise_status(endless, max_headers=limit) == (431, len(head) + len(b"Z-0: z\r\n"))
    assert status_of(endless, eof=False, max_headers=limit) == 431


def test_header_block_limit() -> None:
    limit = 60
    block = b"Host: x\r\n" + b"X-A: " + b"a" * (limit - 9 - 7) + b"\r\n"
    assert len(block) == limit
    assert parse_one(b"GET / HTTP/1.1\r\n" + block + b"\r\n", max_header_block=limit).complete
    assert status_of(b"GET / HTTP/1.1\r\n" + block + b"Y:\r\n\r\n", max_header_block=limit) == 431
    endless = b"GET / HTTP/1.1\r\n" + block + b"Y: " + b"y" * 100
    assert _bytewise_status(endless, max_header_block=limit) == (431, len(b"GET / HTTP/1.1\r\n") + limit + 1)
    assert status_of(endless, eof=False, max_header_block=limit) == 431


def test_body_size_limit_content_length() -> None:
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
    request = parse_one(head % 10 + b"0123456789", max_body_size=10)
    assert request.complete and request.body_received == 10
    # Refused from the head alone, before any body byte arrives.
    assert status_of(head % 11, eof=False, max_body_size=10) == 413
    assert status_of(head % 1, eof=False, max_body_size=0) == 413
    assert parse_one(head % 0, max_body_size=0).complete


def test_body_size_limit_chunked() -> None:
    head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    at_limit = head + b"4\r\nabcd\r\n6\r\nefghij\r\n0\r\n\r\n"
    assert parse_one(at_limit, max_body_size=10).body_received == 10
    over = head + b"4\r\nabcd\r\n7\r\nefghijk\r\n0\r\n\r\n"
    assert status_of(over, max_body_size=10) == 413
    # While the data accumulates: refused at the 11th body byte, before the chunk is complete.
    status, fed = _bytewise_status(over, max_body_size=10)
    assert status == 413 and fed == len(head + b"4\r\nabcd\r\n7\r\nefghijk")
    for size in (1, 3, 1000):
        assert outcome(over, split_every(over, size), ProtocolLimits(max_body_size=10))[:2] == ("error", 413)


def test_trailer_section_limit() -> None:
    limit = 100
    head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"
    small = head + b"T: " + b"t" * (limit - 10) + b"\r\n\r\n"
    assert parse_one(small, max_header_block=limit).complete
    endless = head + b"T: " + b"t" * (10 * limit)
    for chunks in ([endless], split_every(endless, 1), split_every(endless, 37)):
        assert outcome(endless, chunks, ProtocolLimits(max_header_block=limit), eof=False)[:2] == ("error", 431)
    status, fed = _bytewise_status(endless, max_header_block=limit)
    assert status == 431 and fed <= len(head) + 2 * limit + 1


def test_trailer_section_limit_is_exact_however_split() -> None:
    limit = 100
    head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"
    first = b"T-1: one\r\n"
    at_limit = first + b"T-2: " + b"t" * (limit - len(first) - 7) + b"\r\n"
    assert len(at_limit) == limit
    limits = ProtocolLimits(max_header_block=limit)
    for size in (1, 7, 1000):
        raw = head + at_limit + b"\r\n"
        assert outcome(raw, split_every(raw, size), limits)[0] == "ok", size
        raw = head + at_limit.replace(b"T-2: ", b"T-2: t") + b"\r\n"
        assert outcome(raw, split_every(raw, size), limits)[:2] == ("error", 431), size


def test_large_body_in_many_feeds() -> None:
    body = bytes(range(256)) * 1000
    raw = b"PUT /big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    parser = RequestParser()
    parser.feed(raw[:100])
    request = parser.requests.popleft()
    received = bytearray(request.body)
    request.body.clear()
    for piece in split_every(raw[100:], 65536):
        parser.feed(piece)
        received += request.body
        del request.body[:]
    assert bytes(received) == body and request.complete and request.body_received == len(body)


# -- property tests ------------------------------------------------------------------------------

ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
SAFE_PATH = st.text(alphabet=ALNUM + "-._~%!$&'()*+,;=:@/", max_size=20)
QUERY = st.text(alphabet="abcxyz0123456789=&%+-_./?:@", max_size=15)
TOKEN = st.text(alphabet=ALNUM + "!#$%&'*+-.^_`|~", min_size=1, max_size=10)
VALUE = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20)
OWS = st.sampled_from(["", " ", "  ", "\t", " \t"])
METHODS = st.sampled_from(
    ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "FOO", "get", "M-SEARCH", "PURGE"]
)


@st.composite
def valid_request(draw: st.DrawFn) -> tuple[bytes, dict[str, Any]]:
    """One valid request and the fields the parser must report for it."""
    method = draw(METHODS)
    version = draw(st.sampled_from(["1.1", "1.1", "1.0"]))
    path = "/" + draw(SAFE_PATH)
    query = draw(st.one_of(st.none(), QUERY))
    target = path + ("" if query is None else "?" + query)
    headers: list[tuple[bytes, bytes]] = []
    lines = [f"{method} {target} HTTP/{version}".encode()]
    if version == "1.1" or draw(st.booleans()):
        headers.append((b"Host", b"example.com"))
        lines.append(b"Host: example.com")
    for name, value, before, after in draw(st.lists(st.tuples(TOKEN, VALUE, OWS, OWS), max_size=6)):
        name_b = ("X-" + name).encode()
        headers.append((name_b, value.encode()))
        lines.append(name_b + b":" + (before + value + after).encode())
    body = draw(st.binary(max_size=200))
    framing = draw(st.sampled_from(["none", "length", "chunked"] if version == "1.1" else ["none", "length"]))
    if framing == "none":
        body = b""
        encoded = b""
    elif framing == "length":
        headers.append((b"Content-Length", str(len(body)).encode()))
        lines.append(b"Content-Length: " + str(len(body)).encode())
        encoded = body
    else:
        headers.append((b"Transfer-Encoding", b"chunked"))
        lines.append(b"Transfer-Encoding: chunked")
        encoded = b""
        rest = body
        while rest:
            size = draw(st.integers(min_value=1, max_value=len(rest)))
            ext = draw(st.sampled_from([b"", b";a=b", b';q="x y"', b" ;a", b"\t; a = b", b'; a;b ="\\" c"']))
            encoded += b"%x%s\r\n%s\r\n" % (size, ext, rest[:size])
            rest = rest[size:]
        encoded += b"0\r\n"
        for name, value in draw(st.lists(st.tuples(TOKEN, VALUE), max_size=2)):
            encoded += ("T-" + name).encode() + b": " + value.encode() + b"\r\n"
        encoded += b"\r\n"
    raw = b"\r\n".join(lines) + b"\r\n\r\n" + encoded
    expected = {
        "method": method,
        "target": target.encode(),
        "path": path.encode(),
        "query": (query or "").encode(),
        "version": version,
        "headers": headers,
        "chunked": framing == "chunked",
        "content_length": len(body) if framing == "length" else None,
        "body": body,
        "keep_alive": version == "1.1",
    }
    return raw, expected


@st.composite
def valid_stream(draw: st.DrawFn) -> tuple[bytes, list[dict[str, Any]]]:
    """1-3 pipelined valid requests; only the last may end the connection."""
    items = draw(st.lists(valid_request(), min_size=1, max_size=3))
    kept = []
    for raw, expected in items:
        kept.append((raw, expected))
        if not expected["keep_alive"]:
            break
    return b"".join(raw for raw, _ in kept), [expected for _, expected in kept]


@st.composite
def splits(draw: st.DrawFn, data: bytes) -> list[bytes]:
    if not data:
        return [data]
    mode = draw(st.sampled_from(["bytes", "random", "random"]))
    if mode == "bytes":
        return split_every(data, 1)
    cuts = sorted(draw(st.sets(st.integers(min_value=1, max_value=max(1, len(data) - 1)), max_size=12)))
    points = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_property_random_splits_change_nothing(data: st.DataObject) -> None:
    raw, expected = data.draw(valid_stream())
    whole = outcome(raw)
    assert whole[0] == "ok", whole
    assert len(whole[1]) == len(expected)
    for snap, exp in zip(whole[1], expected, strict=True):
        (method, target, path, query, version, headers, keep_alive, _, chunked, length, body, complete, received) = snap
        assert (method, target, path, query, version) == (
            exp["method"],
            exp["target"],
            exp["path"],
            exp["query"],
            exp["version"],
        )
        assert headers == exp["headers"]
        assert (chunked, length, body, complete, received) == (
            exp["chunked"],
            exp["content_length"],
            exp["body"],
            True,
            len(exp["body"]),
        )
        assert keep_alive == exp["keep_alive"]
    chunks = data.draw(splits(raw))
    assert outcome(raw, chunks) == whole


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    raw, _ = draw(valid_stream())
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "replace"]))
        if not raw:
            kind = "insert"
        i = draw(st.integers(min_value=0, max_value=max(0, len(raw) - 1)))
        special = st.sampled_from(b"\r\n \t:;,\x00\x7f\x80\xff0aAzZ/?#%")
        byte = draw(st.one_of(st.integers(min_value=0, max_value=255), special))
        if kind == "flip":
            raw = raw[:i] + bytes([raw[i] ^ (1 << draw(st.integers(min_value=0, max_value=7)))]) + raw[i + 1 :]
        elif kind == "insert":
            raw = raw[:i] + bytes([byte]) + raw[i:]
        elif kind == "delete":
            raw = raw[:i] + raw[i + 1 :]
        else:
            raw = raw[:i] + bytes([byte]) + raw[i + 1 :]
    return raw


ALLOWED_STATUSES = {400, 413, 414, 431, 501, 505}


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_property_mutations_only_raise_httperror(data: st.DataObject) -> None:
    raw = data.draw(mutated())
    whole = outcome(raw)  # any other exception fails the test
    if whole[0] == "error":
        assert whole[1] in ALLOWED_STATUSES
    chunks = data.draw(splits(raw))
    split = outcome(raw, chunks)
    if split[0] == "error":
        assert split[1] in ALLOWED_STATUSES
    # Where the bytes are cut never changes whether the stream is acceptable, nor what it says.
    assert split[0] == whole[0], (whole, split)
    if whole[0] == "ok":
        assert split == whole


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_property_random_bytes_only_raise_httperror(raw: bytes, prefix: bool) -> None:
    if prefix:
        raw = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + raw
    result = outcome(raw)
    if result[0] == "error":
        assert result[1] in ALLOWED_STATUSES
    assert outcome(raw, split_every(raw, 1))[0] == result[0]


def test_chunk_size_line_limit() -> None:
    limit = 100
    head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    ok = head + b"3" + b";a" * 40 + b"\r\nabc\r\n0\r\n\r\n"
    assert bytes(parse_one(ok, max_header_block=limit).body) == b"abc"
    endless = head + b"3" + b" ;a" * 1000
    for chunks in ([endless], split_every(endless, 1), split_every(endless, 37)):
        assert outcome(endless, chunks, ProtocolLimits(max_header_block=limit), eof=False)[:2] == ("error", 431)


@pytest.mark.parametrize("name", SINGLETON_FIELDS)
def test_singleton_fields_repeated_are_refused(name: bytes) -> None:
    once = b"GET / HTTP/1.1\r\nHost: x\r\n%s: 1\r\nX: y\r\n\r\n" % name.title()
    assert parse_one(once).headers[1] == (name.title(), b"1")
    twice = b"GET / HTTP/1.1\r\nHost: x\r\n%s: 1\r\nX: y\r\n%s: 1\r\n\r\n" % (name.title(), name.upper())
    parser = RequestParser()
    with pytest.raises(HTTPError) as caught:
        parser.feed(twice)
    assert caught.value.status == 400
    assert name.decode() in caught.value.reason.lower()
