"""socketserver compatibility: class attributes overridable as documented, the get_request()
hook, the stdlib's errors for bad addresses, its handler error semantics under sync and thread,
and gearshift.socketserver's class names (the stdlib's own suite: test_stdlib_socketserver.py)."""

from __future__ import annotations

import shutil
import socket
import socketserver as stdlib_socketserver
import subprocess
import threading

import pytest
from core_helpers import (
    HANG_GUARD,
    LineHandler,
    ask,
    connect,
    ipv6_loopback_available,
    serve,
)

import gearshift
import gearshift.socketserver

pytestmark = pytest.mark.timeout(30)

LOCALHOST = ("127.0.0.1", 0)


# -- class attributes, overridden in a subclass as socketserver documents -------------------------


@pytest.mark.skipif(not ipv6_loopback_available(), reason="IPv6 loopback unavailable")
@pytest.mark.parametrize("base", [gearshift.Server, gearshift.socketserver.TCPServer])
def test_address_family_class_attribute_selects_ipv6(base):
    class V6Server(base):
        address_family = socket.AF_INET6

    # "" would be IPv4's wildcard by default; the override binds it as IPv6's (::).
    with serve(V6Server(("", 0), LineHandler)) as server:
        assert server.socket.family == socket.AF_INET6
        assert server.address_family == socket.AF_INET6
        assert ask(("::1", server.server_address[1]), "echo v6").split()[0] == "v6"


def test_address_family_follows_the_address_when_not_overridden(tmp_path):
    assert gearshift.Server.address_family is None
    with gearshift.Server(LOCALHOST, LineHandler) as server:
        assert server.address_family == socket.AF_INET
    with gearshift.Server(str(tmp_path / "s.sock"), LineHandler) as server:
        assert server.address_family == socket.AF_UNIX
    if ipv6_loopback_available():
        with gearshift.Server(("::1", 0), LineHandler) as server:
            assert server.address_family == socket.AF_INET6


def test_socket_type_class_attribute_is_read_and_only_stream_is_served():
    class DatagramServer(gearshift.Server):
        socket_type = socket.SOCK_DGRAM

    with pytest.raises(ValueError, match="stream sockets only"):
        DatagramServer(LOCALHOST, LineHandler)
    with gearshift.Server(LOCALHOST, LineHandler) as server:
        assert server.socket_type == socket.SOCK_STREAM == server.socket.type


@pytest.mark.parametrize("reuse", [False, True])
def test_allow_reuse_address_and_port_class_attributes(reuse):
    class Reusing(gearshift.Server):
        allow_reuse_address = reuse
        allow_reuse_port = reuse

    with Reusing(LOCALHOST, LineHandler) as server:
        sock = server.socket
        assert bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)) is reuse
        assert bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)) is reuse


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss(8) to read a listener's backlog")
def test_request_queue_size_class_attribute_is_the_backlog():
    class SmallQueue(gearshift.Server):
        request_queue_size = 7

    with SmallQueue(LOCALHOST, LineHandler) as server:
        port = server.server_address[1]
        out = subprocess.run(
            ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, timeout=HANG_GUARD, check=True
        ).stdout
    # State Recv-Q Send-Q Local...: a listener's Send-Q is its backlog.
    assert out.split()[2] == "7", out


def test_timeout_class_attribute_makes_handle_request_time_out():
    timed_out = threading.Event()

    class Impatient(gearshift.Server):
        timeout = 0.01

        def handle_timeout(self):
            timed_out.set()

    with Impatient(LOCALHOST, LineHandler) as server:
        server.handle_request()
    assert timed_out.is_set()


# -- get_request(): the documented hook every connection is accepted through --------------------


class _Wrapped:
    """What a get_request() override returns instead of the raw socket (as ssl.wrap_socket would)."""

    def __init__(self, sock):
        self.sock = sock

    def __getattr__(self, name):
        return getattr(self.sock, name)


class _Seen(stdlib_socketserver.BaseRequestHandler):
    def handle(self):
        self.request.sendall(f"{type(self.request).__name__}\n".encode())


class WrappingServer(gearshift.Server):
    def __init__(self, *args, **kwargs):
        self.accepted = 0
        super().__init__(*args, **kwargs)

    def get_request(self):
        request, client_address = super().get_request()
        self.accepted += 1
        return _Wrapped(request), client_address


