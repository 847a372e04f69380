"""``make_server``'s API, listeners and HTTPS, and idle keep-alive connections, in-process.

``fork`` is left to the subprocess-based tests: forking from pytest's threaded process is what
the fork strategy itself tells users not to do.
"""

from __future__ import annotations

import gc
import shutil
import socket
import threading

import pytest
from apps import app
from client import Client, serving, tls_contexts, wait_until

import gearshift

pytestmark = pytest.mark.timeout(30)


def hello(environ, start_response):
    body = threading.current_thread().name.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def test_make_server_returns_a_gearshift_server_on_a_free_port():
    with gearshift.make_server("127.0.0.1", 0, app, strategy="thread", daemon_threads=True) as server:
        assert isinstance(server, gearshift.Server)
        assert server.strategy.name == "thread" and server.strategy.daemon_threads is True
        assert server.server_address[1] > 0
        with serving(server), Client(server.server_address[1]) as c:
            assert c.request("GET", "/length?n=2").body == b"xx"


def test_option_errors_name_the_option_and_list_the_valid_ones():
    with pytest.raises(TypeError) as info:
        gearshift.make_server("127.0.0.1", 0, app, strategy="fork", keepalive_timeout=3)
    message = str(info.value)
    assert "'keepalive_timeout'" in message and "max_children" in message and "keep_alive_timeout" in message
    for bad in ({"keep_alive_timeout": -1}, {"head_timeout": 0}, {"max_body_size": -1},
                {"max_headers": "many"}, {"max_children": 0}):
        with pytest.raises(ValueError):
            gearshift.make_server("127.0.0.1", 0, app, strategy="fork", **bad)
    with pytest.raises(gearshift.UnknownStrategyError,
                       match="available strategies: fork, prefork, sync, thread, threadpool"):
        gearshift.make_server("127.0.0.1", 0, app, strategy="threads")
    with pytest.raises(TypeError, match="WSGI callable"):
        gearshift.make_server("127.0.0.1", 0, "not an app")


def test_an_unknown_option_lists_the_strategy_and_the_http_options_in_one_message():
    with pytest.raises(TypeError) as info:
        gearshift.make_server("127.0.0.1", 0, app, strategy="fork", max_chidren=3)
    assert str(info.value).startswith(
        "unexpected option 'max_chidren' (did you mean 'max_children'?): strategy 'fork' accepts: "
        "block_on_close, freeze_gc, max_children; HTTP options: access_log_format, body_timeout, buffer_request_body, "
        "forwarded_allow_ips, head_timeout, "
    )


class _TakesHeadTimeout(gearshift.Strategy):
    name = "takes-head-timeout"

    def __init__(self, server, *, head_timeout: float = 1.0) -> None:
        super().__init__(server)

    def process_request(self, request, client_address):
        self.handle_connection(request, client_address)


def test_a_strategy_class_whose_option_is_an_http_option_is_refused():
    with pytest.raises(TypeError, match="strategy 'takes-head-timeout' declares the option 'head_timeout', which is "
                                        "also one of the HTTP options"):
        gearshift.make_server("127.0.0.1", 0, app, strategy=_TakesHeadTimeout, head_timeout=3)


class _AnyOptions(gearshift.Strategy):
    name = "any-options-http-test"

    def __init__(self, server, **options) -> None:
        super().__init__(server)
        self.options = options

    def process_request(self, request, client_address):
        self.handle_connection(request, client_address)


def test_a_strategy_taking_any_keyword_gets_every_option_that_is_not_http():
    with gearshift.make_server("127.0.0.1", 0, app, strategy=_AnyOptions, colour="red", head_timeout=3) as server:
        assert server.strategy.options == {"colour": "red"}
        assert server.config.head_timeout == 3


def test_unix_socket(tmp_path):
    path = tmp_path / "http.sock"
    with gearshift.make_server(f"unix:{path}", 0, app) as server, serving(server):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(path))
            sock.sendall(b"GET /environ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 200 ") and b'"REMOTE_ADDR": ""' in data
    assert not path.exists()


