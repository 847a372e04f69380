"""socketserver's class names on gearshift: ``import gearshift.socketserver as socketserver``.

Each stdlib server class is a thin :class:`gearshift.Server` subclass: the mixins choose the
strategy (``ThreadingMixIn`` -> ``thread``, ``ForkingMixIn`` -> ``fork``, neither -> ``sync``)
wherever they sit among the bases, and their class attributes (``daemon_threads``,
``block_on_close``, ``max_children``) become the strategy's options. The request handler classes
are the stdlib's own. Stream sockets only: there are no datagram (UDP, Unix datagram) servers.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, KeysView
from socketserver import (
    BaseRequestHandler,
    DatagramRequestHandler,
    StreamRequestHandler,
)
from typing import Any

from .core.server import Server
from .core.strategy import Strategy
from .strategies.fork import ForkStrategy
from .strategies.thread import ThreadStrategy

__all__ = [
    "BaseRequestHandler",
    "BaseServer",
    "DatagramRequestHandler",
    "ForkingMixIn",
    "ForkingTCPServer",
    "ForkingUnixStreamServer",
    "StreamRequestHandler",
    "TCPServer",
    "ThreadingMixIn",
    "ThreadingTCPServer",
    "ThreadingUnixStreamServer",
    "UnixStreamServer",
]

#: socketserver's base class; here the server every class of this module derives from.
BaseServer = Server

_DATAGRAM_SERVERS = frozenset({
    "UDPServer", "ThreadingUDPServer", "ForkingUDPServer",
    "UnixDatagramServer", "ThreadingUnixDatagramServer", "ForkingUnixDatagramServer",
})

#: Mixin class attributes that are strategy options, read per request or at close by the
#: strategies as by socketserver (so setting one on a server instance still takes effect).
_STRATEGY_OPTIONS = frozenset({"daemon_threads", "block_on_close", "max_children"})


class ThreadingMixIn:
    """One thread per request: the ``thread`` strategy."""

    strategy: Strategy
    #: Request threads are daemon threads, which ``server_close()`` does not wait for.
    daemon_threads: bool = False
    #: ``server_close()`` waits for the request threads still running.
    block_on_close: bool = True

    @property
    def _threads(self) -> set[threading.Thread]:
        # socketserver's name for the request threads it keeps (CPython's test suite reads it):
        # here, those still running.
        strategy = self.strategy
        assert isinstance(strategy, ThreadStrategy)
        return strategy._threads


class ForkingMixIn:
    """One child process per request: the ``fork`` strategy."""

    strategy: Strategy
    #: At most this many children at once; a request beyond waits for one to exit.
    max_children: int = 40
    #: ``server_close()`` waits for the children still running.
    block_on_close: bool = True

    @property
    def active_children(self) -> KeysView[int]:
        """The pids of the children not yet reaped."""
        strategy = self.strategy
        assert isinstance(strategy, ForkStrategy)
        return strategy.active_children.keys()


class TCPServer(Server):
    """socketserver.TCPServer: IPv4 unless ``address_family`` is overridden (``AF_INET6``)."""

    address_family = socket.AF_INET

    def __init__(
        self,
        server_address: Any,
        RequestHandlerClass: Callable[..., Any],
        bind_and_activate: bool = True,
    ) -> None:
        strategy, option_names = _strategy_of(type(self))
        options = {name: getattr(self, name) for name in option_names}
        super().__init__(
            server_address, RequestHandlerClass, strategy, bind_and_activate=bind_and_activate, **options
        )

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in _STRATEGY_OPTIONS:
            strategy = self.__dict__.get("strategy")
            if strategy is not None and hasattr(strategy, name):
                setattr(strategy, name, value)


class UnixStreamServer(TCPServer):
    address_family = socket.AF_UNIX


class ThreadingTCPServer(ThreadingMixIn, TCPServer):
    pass


class ForkingTCPServer(ForkingMixIn, TCPServer):
    pass


class ThreadingUnixStreamServer(ThreadingMixIn, UnixStreamServer):
    pass


class ForkingUnixStreamServer(ForkingMixIn, UnixStreamServer):
    pass


def _strategy_of(cls: type) -> tuple[str, tuple[str, ...]]:
    """The strategy a server class's mixins select, and the class attributes that are its options."""
    forking, threaded = issubclass(cls, ForkingMixIn), issubclass(cls, ThreadingMixIn)
    if forking and threaded:
        raise TypeError(f"{cls.__name__} derives from both ForkingMixIn and ThreadingMixIn; choose one")
    if forking:
        return "fork", ("max_children", "block_on_close")
    if threaded:
        return "thread", ("daemon_threads", "block_on_close")
    return "sync", ()


def __getattr__(name: str) -> object:
    if name in _DATAGRAM_SERVERS:
        raise AttributeError(
            f"gearshift serves stream sockets only: it has no {name}; use the stdlib's socketserver.{name}"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
