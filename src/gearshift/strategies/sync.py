"""``sync``: every connection is processed in the loop itself, one at a time."""

from __future__ import annotations

import socket
from collections.abc import Mapping

from ..core.hookspecs import hookimpl
from ..core.strategy import Address, Strategy


class SyncStrategy(Strategy):
    """Process each request in the accept loop, one at a time (socketserver.TCPServer)."""

    name = "sync"
    lacks = frozenset({"concurrent", "terminate"})
    _busy = 0  # 1 while a handler runs: read by stats() from another thread

    def process_request(self, request: socket.socket, client_address: Address) -> None:
        # socketserver.BaseServer.process_request(), exactly: a handler's exception propagates to
        # the loop, which calls handle_error() then shutdown_request() for an Exception, and only
        # shutdown_request() for SystemExit or KeyboardInterrupt, once, before re-raising it.
        # (handle_connection()'s ``finally`` would close the connection a second time.)
        server = self.server
        self._busy = 1
        try:
            server.finish_request(request, client_address)
        finally:
            self._busy = 0
        server.shutdown_request(request)

    def stats(self) -> Mapping[str, int]:
        return {"busy": self._busy}


@hookimpl
def gearshift_strategies() -> list[type[Strategy]]:
    return [SyncStrategy]