def test_fd_adopts_a_bound_listening_socket():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    with gearshift.make_server("ignored", 0, app, fd=listener.detach()) as server, serving(server):
        assert server.server_address == ("127.0.0.1", port)
        with Client(port) as c:
            assert c.request("GET", "/length?n=1").body == b"x"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_https(tmp_path):
    context, client_context = tls_contexts(tmp_path)
    with gearshift.make_server("127.0.0.1", 0, app, strategy="sync", ssl_context=context) as server, serving(server):
        port = server.server_address[1]
        idle = socket.create_connection(("127.0.0.1", port))  # a client that never handshakes
        try:
            for _ in range(2):  # the sync loop is not stuck on the idle client's handshake
                with socket.create_connection(("127.0.0.1", port)) as raw, \
                        client_context.wrap_socket(raw, server_hostname="localhost") as tls:
                    tls.sendall(b"GET /environ HTTP/1.1\r\nHost: t\r\n\r\n" * 2)
                    data = b""
                    while data.count(b"HTTP/1.1 200") < 2 or not data.endswith(b"}"):
                        data += tls.recv(65536)
                assert b'"wsgi.url_scheme": "https"' in data
        finally:
            idle.close()


def test_idle_keep_alive_connections_hold_no_thread():
    with gearshift.make_server("127.0.0.1", 0, hello, strategy="thread") as server, serving(server):
        clients = [Client(server.server_address[1]) for _ in range(20)]
        try:
            for c in clients:
                assert c.request("GET", "/").body.startswith(b"gearshift-request-")
            assert wait_until(lambda: server.strategy.active_threads == 0)
            for c in clients:  # still open, still served
                assert c.request("GET", "/").status == 200
        finally:
            for c in clients:
                c.close()


def test_sync_interleaves_keep_alive_clients():
    with gearshift.make_server("127.0.0.1", 0, hello, strategy="sync") as server, serving(server):
        a, b = Client(server.server_address[1]), Client(server.server_address[1])
        try:
            for _ in range(3):  # would deadlock if the loop stayed with one connection
                assert a.request("GET", "/").status == 200
                assert b.request("GET", "/").status == 200
        finally:
            a.close()
            b.close()


def _fetch_and_close(port: int) -> bytes:
    """One ``Connection: close`` request; returns once the server has closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


@pytest.mark.parametrize("strategy", ["sync", "threadpool"])
def test_a_closed_connection_leaves_nothing_for_the_garbage_collector(strategy):
    # What a connection holds (its parser and llhttp's, its requests and their headers) is freed
    # by reference counting as it closes. A reference cycle per connection would keep all of it
    # until the next collection, and make every collection walk it.
    with gearshift.make_server("127.0.0.1", 0, hello, strategy=strategy) as server, serving(server):
        port = server.server_address[1]
        assert _fetch_and_close(port).startswith(b"HTTP/1.1 200 ")  # first-request work is done
        enabled = gc.isenabled()
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)  # keep what a collection finds unreachable, to look at
        try:
            for _ in range(10):
                assert _fetch_and_close(port).startswith(b"HTTP/1.1 200 ")
            gc.collect()
            left = sorted({type(o).__qualname__ for o in gc.garbage
                           if type(o).__module__.startswith(("gearshift", "httptools"))})
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            if enabled:
                gc.enable()
    assert left == []


def test_server_close_closes_idle_connections_and_drains_requests():
    in_app = threading.Event()

    def slow(environ, start_response):
        if environ["PATH_INFO"] == "/busy":
            in_app.set()
            # still running when server_close() begins: its response is the drained one
            assert wait_until(lambda: server.closing, timeout=10)
        return hello(environ, start_response)

    server = gearshift.make_server("127.0.0.1", 0, slow, strategy="thread")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        idle, busy = Client(server.server_address[1]), Client(server.server_address[1])
        assert idle.request("GET", "/").status == 200
        busy.send(b"GET /busy HTTP/1.1\r\nHost: t\r\n\r\n")
        assert in_app.wait(10)
        server.shutdown()
        server.server_close()  # drains: the slow request completes, with Connection: close
        r = busy.response()
        assert r.status == 200 and r.headers["Connection"] == "close"
        assert idle.at_eof(timeout=5) and busy.at_eof(timeout=5)
        idle.close()
        busy.close()
    finally:
        server.server_close()
        thread.join(5)


def test_the_old_drain_timeout_name_points_at_graceful_timeout():
    with pytest.raises(TypeError, match="'drain_timeout' was renamed: use graceful_timeout"):
        gearshift.make_server("127.0.0.1", 0, app, drain_timeout=5)
    server = gearshift.make_server("127.0.0.1", 0, app, graceful_timeout=5)
    server.server_close()
    assert server.graceful_timeout == 5.0