def _reply(address):
    with connect(address) as sock:
        return sock.makefile("rb").readline().decode().strip()


@pytest.mark.parametrize("strategy", ["sync", "thread"])
def test_get_request_override_is_used_by_serve_forever(strategy):
    with serve(WrappingServer(LOCALHOST, _Seen, strategy=strategy)) as server:
        assert [_reply(server.server_address) for _ in range(3)] == ["_Wrapped"] * 3
    assert server.accepted == 3


def test_get_request_override_is_used_by_handle_request():
    with WrappingServer(LOCALHOST, _Seen) as server, connect(server.server_address) as client:
        server.handle_request()
        assert client.makefile("rb").readline() == b"_Wrapped\n"
    assert server.accepted == 1


def test_get_request_accepts_from_whichever_listener_is_ready(tmp_path):
    # With several listeners, the default get_request() (and an override calling it) accepts
    # from the one the loop found readable, not only from self.socket.
    server = WrappingServer(LOCALHOST, _Seen, strategy="thread")
    second = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    second.bind(str(tmp_path / "second.sock"))
    second.listen()
    server.add_listener(second, own=True)
    with serve(server):
        assert _reply(str(tmp_path / "second.sock")) == "_Wrapped"
        assert _reply(server.server_address) == "_Wrapped"
        assert _reply(str(tmp_path / "second.sock")) == "_Wrapped"
    assert server.accepted == 3


# -- the stdlib's errors for bad addresses --------------------------------------------------------


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_port_out_of_range_raises_overflow_error_like_the_stdlib(host):
    with pytest.raises(OverflowError):
        stdlib_socketserver.TCPServer((host, -1), LineHandler)
    with pytest.raises(OverflowError):
        gearshift.Server((host, -1), LineHandler)


def test_unresolvable_host_raises_gaierror_naming_it():
    host = "no such host.invalid"  # a space: refused by the resolver at once, no DNS query
    with pytest.raises(socket.gaierror) as info:
        gearshift.Server((host, 0), LineHandler)
    assert repr(host) in str(info.value)


# -- handler errors: exactly the stdlib's semantics ------------------------------------------------


class _Boom(stdlib_socketserver.BaseRequestHandler):
    def handle(self):
        self.server.events.append("handle")
        raise self.server.exception("from the handler")


class Recording(gearshift.Server):
    def __init__(self, exception, **kwargs):
        self.exception = exception
        self.events = []
        self.done = threading.Event()
        super().__init__(LOCALHOST, _Boom, **kwargs)

    def handle_error(self, request, client_address):
        self.events.append("handle_error")

    def shutdown_request(self, request):
        self.events.append("shutdown_request")
        super().shutdown_request(request)
        self.done.set()


def test_sync_exception_is_handled_then_the_request_shut_down():
    with Recording(ValueError) as server, connect(server.server_address):
        server.handle_request()
    assert server.events == ["handle", "handle_error", "shutdown_request"]


@pytest.mark.parametrize("exception", [SystemExit, KeyboardInterrupt])
def test_sync_base_exception_shuts_down_the_request_once_and_propagates(exception):
    with Recording(exception) as server, connect(server.server_address), pytest.raises(exception):
        server.handle_request()
    assert server.events == ["handle", "shutdown_request"]


def test_sync_base_exception_stops_serve_forever_after_one_shutdown_request():
    server = Recording(SystemExit)
    with pytest.raises(SystemExit), serve(server), connect(server.server_address):
        assert server.done.wait(HANG_GUARD)
    assert server.events == ["handle", "shutdown_request"]


@pytest.mark.parametrize("exception", [ValueError, SystemExit])
def test_thread_semantics_are_threading_mixins(exception):
    # finish_request; except Exception: handle_error; finally: shutdown_request; a SystemExit
    # then ends the request thread (threading.excepthook), not the server.
    seen: list[type[BaseException]] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: seen.append(args.exc_type)
    try:
        with serve(Recording(exception, strategy="thread")) as server, connect(server.server_address):
            assert server.done.wait(HANG_GUARD)
    finally:
        threading.excepthook = previous
    if exception is ValueError:
        assert server.events == ["handle", "handle_error", "shutdown_request"]
        assert seen == []
    else:
        assert server.events == ["handle", "shutdown_request"]
        assert seen == [SystemExit]


