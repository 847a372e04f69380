"""The Strategy base class: how one accepted connection gets processed.

The accept loop (:class:`gearshift.Server`) owns the listening sockets and the selector; a
strategy owns what happens between ``accept()`` and ``close()``. The contract, in the order the
server uses it:

``__init__(server, **options)``
    Options are keyword-only parameters of the subclass's ``__init__``; the server checks the
    names against that signature before calling it, so a misspelt option becomes a ``TypeError``
    listing the accepted ones. Validate values here and raise ``ValueError``.

``serve(run_loop)``
    Runs the server's loop. The default calls ``run_loop()`` in this process. A supervisor
    (``prefork``) overrides it to start workers that each call ``run_loop()`` and to supervise
    them until ``stop_serving()`` is called.

``process_request(request, client_address)``
    Takes ownership of a connection the loop hands over: a newly accepted one, or one that a
    handler returned to the loop with :meth:`Server.resume_when_readable` and that has bytes to
    read again. It must eventually call ``server.finish_request``, ``server.handle_error`` if that
    raises, and always ``server.shutdown_request`` (which closes the connection or hands it back to
    the loop). It may block the loop (``sync`` does; ``fork`` does at ``max_children``).

``service_actions()``
    Called once per loop turn, at least every ``poll_interval`` seconds: reap finished workers.

``close(timeout)``
    Called by ``server_close()`` after the listeners are closed: wait for in-flight work (when the
    strategy's ``block_on_close`` says so), at most ``timeout`` seconds if not None, then abandon or
    terminate what remains and log it.

``terminate()``
    Stop every worker at once, without waiting for requests (a second Ctrl+C). It may run in a
    signal handler, so it must not log or take locks; it returns how many workers it stopped.
"""

from __future__ import annotations

import inspect
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from .server import Server

Address = Any  # (host, port) for TCP, (host, port, flow, scope) for IPv6, str for Unix sockets


class Strategy:
    """Base class of concurrency strategies. Subclass it, set ``name``, implement
    :meth:`process_request`, and return the class from a ``gearshift_strategies`` hook.

    ``multithread`` and ``multiprocess`` are facts about the strategy that layers above the core
    read (WSGI's ``wsgi.multithread`` / ``wsgi.multiprocess``); the core itself never looks at them.
    """

    #: The name users pass as ``strategy=``; unique across installed plugins.
    name: ClassVar[str] = ""
    #: May requests run concurrently in threads of one process?
    multithread: ClassVar[bool] = False
    #: May requests run in more than one process?
    multiprocess: ClassVar[bool] = False

    def __init__(self, server: Server) -> None:
        self.server = server

    # -- the contract --------------------------------------------------------------------------

    def serve(self, run_loop: Callable[[], None]) -> None:
        """Run the accept loop until ``server.shutdown()``; override to supervise workers."""
        run_loop()

    def stop_serving(self) -> None:
        """Called by ``server.shutdown()`` before it wakes the loop; a supervisor stops here."""

    def process_request(self, request: socket.socket, client_address: Address) -> None:
        """Process one connection handed over by the loop (see the module docstring)."""
        raise NotImplementedError(f"{type(self).__name__} must implement process_request()")

    def service_actions(self) -> None:
        """Once per loop turn: reap finished workers. The default does nothing."""

    def close(self, timeout: float | None = None) -> None:
        """Drain in-flight work for ``server_close()``. The default has nothing in flight."""

    def terminate(self) -> int:
        """Stop workers at once; return how many. Threads cannot be stopped: the default is 0."""
        return 0

    # -- helpers for subclasses and for the server --------------------------------------------

    def handle_connection(self, request: socket.socket, client_address: Address) -> bool:
        """Run the server's handler on ``request`` the way every strategy must, in the calling
        thread or process: ``finish_request``, ``handle_error`` on an exception, and always
        ``shutdown_request``. Returns True when the handler did not raise.

        Strategies call this from wherever they run work (the loop, a thread, a child) so the
        error and ownership rules live in one place.
        """
        server = self.server
        try:
            server.finish_request(request, client_address)
            return True
        except Exception:
            server.handle_error(request, client_address)
            return False
        finally:
            server.shutdown_request(request)

    @classmethod
    def description(cls) -> str:
        """One line describing the strategy: the first line of its docstring."""
        doc = inspect.getdoc(cls) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        """The options this strategy accepts, with their defaults, read from ``__init__``."""
        params = inspect.signature(cls.__init__).parameters.values()
        return {
            p.name: p.default
            for p in params
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        }

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Raise ``TypeError`` naming any option this strategy does not accept."""
        params = inspect.signature(cls.__init__).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return
        accepted = cls.option_defaults()
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            names = ", ".join(repr(name) for name in unknown)
            allowed = ", ".join(sorted(accepted)) or "no options"
            raise TypeError(
                f"strategy {cls.name!r} got unexpected option{'s' if len(unknown) > 1 else ''} "
                f"{names}; it accepts: {allowed}"
            )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"



# -- option validation shared by strategies (ValueError names the option and the bad value) -----


def bool_option(option: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{option} must be True or False, not {value!r}")
    return value


def positive_int_option(option: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{option} must be a whole number >= 1, not {value!r}")
    return value
