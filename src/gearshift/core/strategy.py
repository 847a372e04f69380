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
    the loop). It may block the loop (``sync`` does; ``fork`` does at ``max_children``). One that
    runs the handler in the loop's own thread may instead let its exception propagate, as
    ``socketserver.BaseServer`` does (``sync``): the loop then calls ``handle_error`` (for an
    ``Exception``) and ``shutdown_request``, and re-raises anything else.

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

import socket
from collections.abc import Callable

# Not ``typing.TYPE_CHECKING``: the core imports neither typing nor inspect at run time, because
# every module a fork()ing parent holds is copied on every request (see plugins.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, ClassVar

    from .server import Server

#: (host, port) for TCP, (host, port, flow, scope) for IPv6, str for Unix sockets.
Address = tuple | str

_CO_VARKEYWORDS = 0x08  # inspect.CO_VARKEYWORDS


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
        import inspect  # only the command's --list-strategies asks

        doc = inspect.getdoc(cls) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        """The options this strategy accepts, with their defaults, read from ``__init__``."""
        return dict(_keyword_options(cls.__init__)[0])

    @classmethod
    def accepts_any_option(cls) -> bool:
        """Does ``__init__`` take ``**options``? Then no option name is refused up front."""
        return _keyword_options(cls.__init__)[1]

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Raise ``TypeError`` naming any option this strategy does not accept."""
        accepted, takes_any = _keyword_options(cls.__init__)
        if takes_any:
            return
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



def _keyword_options(init: Callable[..., object]) -> tuple[dict[str, Any], bool]:
    """The keyword-only parameters of ``init`` with their defaults, and whether it takes
    ``**kwargs``: read off the code object for a plain function (every strategy so far), through
    ``inspect.signature`` for anything else (a decorated or C-level ``__init__``)."""
    code = getattr(init, "__code__", None)
    if code is None or hasattr(init, "__wrapped__"):
        import inspect

        params = inspect.signature(init).parameters.values()
        return (
            {
                p.name: _REQUIRED if p.default is inspect.Parameter.empty else p.default
                for p in params
                if p.kind is inspect.Parameter.KEYWORD_ONLY
            },
            any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params),
        )
    first = code.co_argcount
    names = code.co_varnames[first:first + code.co_kwonlyargcount]
    defaults = init.__kwdefaults__ or {}  # type: ignore[attr-defined]
    return {name: defaults.get(name, _REQUIRED) for name in names}, bool(code.co_flags & _CO_VARKEYWORDS)


class _Required:
    """Default of a keyword-only option without one (``inspect.Parameter.empty``'s role)."""

    def __repr__(self) -> str:
        return "<required>"


_REQUIRED = _Required()


# -- option validation shared by strategies (ValueError names the option and the bad value) -----


def bool_option(option: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{option} must be True or False, not {value!r}")
    return value


def positive_int_option(option: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{option} must be a whole number >= 1, not {value!r}")
    return value
