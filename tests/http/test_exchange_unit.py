"""``Exchange`` (one request and its response) without sockets.

An Exchange talks to its connection through a few calls: ``send`` (bytes for the client),
``read_body`` (more of the request body into the parser), ``reject``, ``linger``, ``sendfile``,
and reads ``config``, ``client_address`` and ``server`` (``app``, ``base_environ``, ``closing``,
``date_and_server()``). ``StandIn`` below provides those, records what is sent, and feeds the
request body from a list of pieces, so each test can assert the exact bytes a client would get.
The same behaviours are tested over real sockets in test_protocol.py and test_app_errors.py.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from gearshift.http.connection import Exchange
from gearshift.http.errors import ClientGone, HTTPError, RequestTimeout
from gearshift.http.parser import Request, RequestParser
from gearshift.http.server import HTTPConfig
from gearshift.http.wsgi import FileWrapper

App = Callable[[dict[str, Any], Any], Iterable[bytes]]

SOFTWARE = "gearshift-unit/0"
DATE_AND_SERVER = b"Date: Thu, 01 Jan 2026 00:00:00 GMT\r\nServer: " + SOFTWARE.encode() + b"\r\n"
GET = b"GET /path?q=1 HTTP/1.1\r\nHost: unit\r\n\r\n"
IMF_FIXDATE = re.compile(rb"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT")


class StandInServer:
    def __init__(self, app: App) -> None:
        self.app = app
        self.closing = False
        self.base_environ: dict[str, Any] = {
            "SERVER_SOFTWARE": SOFTWARE, "SERVER_NAME": "unit", "SERVER_PORT": "80", "SCRIPT_NAME": "",
            "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.file_wrapper": FileWrapper,
        }

    def date_and_server(self) -> bytes:
        return DATE_AND_SERVER


class StandIn:
    """The connection an Exchange runs on: ``wire`` holds the request head (and any body bytes
    that came with it); ``body_pieces`` arrive one per ``read_body()`` call, and when they run
    out ``read_body()`` raises the 408 a silent client gets."""

    def __init__(self, app: App, wire: bytes = GET, body_pieces: Iterable[bytes] = (), *,
                 keep_alive_timeout: float = 5.0) -> None:
        self.config = HTTPConfig(keep_alive_timeout=keep_alive_timeout)
        self.server = StandInServer(app)
        self.client_address = ("192.0.2.1", 5000)
        self.proxy = None  # an untrusted peer: no forwarding headers applied
        self.sent = bytearray()
        self.rejected: list[HTTPError] = []
        self.lingered = False
        self.sendfile_calls: list[tuple[int, int]] = []
        self.fail_sends_after: int | None = None  # number of send() calls that succeed
        self.parser = RequestParser(self.config.limits)
        self.parser.feed(wire)
        self.body_pieces = list(body_pieces)

    def request(self) -> Request:
        return self.parser.requests.popleft()

    def send(self, data: bytes) -> None:
        if self.fail_sends_after is not None:
            if self.fail_sends_after == 0:
                raise ClientGone("the client went away (stand-in)")
            self.fail_sends_after -= 1
        self.sent += data

    def read_body(self, request: Request) -> None:
        if not self.body_pieces:
            raise RequestTimeout("the request body was not received in time")
        self.parser.feed(self.body_pieces.pop(0))

    def reject(self, error: HTTPError, blocking: bool = True, *, request: Request | None = None) -> None:
        self.rejected.append(error)
        self.sent += b"HTTP/1.1 %d (rejected)\r\n\r\n" % error.status

    def linger(self) -> None:
        self.lingered = True

    def sendfile(self, file: Any, offset: int, count: int) -> int:
        self.sendfile_calls.append((offset, count))
        file.seek(offset)
        data = file.read(count)
        self.sent += data
        return len(data)


class Response:
    """One response parsed from the bytes sent: status line, header lines in order, and the raw
    bytes after the head (the body as framed, and anything after it)."""

    def __init__(self, data: bytes) -> None:
        head, sep, self.rest = data.partition(b"\r\n\r\n")
        assert sep, f"no complete response head in {data!r}"
        self.status_line, *lines = head.decode("latin-1").split("\r\n")
        self.headers = [tuple(line.split(": ", 1)) for line in lines]

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def names(self) -> list[str]:
        return [key.lower() for key, _ in self.headers]


def run(app: App, wire: bytes = GET, body_pieces: Iterable[bytes] = (), **options: Any) -> tuple[bool, StandIn]:
    connection = StandIn(app, wire, body_pieces, **options)
    reusable = Exchange(connection, connection.request()).run()  # type: ignore[arg-type]
    return reusable, connection


def simple(status: str = "200 OK", headers: list[tuple[str, str]] | None = None,
           body: Iterable[bytes] = (b"hello",)) -> App:
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response(status, list(headers or []))
        return body if not isinstance(body, list) else list(body)

    return app


def gen(*parts: bytes) -> Iterator[bytes]:
    yield from parts


# -- status line and framing ---------------------------------------------------------------------


def test_a_one_item_body_gets_a_content_length():
    reusable, conn = run(simple(headers=[("Content-Type", "text/plain")], body=[b"hello"]))
    assert reusable
    assert bytes(conn.sent) == (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
                                + DATE_AND_SERVER + b"\r\nhello")


def test_the_status_line_is_the_applications():
    _, conn = run(simple("418 I'm a teapot", body=[b""]))
    response = Response(bytes(conn.sent))
    assert response.status_line == "HTTP/1.1 418 I'm a teapot"
    assert response.values("Content-Length") == ["0"] and response.rest == b""


def test_the_applications_content_length_is_used_as_is():
    reusable, conn = run(simple(headers=[("Content-Length", "6")], body=gen(b"hel", b"", b"lo!")))
    response = Response(bytes(conn.sent))
    assert reusable
    assert response.values("Content-Length") == ["6"]
    assert "transfer-encoding" not in response.names()
    assert response.rest == b"hello!"


def test_a_body_of_unknown_length_is_chunked_on_http_1_1():
    reusable, conn = run(simple(body=gen(b"hello", b"", b" world")))
    response = Response(bytes(conn.sent))
    assert reusable
    assert response.values("Transfer-Encoding") == ["chunked"] and "content-length" not in response.names()
    assert response.rest == b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"  # the empty item sends no chunk


def test_an_empty_generator_is_an_empty_chunked_body():
    reusable, conn = run(simple(body=gen()))
    assert reusable
    # nothing was written before the end, so the length is known: 0
    assert Response(bytes(conn.sent)).values("Content-Length") == ["0"]


def test_http_1_0_without_a_length_ends_the_body_by_closing():
    reusable, conn = run(simple(body=gen(b"a", b"b")), b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    response = Response(bytes(conn.sent))
    assert not reusable
    assert response.values("Connection") == ["close"]
    assert "transfer-encoding" not in response.names() and "content-length" not in response.names()
    assert response.rest == b"ab"


def test_http_1_0_keep_alive_is_answered_with_keep_alive():
    reusable, conn = run(simple(body=[b"ok"]), b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    response = Response(bytes(conn.sent))
    assert reusable
    assert response.status_line == "HTTP/1.1 200 OK"
    assert response.values("Connection") == ["keep-alive"]


def test_plain_http_1_0_closes():
    reusable, conn = run(simple(body=[b"ok"]), b"GET / HTTP/1.0\r\n\r\n")
    assert not reusable
    assert Response(bytes(conn.sent)).values("Connection") == ["close"]


def test_head_sends_no_body():
    reusable, conn = run(simple(body=[b"hello"]), b"HEAD / HTTP/1.1\r\nHost: unit\r\n\r\n")
    response = Response(bytes(conn.sent))
    assert reusable
    assert response.status_line == "HTTP/1.1 200 OK"
    assert response.rest == b""


def test_head_keeps_the_applications_content_length():
    reusable, conn = run(simple(headers=[("Content-Length", "5")], body=[b"hello"]),
                         b"HEAD / HTTP/1.1\r\nHost: unit\r\n\r\n")
    response = Response(bytes(conn.sent))
    assert reusable
    assert response.values("Content-Length") == ["5"]
    assert response.rest == b""


def test_head_with_a_streamed_body_sends_no_body_and_no_chunking():
    reusable, conn = run(simple(body=gen(b"a", b"b")), b"HEAD / HTTP/1.1\r\nHost: unit\r\n\r\n")
    response = Response(bytes(conn.sent))
    assert reusable
    assert "transfer-encoding" not in response.names()
    assert response.rest == b""


@pytest.mark.parametrize("status", ["204 No Content", "304 Not Modified"])
def test_204_and_304_have_no_body_nor_framing(status):
    reusable, conn = run(simple(status, body=gen(b"ignored", b"too")))
    response = Response(bytes(conn.sent))
    assert reusable
    assert response.status_line == f"HTTP/1.1 {status}"
    assert "transfer-encoding" not in response.names() and "content-length" not in response.names()
    assert response.rest == b""


def test_more_than_the_content_length_is_truncated_and_closes(caplog):
    reusable, conn = run(simple(headers=[("Content-Length", "3")], body=gen(b"ab", b"cdef")))
    assert not reusable
    response = Response(bytes(conn.sent))
    assert response.rest == b"abc"
    assert "sent more than its Content-Length (3)" in caplog.text


def test_less_than_the_content_length_closes(caplog):
    reusable, conn = run(simple(headers=[("Content-Length", "10")], body=gen(b"abc")))
    assert not reusable
    assert Response(bytes(conn.sent)).rest == b"abc"
    assert "sent 7 bytes less than its Content-Length (10)" in caplog.text


# -- Connection: close ------------------------------------------------------------------------------


def test_the_application_asking_for_close_closes():
    reusable, conn = run(simple(headers=[("Connection", "close")], body=[b"bye"]))
    assert not reusable
    assert set(Response(bytes(conn.sent)).values("Connection")) == {"close"}


def test_the_client_asking_for_close_closes():
    reusable, conn = run(simple(body=[b"bye"]), b"GET / HTTP/1.1\r\nHost: unit\r\nConnection: close\r\n\r\n")
    assert not reusable
    assert Response(bytes(conn.sent)).values("Connection") == ["close"]


def test_a_closing_server_closes():
    connection = StandIn(simple(body=[b"bye"]))
    connection.server.closing = True
    assert not Exchange(connection, connection.request()).run()  # type: ignore[arg-type]
    assert Response(bytes(connection.sent)).values("Connection") == ["close"]


def test_keep_alive_timeout_0_closes_after_every_response():
    reusable, conn = run(simple(body=[b"bye"]), keep_alive_timeout=0)
    assert not reusable
    assert Response(bytes(conn.sent)).values("Connection") == ["close"]


def test_keep_alive_says_nothing_on_http_1_1():
    reusable, conn = run(simple(body=[b"ok"]))
    assert reusable
    assert "connection" not in Response(bytes(conn.sent)).names()


# -- Date and Server ----------------------------------------------------------------------------


def test_date_and_server_come_from_the_server_when_the_app_sets_neither():
    _, conn = run(simple(body=[b"x"]))
    response = Response(bytes(conn.sent))
    assert response.values("Date") == ["Thu, 01 Jan 2026 00:00:00 GMT"]
    assert response.values("Server") == [SOFTWARE]


def test_the_applications_date_is_kept_and_the_server_added():
    _, conn = run(simple(headers=[("Date", "Mon, 02 Feb 2026 10:00:00 GMT")], body=[b"x"]))
    response = Response(bytes(conn.sent))
    assert response.values("Date") == ["Mon, 02 Feb 2026 10:00:00 GMT"]
    assert response.values("Server") == [SOFTWARE]


def test_the_applications_server_is_kept_and_a_current_date_added():
    _, conn = run(simple(headers=[("Server", "my-app/2")], body=[b"x"]))
    response = Response(bytes(conn.sent))
    assert response.values("Server") == ["my-app/2"]
    [date] = response.values("Date")
    assert IMF_FIXDATE.fullmatch(date.encode()), date


def test_the_applications_date_and_server_are_kept_and_nothing_added():
    _, conn = run(simple(headers=[("server", "my-app/2"), ("date", "Mon, 02 Feb 2026 10:00:00 GMT")], body=[b"x"]))
    response = Response(bytes(conn.sent))
    assert response.values("Server") == ["my-app/2"]
    assert response.values("Date") == ["Mon, 02 Feb 2026 10:00:00 GMT"]


# -- application errors -----------------------------------------------------------------------------


def assert_500(conn: StandIn) -> None:
    response = Response(bytes(conn.sent))
    assert response.status_line == "HTTP/1.1 500 Internal Server Error"
    assert response.values("Connection") == ["close"]
    assert response.values("Content-Length") == [str(len(response.rest))]
    assert response.rest == b"Internal Server Error\n"


def test_an_error_before_start_response_is_a_500(caplog):
    def app(environ, start_response):
        raise RuntimeError("broken app")

    reusable, conn = run(app)
    assert not reusable
    assert_500(conn)
    assert "error in the WSGI application for GET /path" in caplog.text and "broken app" in caplog.text


def test_an_error_after_start_response_but_before_the_body_is_a_500():
    def app(environ, start_response):
        start_response("200 OK", [("X-Never", "sent")])
        raise RuntimeError("broken app")

    reusable, conn = run(app)
    assert not reusable
    assert_500(conn)
    assert b"X-Never" not in conn.sent


def test_an_error_from_a_lazy_body_before_its_first_item_is_a_500():
    def app(environ, start_response):
        start_response("200 OK", [])
        raise RuntimeError("broken app")
        yield b"never"

    reusable, conn = run(app)
    assert not reusable
    assert_500(conn)


def test_an_error_after_the_head_cuts_the_response_short(caplog):
    def app(environ, start_response):
        start_response("200 OK", [])
        yield b"first"
        raise RuntimeError("broken midway")

    reusable, conn = run(app)
    assert not reusable  # closing is how the client learns the response is incomplete
    response = Response(bytes(conn.sent))
    assert response.status_line == "HTTP/1.1 200 OK"
    assert response.rest == b"5\r\nfirst\r\n"  # no last chunk
    assert b"500" not in conn.sent
    assert "broken midway" in caplog.text


def test_invalid_response_headers_are_a_500():
    reusable, conn = run(simple(headers=[("X-Bad", "a\r\nInjected: yes")]))
    assert not reusable
    assert_500(conn)
    assert b"Injected" not in conn.sent


@pytest.mark.parametrize("item", ["text", 42])
def test_a_body_item_that_is_not_bytes_is_a_500(item, caplog):
    reusable, conn = run(simple(body=[item]))  # type: ignore[list-item]
    assert not reusable
    assert_500(conn)
    assert "WSGI applications must yield bytes" in caplog.text


def test_bytes_like_items_are_sent():
    _, conn = run(simple(body=gen(bytearray(b"ab"), memoryview(b"cd"))))  # type: ignore[arg-type]
    assert Response(bytes(conn.sent)).rest == b"2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n"


def test_a_body_before_start_response_is_a_500(caplog):
    def app(environ, start_response):
        return [b"no status"]

    reusable, conn = run(app)
    assert not reusable
    assert_500(conn)
    assert "before calling start_response()" in caplog.text


def test_a_client_gone_while_sending_is_not_a_500(caplog):
    caplog.set_level(logging.INFO, logger="gearshift")
    connection = StandIn(simple(body=gen(b"one", b"two")))
    connection.fail_sends_after = 1  # the head (with the first chunk) goes out, then the client is gone
    assert not Exchange(connection, connection.request()).run()  # type: ignore[arg-type]
    assert b"500" not in connection.sent
    assert "went away during GET /path" in caplog.text
    assert "error in the WSGI application" not in caplog.text


def test_the_iterables_close_is_called():
    closed = []

    class Body:
        def __iter__(self):
            return iter([b"a", b"b"])

        def close(self):
            closed.append(True)

    reusable, _ = run(simple(body=Body()))
    assert reusable and closed == [True]


def test_close_is_called_after_an_error_too_and_an_error_in_close_ends_the_connection(caplog):
    closed = []

    class Body:
        def __iter__(self):
            raise RuntimeError("iteration failed")

        def close(self):
            closed.append(True)

    reusable, conn = run(simple(body=Body()))
    assert not reusable and closed == [True]
    assert_500(conn)

    class BadClose:
        def __iter__(self):
            return iter([b"ok"])

        def close(self):
            raise RuntimeError("close failed")

    reusable, conn = run(simple(body=BadClose()))
    assert not reusable  # the response went out whole, but the app is not trusted with another
    assert Response(bytes(conn.sent)).rest == b"2\r\nok\r\n0\r\n\r\n"
    assert "error closing the response iterable of GET /path" in caplog.text


# -- write() and start_response() ---------------------------------------------------------------


def test_the_write_callable_streams_chunks():
    def app(environ, start_response):
        write = start_response("200 OK", [])
        write(b"a")
        write(b"bc")
        return [b"d"]

    reusable, conn = run(app)
    assert reusable
    assert Response(bytes(conn.sent)).rest == b"1\r\na\r\n2\r\nbc\r\n1\r\nd\r\n0\r\n\r\n"


def test_write_with_a_content_length_sends_it_unframed():
    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Length", "3")])
        write(b"ab")
        write(b"c")
        return []

    reusable, conn = run(app)
    assert reusable
    assert Response(bytes(conn.sent)).rest == b"abc"


def test_write_refuses_what_is_not_bytes():
    errors = []

    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Length", "2")])
        try:
            write("no")
        except TypeError as exc:
            errors.append(exc)
        return [b"ok"]

    reusable, conn = run(app)
    assert reusable and len(errors) == 1
    assert Response(bytes(conn.sent)).rest == b"ok"


def test_a_second_start_response_without_exc_info_is_an_error():
    def app(environ, start_response):
        start_response("200 OK", [])
        start_response("201 Created", [])
        return [b"x"]

    reusable, conn = run(app)
    assert not reusable
    assert_500(conn)


def test_start_response_with_exc_info_before_the_head_replaces_the_status():
    def app(environ, start_response):
        start_response("200 OK", [("X-First", "1")])
        try:
            raise ValueError("app-level failure")
        except ValueError:
            start_response("503 Service Unavailable", [("X-Second", "2")], sys.exc_info())
        return [b"sorry"]

    reusable, conn = run(app)
    response = Response(bytes(conn.sent))
    assert reusable
    assert response.status_line == "HTTP/1.1 503 Service Unavailable"
    assert response.values("X-Second") == ["2"] and not response.values("X-First")
    assert response.rest == b"sorry"


def test_start_response_with_exc_info_after_the_head_reraises_it():
    raised: list[BaseException] = []
    original = ValueError("app-level failure")

    def app(environ, start_response):
        write = start_response("200 OK", [])
        write(b"partial")
        try:
            raise original
        except ValueError:
            try:
                start_response("500 Oops", [], sys.exc_info())
            except ValueError as exc:
                raised.append(exc)
                raise
        return []

    reusable, conn = run(app)
    assert raised == [original]  # the very exception, re-raised
    assert not reusable
    response = Response(bytes(conn.sent))
    assert response.status_line == "HTTP/1.1 200 OK"  # the head already went out
    assert b"Oops" not in conn.sent


def test_start_response_with_a_falsy_exc_info_is_an_ordinary_call():
    def app(environ, start_response):
        start_response("200 OK", [], None)
        return [b"x"]

    reusable, conn = run(app)
    assert reusable and Response(bytes(conn.sent)).status_line == "HTTP/1.1 200 OK"


def test_the_environ_the_application_gets():
    seen: dict[str, Any] = {}

    def app(environ, start_response):
        seen.update(environ)
        start_response("200 OK", [])
        return [b""]

    run(app, b"GET /a%20b?x=y HTTP/1.1\r\nHost: unit\r\nX-Thing: 1\r\n\r\n")
    assert seen["PATH_INFO"] == "/a b" and seen["QUERY_STRING"] == "x=y"
    assert seen["HTTP_X_THING"] == "1" and seen["REMOTE_ADDR"] == "192.0.2.1"
    assert seen["SERVER_SOFTWARE"] == SOFTWARE  # the server's base environ
    assert seen["wsgi.input"].read() == b""


# -- the request body ---------------------------------------------------------------------------


POST_5 = b"POST /upload HTTP/1.1\r\nHost: unit\r\nContent-Length: 5\r\n\r\n"


def echo_body(environ, start_response):
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


def test_the_body_is_read_through_the_connection():
    reusable, conn = run(echo_body, POST_5 + b"he", [b"l", b"lo"])
    assert reusable
    assert Response(bytes(conn.sent)).rest == b"hello"


def test_an_unread_body_is_discarded_and_the_connection_kept():
    reusable, conn = run(simple(body=[b"ok"]), POST_5 + b"he", [b"llo", b"GET /next HTTP/1.1\r\nHost: unit\r\n\r\n"])
    assert reusable
    assert Response(bytes(conn.sent)).rest == b"ok"
    assert conn.body_pieces == [b"GET /next HTTP/1.1\r\nHost: unit\r\n\r\n"]  # read up to the body's end only


def test_a_body_timeout_while_the_app_reads_is_a_408_and_closes():
    reusable, conn = run(echo_body, POST_5 + b"he", [])
    assert not reusable
    assert [e.status for e in conn.rejected] == [408]
    assert bytes(conn.sent) == b"HTTP/1.1 408 (rejected)\r\n\r\n"


def test_100_continue_is_sent_when_the_app_reads_the_body():
    wire = b"POST / HTTP/1.1\r\nHost: unit\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    reusable, conn = run(echo_body, wire, [b"hello"])
    assert reusable
    assert conn.sent.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert Response(bytes(conn.sent)[len(b"HTTP/1.1 100 Continue\r\n\r\n"):]).rest == b"hello"


def test_no_100_continue_when_the_app_ignores_the_body_and_the_connection_closes():
    wire = b"POST / HTTP/1.1\r\nHost: unit\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    reusable, conn = run(simple(body=[b"no thanks"]), wire, [b"hello"])
    assert not reusable
    assert b"100 Continue" not in conn.sent
    response = Response(bytes(conn.sent))
    assert response.status_line == "HTTP/1.1 200 OK" and response.values("Connection") == ["close"]
    assert conn.lingered  # the client may send the body anyway


def test_a_500_while_the_client_still_uploads_lingers():
    def app(environ, start_response):
        raise RuntimeError("broken app")

    reusable, conn = run(app, POST_5 + b"he", [b"llo"])
    assert not reusable
    assert_500(conn)
    assert conn.lingered


# -- wsgi.file_wrapper ------------------------------------------------------------------------


def file_app(path: Any) -> App:
    def app(environ, start_response):
        start_response("200 OK", [])
        f = open(path, "rb")  # noqa: SIM115  (closed by the server, through FileWrapper.close)
        f.seek(2)
        return environ["wsgi.file_wrapper"](f)

    return app


def test_a_real_file_goes_out_with_sendfile_and_a_content_length(tmp_path):
    path = tmp_path / "data"
    path.write_bytes(b"0123456789")
    reusable, conn = run(file_app(path))
    assert reusable
    assert conn.sendfile_calls == [(2, 8)]  # from the file's position to its end
    response = Response(bytes(conn.sent))
    assert response.values("Content-Length") == ["8"]
    assert response.rest == b"23456789"


def test_head_with_a_file_sends_no_body(tmp_path):
    path = tmp_path / "data"
    path.write_bytes(b"0123456789")
    reusable, conn = run(file_app(path), b"HEAD / HTTP/1.1\r\nHost: unit\r\n\r\n")
    assert reusable
    assert conn.sendfile_calls == []
    assert Response(bytes(conn.sent)).rest == b""
