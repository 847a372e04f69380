"""wsgi.py without sockets: the environ built from a parsed request, the checks on what an
application hands to ``start_response``, and ``wsgi.file_wrapper``. (``wsgi.input`` has its own
tests in test_input.py.)"""

from __future__ import annotations

import io
from typing import Any

import pytest

from gearshift.http.parser import Request, RequestParser
from gearshift.http.wsgi import HOP_BY_HOP, FileWrapper, ResponseHeadersError, build_environ, check_response

BASE = {"SERVER_NAME": "unit", "SERVER_PORT": "80", "wsgi.version": (1, 0)}
INPUT = object()  # build_environ stores wsgi.input as given


def parse(head: bytes) -> Request:
    parser = RequestParser()
    parser.feed(head)
    assert len(parser.requests) == 1
    return parser.requests.popleft()


def environ_of(head: bytes, client_address: Any = ("192.0.2.7", 41234)) -> dict[str, Any]:
    return build_environ(BASE, parse(head), client_address, INPUT)


# -- build_environ -------------------------------------------------------------------------------


def test_request_keys():
    env = environ_of(b"POST /a/b?x=1&y=2 HTTP/1.1\r\nHost: example.com\r\nContent-Length: 0\r\n\r\n")
    assert env["REQUEST_METHOD"] == "POST"
    assert env["PATH_INFO"] == "/a/b"
    assert env["QUERY_STRING"] == "x=1&y=2"
    assert env["REQUEST_URI"] == "/a/b?x=1&y=2"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["HTTP_HOST"] == "example.com"
    assert env["CONTENT_LENGTH"] == "0" and "HTTP_CONTENT_LENGTH" not in env
    assert env["wsgi.input"] is INPUT
    assert env["SERVER_NAME"] == "unit" and env["wsgi.version"] == (1, 0)  # the base, copied


def test_the_base_environ_is_not_modified():
    base = dict(BASE)
    build_environ(base, parse(b"GET / HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n\r\n"), ("127.0.0.1", 1), INPUT)
    assert base == BASE


def test_http_1_0_and_no_query():
    env = environ_of(b"GET /plain HTTP/1.0\r\n\r\n")
    assert env["SERVER_PROTOCOL"] == "HTTP/1.0"
    assert env["QUERY_STRING"] == ""
    assert env["PATH_INFO"] == "/plain"


def test_path_info_is_percent_decoded_as_latin_1_and_request_uri_stays_raw():
    env = environ_of(b"GET /caf%C3%A9/a%20b%2Fc?q=%20 HTTP/1.1\r\nHost: t\r\n\r\n")
    # PEP 3333: native strings carrying the bytes, decoded as latin-1
    assert env["PATH_INFO"] == "/caf\u00c3\u00a9/a b/c"
    assert env["PATH_INFO"].encode("latin-1").decode("utf-8") == "/café/a b/c"
    assert env["REQUEST_URI"] == "/caf%C3%A9/a%20b%2Fc?q=%20"
    assert env["QUERY_STRING"] == "q=%20"  # the query is not decoded


