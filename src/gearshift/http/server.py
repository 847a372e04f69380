"""``make_server``: the core's :class:`~gearshift.Server` serving a WSGI application over HTTP/1.1.

The HTTP layer is a request handler class plus a few server attributes (the app, the limits,
the environ keys that do not change between requests); the strategy is whatever the user named,
and the HTTP code only reads its ``multithread``/``multiprocess`` flags.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._version import __version__
from ..core.plugins import reserve_options, resolve_strategy
from ..core.server import Server
from ..core.strategy import Strategy, check_options
from .accesslog import DEFAULT_FORMAT, AccessRecord, compile_format
from .connection import Connection, ReadAheadConnection, WSGIRequestHandler, enable_tls, http_date
from .errors import HTTPError, ProtocolLimits
from .proxy import DEFAULT_FORWARDED_ALLOW_IPS, AllowList, ProxyHeaders
from .wsgi import FileWrapper

if TYPE_CHECKING:
    import ssl as ssl_module

WSGIApp = Callable[..., Any]
SERVER_SOFTWARE = f"gearshift/{__version__}"


#: Option names that no longer exist, and what replaced them.
RENAMED_OPTIONS = {
    "header_timeout": "head_timeout (the request head), body_timeout and min_body_rate (the request "
                      "body), send_timeout and min_send_rate (the response)",
    "drain_timeout": "graceful_timeout",
}
_TIMEOUTS = ("keep_alive_timeout", "head_timeout", "body_timeout", "min_body_rate", "send_timeout", "min_send_rate")
_SIZES = ("max_body_in_memory", "send_buffer", "send_spool")
_OWN_OPTIONS = (*_TIMEOUTS, "buffer_request_body", *_SIZES, "forwarded_allow_ips", "root_path", "access_log_format")


@dataclass(frozen=True)
class HTTPConfig:
    """HTTP settings, given to ``make_server`` as keyword options with these names.

    How long a client may take, each bound closing one way of holding a connection (under
    ``thread`` a thread, under ``fork`` a process, under ``sync`` the whole server's turn):

    * the request head has a total deadline (``head_timeout``), from its first byte to its end:
      a head is small, so a client that needs longer is not a client, whatever it trickles;
    * the request body and the response have a per-wait bound (``body_timeout``,
      ``send_timeout``) plus a minimum rate (``min_body_rate``, ``min_send_rate``), as Apache's
      mod_reqtimeout does for bodies: the waits of one body (one response) may total
      ``timeout + bytes moved / rate`` seconds. A total deadline would cut off a legitimate big
      upload on a slow link; a per-wait bound alone lets a client that sends a byte just before
      each wait runs out keep the connection forever; a rate does neither. Only time spent
      waiting for the client counts, not the application's own time between reads or writes.
      A rate of 0 leaves the per-wait bound alone.

    A body too slow is answered 408 if the application has not started its response (then the
    connection closes), else the connection closes; ``wsgi.input.read()`` raises
    :class:`~gearshift.http.errors.RequestTimeout` (a ``TimeoutError``) in the application, never
    a short read. A response too slow closes the connection.
    """

    #: Seconds an idle keep-alive connection is kept open; 0 closes after every response.
    keep_alive_timeout: float = 5.0
    #: Seconds a client has to send a complete request head once it starts (on a new connection,
    #: to start one too). 408 past it. Closes slowloris-style connections.
    head_timeout: float = 10.0
    #: Seconds each wait for request-body bytes may take.
    body_timeout: float = 10.0
    #: Bytes per second a request body must average over the time spent waiting for it, after
    #: the first ``body_timeout`` seconds; 0 for no minimum.
    min_body_rate: float = 500.0
    #: Seconds each wait for the client to take response bytes may take.
    send_timeout: float = 10.0
    #: Bytes per second the client must take a response at, over the time spent waiting for it,
    #: after the first ``send_timeout`` seconds; 0 for no minimum.
    min_send_rate: float = 500.0
    #: Under a strategy that receives requests in the loop before dispatching them
    #: (``threadpool``): receive the whole body too, so that the application's ``wsgi.input``
    #: never waits for the client and a slow upload holds no thread. False: only the head is
    #: read ahead, and ``wsgi.input`` reads the network as the application asks (for an app
    #: that streams uploads as they arrive). Other strategies never read ahead.
    buffer_request_body: bool = True
    #: Bytes of one request body kept in memory while it is read ahead; past it the body goes
    #: to a temporary file (``tempfile``, so ``TMPDIR``). Memory for uploads is then at most this
    #: much per connection, whatever the bodies' sizes, and the usual small bodies (forms, JSON)
    #: never touch the disk.
    max_body_in_memory: int = 65536
    #: Bytes of responses kept in memory per connection when the client reads slower than the
    #: application writes, where the loop writes for the application's thread (``threadpool``,
    #: ``thread``). A response the socket did not take at once is a large one: 64 KiB keeps
    #: 1,000 slow readers within 64 MB; beyond it bytes go to a temporary file.
    send_buffer: int = 64 * 1024
    #: Bytes kept in all (memory and temporary file) per connection before the application's
    #: thread waits for the client: responses up to about this size leave the thread free at
    #: once. Disk, not RAM (mind a ``TMPDIR`` on tmpfs): 1,000 slow readers of 8 MB cost up to
    #: 8 GB of it. A file response (``wsgi.file_wrapper``) is not copied and does not count.
    send_spool: int = 8 * 1024 * 1024
    #: The peers whose forwarding headers (``X-Forwarded-*``, ``Forwarded``) are believed:
    #: addresses and CIDR ranges, ``*`` for any peer, ``unix`` for Unix-socket peers; a string
    #: separated by commas or spaces, or a sequence of them. Empty: none (see ``proxy.py``).
    forwarded_allow_ips: str | tuple[str, ...] = DEFAULT_FORWARDED_ALLOW_IPS
    #: The path the application is mounted under (``/app``): ``SCRIPT_NAME``, and removed from
    #: the start of ``PATH_INFO`` where a request's path starts with it.
    root_path: str = ""
    #: The access line: gunicorn's atoms (``%(h)s %(r)s %(s)s ...``) or ``json`` (see accesslog.py).
    access_log_format: str = DEFAULT_FORMAT
    limits: ProtocolLimits = field(default_factory=ProtocolLimits)

    def __post_init__(self) -> None:
        allow = self.forwarded_allow_ips
        if not isinstance(allow, str):
            if isinstance(allow, (list, tuple, set, frozenset)):
                object.__setattr__(self, "forwarded_allow_ips", tuple(allow))
            else:
                raise ValueError(f"forwarded_allow_ips must be a string or a list of strings, not {allow!r}")
        AllowList(self.forwarded_allow_ips)  # raises ValueError naming a bad entry
        root = self.root_path
        if not isinstance(root, str) or (root and (not root.startswith("/") or not root.isprintable())):
            raise ValueError(f"root_path must be empty or a path starting with /, such as /app, not {root!r}")
        object.__setattr__(self, "root_path", root.rstrip("/"))
        compile_format(self.access_log_format)  # raises ValueError naming an unknown atom
        if not isinstance(self.buffer_request_body, bool):
            raise ValueError(f"buffer_request_body must be True or False, not {self.buffer_request_body!r}")
        for name in _TIMEOUTS:
            value = getattr(self, name)
            unit = "bytes per second" if name.startswith("min_") else "seconds"
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a number of {unit} >= 0 (and finite), not {value!r}")
        for name in ("head_timeout", "body_timeout", "send_timeout"):
            if getattr(self, name) == 0:
                raise ValueError(f"{name} must be > 0")
        for name in _SIZES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a whole number of bytes >= 0, not {value!r}")

    @classmethod
    def option_names(cls) -> list[str]:
        limits = [f.name for f in dataclasses.fields(ProtocolLimits)]
        return sorted([*_OWN_OPTIONS, *limits])

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> HTTPConfig:
        """Build from the HTTP subset of ``options`` (removing those keys from it)."""
        limit_names = {f.name for f in dataclasses.fields(ProtocolLimits)}
        limits = ProtocolLimits(**{k: options.pop(k) for k in list(options) if k in limit_names})
        own = {k: options.pop(k) for k in _OWN_OPTIONS if k in options}
        return cls(limits=limits, **own)


#: The HTTP options, as :func:`make_server` takes them next to the strategy's.
HTTP_OPTIONS = tuple(HTTPConfig.option_names())
# No strategy may declare an option with one of these names: make_server could not tell whose it is.
reserve_options(HTTP_OPTIONS, owner="the HTTP layer (make_server)")


#: The answer to a request no worker is free for. One second: long enough for a burst to pass,
#: short enough that a client honouring it is not kept waiting.
OVERLOADED = HTTPError(503, "the server is too busy to take this request; try again shortly",
                       headers=(("Retry-After", "1"),))


class WSGIServer(Server):
    """A :class:`gearshift.Server` whose handler speaks HTTP/1.1 to a WSGI application."""

    def __init__(
        self,
        server_address: Any,
        app: WSGIApp,
        strategy: str | type[Strategy] = "sync",
        *,
        config: HTTPConfig | None = None,
        request_handler: type[WSGIRequestHandler] | None = None,
        ssl_context: ssl_module.SSLContext | None = None,
        listener: socket.socket | None = None,
        graceful_timeout: float | None = None,
        umask: int | None = None,
        **strategy_options: Any,
    ) -> None:
        if not callable(app):
            raise TypeError(f"app must be a WSGI callable, not {app!r}")
        if ssl_context is not None:
            import ssl as ssl_module  # only TLS servers pay for importing ssl (see enable_tls)

            if not isinstance(ssl_context, ssl_module.SSLContext):
                raise TypeError(f"ssl_context must be an ssl.SSLContext, not {ssl_context!r}")
            enable_tls()
        self.app = app
        self.config = config or HTTPConfig()
        self.ssl_context = ssl_context
        #: Connections holding a temporary file of a request body they are reading ahead (from
        #: the loop or a worker), so that closing one anyhow removes its file.
        self.spooling: set[ReadAheadConnection] = set()
        super().__init__(
            server_address, request_handler or WSGIRequestHandler, strategy,
            listener=listener, graceful_timeout=graceful_timeout, umask=umask, **strategy_options,
        )
        for sock in self.listeners:
            self._defer_accept(sock)
        if ssl_context is not None:
            self.listeners = [self._wrap(s) for s in self.listeners]
        self.base_environ = self._base_environ()
        allow = AllowList(self.config.forwarded_allow_ips)
        #: Applies a trusted peer's forwarding headers; None when no peer is trusted.
        self.proxy_headers = ProxyHeaders(allow) if allow else None
        self.format_access = compile_format(self.config.access_log_format)
        self._server_header = f"Server: {SERVER_SOFTWARE}\r\n".encode()

    def add_listener(self, sock: socket.socket, *, own: bool = False) -> None:
        """Add a listening socket (see :meth:`Server.add_listener`); under ``ssl_context`` it
        serves HTTPS too."""
        self._defer_accept(sock)
        if self.ssl_context is not None:
            sock = self._wrap(sock)
        super().add_listener(sock, own=own)

    def _defer_accept(self, sock: socket.socket) -> None:
        """HTTP clients speak first: let the kernel hand over a connection only once its first
        bytes have arrived (Linux TCP_DEFER_ACCEPT). A strategy then never spends a turn (under
        ``thread``, a thread) on a connection with nothing to read yet, and connections that
        never send anything wait in the kernel, not in gearshift."""
        option = getattr(socket, "TCP_DEFER_ACCEPT", None)
        if option is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, option, max(1, round(self.config.head_timeout)))

    def _wrap(self, sock: socket.socket) -> socket.socket:
        import ssl as ssl_module

        assert self.ssl_context is not None
        if isinstance(sock, ssl_module.SSLSocket):
            return sock
        # No handshake in accept(): it happens on the connection's first non-blocking read, so a
        # slow TLS client never stalls the loop.
        wrapped = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        wrapped.setblocking(False)
        return wrapped

    def _base_environ(self) -> dict[str, Any]:
        address = self.server_address
        if isinstance(address, tuple):
            name, port = str(address[0]), str(address[1])
        else:
            name, port = "localhost", ""
        return {
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "https" if self.ssl_context is not None else "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": self.strategy.multithread,
            "wsgi.multiprocess": self.strategy.multiprocess,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
            "wsgi.file_wrapper": FileWrapper,
            "SERVER_NAME": name,
            "SERVER_PORT": port,
            "SERVER_SOFTWARE": SERVER_SOFTWARE,
            "SCRIPT_NAME": self.config.root_path,
            "gearshift.strategy": self.strategy.name,
        }

    def request_ready(self, request: socket.socket, client_address: Any) -> bool:
        """Read the connection's request ahead, in the loop and without blocking (see
        :class:`~gearshift.http.connection.ReadAheadConnection`): True once a worker can serve
        it without waiting for the client, or answer its error; else the connection went back
        to the loop until more arrives, or is to be closed."""
        connection = self.resumed_state(request)
        if not isinstance(connection, ReadAheadConnection):
            connection = ReadAheadConnection(request, client_address, self)
        if connection.read_ahead():
            self.set_state(request, client_address, connection)
            return True
        return False

    def handle_idle_timeout(self, request: socket.socket, client_address: Any) -> None:
        """A connection that went quiet in the middle of a request head, or of a body read
        ahead, gets its 408."""
        connection = self.resumed_state(request)
        if isinstance(connection, Connection):
            connection.release()
            if not connection.parser.idle:
                connection.reject_late()
        super().handle_idle_timeout(request, client_address)

    def close_request(self, request: socket.socket) -> None:
        """Close ``request``, and the temporary file of a body it was receiving."""
        if self.spooling:  # a connection parked with part of a body in a file (server_close)
            connection = self.resumed_state(request)
            if isinstance(connection, Connection):
                connection.release()
        super().close_request(request)

    def handle_overload(self, request: socket.socket, client_address: Any) -> None:
        """No worker is free for this connection: answer 503 with ``Retry-After`` (in the loop,
        so without blocking) rather than close it unanswered."""
        connection = self.resumed_state(request)
        if not isinstance(connection, Connection):
            connection = Connection(request, client_address, self)
        connection.release()
        pending = connection.parser.requests
        connection.reject(OVERLOADED, blocking=False, request=pending[0] if pending else None)
        super().handle_overload(request, client_address)

    def proxy_headers_for(self, client_address: Any) -> ProxyHeaders | None:
        """What applies forwarding headers on a connection from ``client_address``: None unless
        that peer is trusted, so that no request from any other peer pays for looking."""
        proxy = self.proxy_headers
        return proxy if proxy is not None and proxy.allow.trusts_peer(client_address) else None

    def access_line(self, record: AccessRecord) -> str:
        """The access-log line of ``record``, in ``access_log_format``."""
        return self.format_access(record)

    def date_and_server(self) -> bytes:
        """The ``Date`` and ``Server`` header lines every response carries."""
        return b"Date: " + http_date() + b"\r\n" + self._server_header


def make_server(
    host: str,
    port: int,
    app: WSGIApp,
    strategy: str | type[Strategy] = "sync",
    *,
    request_handler: type[WSGIRequestHandler] | None = None,
    ssl_context: ssl_module.SSLContext | None = None,
    fd: int | None = None,
    graceful_timeout: float | None = None,
    umask: int | None = None,
    **options: Any,
) -> WSGIServer:
    """Serve ``app`` over HTTP/1.1 on ``host:port`` with the named concurrency strategy.

    ``make_server("127.0.0.1", 8000, app, strategy="fork", max_children=40)``

    ``options`` are the strategy's options and the HTTP options (``keep_alive_timeout``,
    ``head_timeout``, ``body_timeout``, ``min_body_rate``, ``send_timeout``, ``min_send_rate``,
    ``max_request_line``, ``max_header_size``, ``max_headers``, ``max_header_block``,
    ``max_body_size``, ``buffer_request_body``, ``max_body_in_memory``, ``forwarded_allow_ips``,
    ``root_path``, ``access_log_format``; see :class:`HTTPConfig`); a name that is neither raises
    ``TypeError`` listing both sets (:func:`gearshift.core.check_options`). ``host`` may be
    ``"unix:/path"`` for a Unix socket. ``port=0`` picks a free port (see
    ``server.server_address``). ``fd`` adopts an already-bound listening socket, as werkzeug's
    ``fd=`` does. ``umask`` sets the mode of a Unix socket it
    binds to ``0o777 & ~umask`` (``umask=0o007``: the owner and group may connect).
    ``graceful_timeout`` bounds how long ``server_close()`` waits for in-flight
    requests (None: no bound). Call ``serve_forever()`` on the result.
    """
    strategy_class = resolve_strategy(strategy)
    check_options(strategy_class, options, HTTP_OPTIONS, extra_label="HTTP options", renamed=RENAMED_OPTIONS)
    config = HTTPConfig.from_options(options)
    listener = None
    if fd is not None:
        listener = socket.socket(fileno=fd)
        address: Any = listener.getsockname()
    elif host.startswith("unix:"):
        address = host[len("unix:"):]
    else:
        address = (host, port)
    return WSGIServer(
        address, app, strategy_class, config=config, request_handler=request_handler,
        ssl_context=ssl_context, listener=listener, graceful_timeout=graceful_timeout, umask=umask, **options,
    )
