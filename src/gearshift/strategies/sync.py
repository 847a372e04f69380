"""``sync``: every connection is processed in the loop itself, one at a time."""

from __future__ import annotations

import socket

from ..core.strategy import Address, Strategy


class SyncStrategy(Strategy):
    """Process each request in the accept loop, one at a time (socketserver.TCPServer)."""

    name = "sync"

    def process_request(self, request: socket.socket, client_address: Address) -> None:
        self.handle_connection(request, client_address)


# The plugin hook, unmarked so that this module does not import pluggy (see core/plugins.py).
def gearshift_strategies() -> list[type[Strategy]]:
    return [SyncStrategy]