def test_asterisk_form_has_an_empty_path_info():
    env = environ_of(b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n")
    assert env["PATH_INFO"] == ""
    assert env["REQUEST_URI"] == "*"


def test_absolute_form_takes_path_and_query_from_the_url():
    env = environ_of(b"GET http://example.com/p%41th?k=v HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert env["PATH_INFO"] == "/pAth"
    assert env["QUERY_STRING"] == "k=v"
    assert env["REQUEST_URI"] == "http://example.com/p%41th?k=v"


def test_header_names_map_to_cgi_keys():
    env = environ_of(b"GET / HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nX-Custom-Thing: v\r\n"
                     b"accept-language: fr\r\n\r\n")
    assert env["CONTENT_TYPE"] == "text/plain" and "HTTP_CONTENT_TYPE" not in env
    assert env["HTTP_X_CUSTOM_THING"] == "v"
    assert env["HTTP_ACCEPT_LANGUAGE"] == "fr"


def test_header_names_with_underscores_are_dropped():
    # X_Forwarded_For would otherwise land on the same key as X-Forwarded-For, which a proxy
    # may have filtered by its dashed name.
    env = environ_of(b"GET / HTTP/1.1\r\nHost: t\r\nX_Forwarded_For: 6.6.6.6\r\nX-Real: 1\r\n\r\n")
    assert "HTTP_X_FORWARDED_FOR" not in env
    assert not [key for key in env if "FORWARDED" in key]
    assert env["HTTP_X_REAL"] == "1"


def test_header_values_are_latin_1_strings():
    env = environ_of(b"GET / HTTP/1.1\r\nHost: t\r\nX-Name: caf\xc3\xa9\r\n\r\n")
    assert env["HTTP_X_NAME"] == "caf\u00c3\u00a9"


def test_repeated_headers_are_joined_with_commas():
    env = environ_of(b"GET / HTTP/1.1\r\nHost: t\r\nAccept: a/b\r\nX-Tag: one\r\nAccept: c/d\r\nx-tag: two\r\n\r\n")
    assert env["HTTP_ACCEPT"] == "a/b, c/d"
    assert env["HTTP_X_TAG"] == "one, two"


def test_repeated_cookie_headers_are_joined_with_semicolons():
    env = environ_of(b"GET / HTTP/1.1\r\nHost: t\r\nCookie: a=1\r\nCookie: b=2; c=3\r\n\r\n")
    assert env["HTTP_COOKIE"] == "a=1; b=2; c=3"


def test_a_header_cannot_overwrite_a_non_http_key():
    env = environ_of(b"GET / HTTP/1.1\r\nHost: t\r\nContent-Type: a/b\r\n\r\n")
    assert env["CONTENT_TYPE"] == "a/b"
    assert env["REQUEST_METHOD"] == "GET"  # no header name maps onto it


def test_remote_addr_of_an_ip_peer():
    env = environ_of(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", ("192.0.2.7", 41234))
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("192.0.2.7", "41234")
    env6 = environ_of(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", ("::1", 8080, 0, 0))
    assert (env6["REMOTE_ADDR"], env6["REMOTE_PORT"]) == ("::1", "8080")


@pytest.mark.parametrize("peer", ["", "/run/app.sock", b""])
def test_remote_addr_of_a_unix_peer_is_empty(peer):
    env = environ_of(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", peer)
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("", "")


# -- check_response ----------------------------------------------------------------------------


def test_check_response_returns_code_length_close_date_server():
    assert check_response("200 OK", []) == (200, None, False, False, False)
    assert check_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "12")]) == (
        404, 12, False, False, False,
    )
    assert check_response("200 OK", [("Connection", "close")]) == (200, None, True, False, False)
    assert check_response("200 OK", [("connection", "Keep-Alive, Close")])[2] is True
    assert check_response("200 OK", [("Connection", "keep-alive")])[2] is False
    assert check_response("200 OK", [("Date", "Thu, 01 Jan 1970 00:00:00 GMT")]) == (200, None, False, True, False)
    assert check_response("200 OK", [("server", "mine/1")]) == (200, None, False, False, True)
    assert check_response("599 Whatever it likes\t!", [])[0] == 599
    assert check_response("204 ", [])[0] == 204  # an empty reason phrase is allowed


def test_a_repeated_equal_content_length_is_accepted():
    assert check_response("200 OK", [("Content-Length", "5"), ("content-length", "5")])[1] == 5


@pytest.mark.parametrize("status", [
    "200", "200OK", "OK 200", "2000 OK", "099 Low", "600 High", " 200 OK", "200 OK\r\n", "200 OK\nX: y",
    "200 O\x00K", "200 Caf\u00e9", b"200 OK", 200, None,
])
def test_invalid_status_lines_are_refused(status):
    with pytest.raises(ResponseHeadersError, match="invalid status line"):
        check_response(status, [])


@pytest.mark.parametrize("headers", [(("Content-Type", "text/plain"),), {"Content-Type": "text/plain"}, None])
def test_headers_must_be_a_list(headers):
    with pytest.raises(ResponseHeadersError, match="must be a list"):
        check_response("200 OK", headers)


@pytest.mark.parametrize("header", [["Content-Type", "text/plain"], ("Content-Type",), ("A", "b", "c"), "A: b"])
def test_each_header_must_be_a_pair_tuple(header):
    with pytest.raises(ResponseHeadersError, match="is not a \\(name, value\\) tuple"):
        check_response("200 OK", [header])


@pytest.mark.parametrize("name", ["", "Bad Name", "Bad:Name", "X-\u00e9", "X\r\nInjected", b"X-Bytes", 42])
def test_invalid_header_names_are_refused(name):
    with pytest.raises(ResponseHeadersError, match="invalid response header name"):
        check_response("200 OK", [(name, "v")])


@pytest.mark.parametrize("value", ["a\r\nSet-Cookie: x=1", "a\nb", "a\rb", "a\x00b", "a\x7fb", "a\x1bb", b"bytes", 1])
def test_header_values_with_controls_are_refused(value):
    with pytest.raises(ResponseHeadersError, match="invalid value for response header X-V"):
        check_response("200 OK", [("X-V", value)])


def test_header_values_may_hold_tabs_and_latin_1():
    assert check_response("200 OK", [("X-V", "a\tb caf\u00e9"), ("X-Empty", "")])[0] == 200


# "\u00b2" is "²": a digit to str.isdigit(), not to HTTP
@pytest.mark.parametrize("value", ["", "-1", "1.5", "0x10", " 5", "5 ", "\u00b2"])
def test_invalid_content_length_is_refused(value):
    with pytest.raises(ResponseHeadersError, match="invalid Content-Length"):
        check_response("200 OK", [("Content-Length", value)])


def test_conflicting_content_lengths_are_refused():
    with pytest.raises(ResponseHeadersError, match="conflicting Content-Length"):
        check_response("200 OK", [("Content-Length", "5"), ("Content-Length", "6")])


@pytest.mark.parametrize("name", sorted(HOP_BY_HOP))
def test_hop_by_hop_headers_are_refused(name):
    with pytest.raises(ResponseHeadersError, match="hop-by-hop header"):
        check_response("200 OK", [(name.title(), "x")])


def test_response_headers_error_is_a_value_error():
    assert issubclass(ResponseHeadersError, ValueError)


# -- FileWrapper ----------------------------------------------------------------------------


def test_file_wrapper_iterates_in_blocks():
    wrapper = FileWrapper(io.BytesIO(b"abcdefghij"), block_size=4)
    assert list(wrapper) == [b"abcd", b"efgh", b"ij"]
    assert list(wrapper) == []  # the file is at its end


def test_file_wrapper_has_the_file_close_only_if_the_file_has_one():
    class Closable:
        closed = False

        def read(self, size: int) -> bytes:
            return b""

        def close(self) -> None:
            self.closed = True

    closable = Closable()
    wrapper = FileWrapper(closable)  # type: ignore[arg-type]
    wrapper.close()
    assert closable.closed

    class ReadOnly:
        def read(self, size: int) -> bytes:
            return b""

    assert not hasattr(FileWrapper(ReadOnly()), "close")  # type: ignore[arg-type]


def test_file_wrapper_fileno_of_a_real_file(tmp_path):
    path = tmp_path / "data"
    path.write_bytes(b"0123456789")
    with open(path, "rb") as f:
        wrapper = FileWrapper(f)
        assert wrapper.fileno() == f.fileno()
        assert b"".join(wrapper) == b"0123456789"


def test_file_wrapper_fileno_is_none_without_a_real_descriptor(tmp_path):
    assert FileWrapper(io.BytesIO(b"x")).fileno() is None  # fileno() raises io.UnsupportedOperation

    class NoFileno:
        def read(self, size: int) -> bytes:
            return b""

    assert FileWrapper(NoFileno()).fileno() is None  # type: ignore[arg-type]
    closed = open(tmp_path / "closed", "wb")  # noqa: SIM115  (closed on purpose below)
    closed.close()
    assert FileWrapper(closed).fileno() is None  # type: ignore[arg-type]  # ValueError