# -- gearshift.socketserver: the stdlib's names ---------------------------------------------------


def test_all_stdlib_stream_names_are_offered():
    datagram = {
        name for name in stdlib_socketserver.__all__
        if "UDP" in name or ("Datagram" in name and "Handler" not in name)
    }
    assert set(gearshift.socketserver.__all__) == set(stdlib_socketserver.__all__) - datagram | {
        "ForkingUnixStreamServer"  # Python 3.12+ has it; gearshift has it on every version
    }
    for name in gearshift.socketserver.__all__:
        assert getattr(gearshift.socketserver, name) is not None
    for handler in ("BaseRequestHandler", "StreamRequestHandler", "DatagramRequestHandler"):
        assert getattr(gearshift.socketserver, handler) is getattr(stdlib_socketserver, handler)


@pytest.mark.parametrize("name", ["UDPServer", "ThreadingUnixDatagramServer"])
def test_datagram_servers_are_refused_by_name(name):
    with pytest.raises(AttributeError, match="stream sockets only"):
        getattr(gearshift.socketserver, name)


@pytest.mark.parametrize(
    ("cls", "strategy", "family"),
    [
        ("TCPServer", "sync", socket.AF_INET),
        ("ThreadingTCPServer", "thread", socket.AF_INET),
        ("ForkingTCPServer", "fork", socket.AF_INET),
        ("UnixStreamServer", "sync", socket.AF_UNIX),
        ("ThreadingUnixStreamServer", "thread", socket.AF_UNIX),
        ("ForkingUnixStreamServer", "fork", socket.AF_UNIX),
    ],
)
def test_server_classes_select_their_strategy(cls, strategy, family, tmp_path):
    server_class = getattr(gearshift.socketserver, cls)
    assert server_class.address_family == family
    address = str(tmp_path / "s.sock") if family == socket.AF_UNIX else LOCALHOST
    with server_class(address, LineHandler) as server:  # building a fork server forks nothing
        assert isinstance(server, gearshift.Server)
        assert server.strategy.name == strategy
        assert server.socket.family == family


def test_mixins_select_the_strategy_whatever_their_order():
    ss = gearshift.socketserver

    class MixinLast(ss.TCPServer, ss.ThreadingMixIn):  # the stdlib would silently stay sync
        pass

    class MixinFirst(ss.ForkingMixIn, ss.TCPServer):
        pass

    with MixinLast(LOCALHOST, LineHandler) as last, MixinFirst(LOCALHOST, LineHandler) as first:
        assert last.strategy.name == "thread"
        assert first.strategy.name == "fork"

    class Both(ss.ForkingMixIn, ss.ThreadingMixIn, ss.TCPServer):
        pass

    with pytest.raises(TypeError, match="choose one"):
        Both(LOCALHOST, LineHandler)


def test_mixin_class_attributes_are_strategy_options():
    ss = gearshift.socketserver

    class Daemonic(ss.ThreadingTCPServer):
        daemon_threads = True
        block_on_close = False

    class Few(ss.ForkingTCPServer):
        max_children = 3
        block_on_close = False

    with Daemonic(LOCALHOST, LineHandler) as threaded, Few(LOCALHOST, LineHandler) as forking:
        assert threaded.strategy.daemon_threads is True
        assert threaded.strategy.block_on_close is False
        assert forking.strategy.max_children == 3
        assert forking.strategy.block_on_close is False
        assert not forking.active_children
        assert len(threaded._threads) == 0
    with ss.ThreadingTCPServer(LOCALHOST, LineHandler) as server:
        assert server.strategy.daemon_threads is False and server.strategy.block_on_close is True
        server.daemon_threads = True  # set on an instance, as socketserver users do
        assert server.strategy.daemon_threads is True


def test_bad_mixin_option_value_is_a_clear_error():
    class Bad(gearshift.socketserver.ForkingTCPServer):
        max_children = 0

    with pytest.raises(ValueError, match="max_children"):
        Bad(LOCALHOST, LineHandler)


def test_tcp_server_positional_bind_and_activate():
    server = gearshift.socketserver.TCPServer(LOCALHOST, LineHandler, False)
    try:
        server.server_bind()
        server.server_activate()
    except BaseException:
        server.server_close()
        raise
    with serve(server):
        assert ask(server.server_address, "echo late").split()[0] == "late"
