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
    them until ``stop_serving()`` is called. ``handle_request()`` runs turns of the loop without
    it, so workers started here must also start on first use (in ``process_request``).

    A supervisor of worker processes sets ``worker_processes = True`` and, in each worker,
    calls ``server.after_fork(keep_listeners=True)``, then ``server.setup_worker()`` (where a
    layer above loads what each worker needs for itself: the command imports the application
    there unless told to preload it; an exception is a failed start, which the supervisor
    reports by raising :class:`~gearshift.core.errors.WorkerBootError` from ``serve()``), then
    ``run_loop()``. Its own loop calls ``server.service_actions()`` once per turn, as the
    server's loop does, so that what layers above queue for the loop (the command's handling
    of USR1) also runs in the supervising process.

``process_request(request, client_address)``
    Takes ownership of a connection the loop hands over: a newly accepted one, or one that a
    handler returned to the loop with :meth:`Server.resume_when_readable` and that has bytes to
    read again. It must eventually call ``server.finish_request``, ``server.handle_error`` if that
    raises, and always ``server.shutdown_request`` (which closes the connection or hands it back to
    the loop): :meth:`Strategy.handle_connection` does the three in order, wherever the strategy
    runs the handler. It may block the loop (``sync`` does; ``fork`` does at ``max_children``). One
    that runs the handler in the loop's own thread may instead let its exception propagate, as
    ``socketserver.BaseServer`` does (``sync``): the loop then calls ``handle_error`` (for an
    ``Exception``) and ``shutdown_request``, and re-raises anything else.

    Three server methods serve a strategy that must not block the loop and has a fixed number of
    workers (``threadpool``; ``prefork`` runs one in each worker process). All three are called
    in the loop, from ``process_request``, and none of them blocks:

    ``server.request_ready(request, client_address) -> bool``
        Before spending a worker: True means the handler can run now without waiting for the
        client (the protocol has read the request ahead, in the loop, and handed what it read to
        the next handler with ``server.set_state``). False means the protocol took the
        connection back to wait for the rest of the request: the strategy calls
        ``server.shutdown_request(request)``, which parks it in the loop, and gets it again
        through ``process_request`` when more bytes arrive. The default is True (a stdlib
        handler reads for itself, in its worker).
    ``server.set_state(request, client_address, state)``
        How what the loop read reaches the handler: the next handler on ``request`` gets
        ``state`` from ``server.resumed_state(request)``, without the connection being resumed.
        A protocol calls it from ``request_ready``; a strategy that moves work between threads
        needs nothing more, since the state travels with the socket, not with the thread.
    ``server.handle_overload(request, client_address)``
        No worker is free and the strategy will not wait for one (a full queue, ``max_threads``
        reached): the server answers and closes the connection (HTTP: 503 with ``Retry-After``;
        the default just closes). It takes ownership of ``request``. The strategy logs the
        overload through an :class:`OverloadLog`, once per burst, never once per connection.

    A connection the strategy accepted (queued) must end either served or answered through
    ``handle_overload``, never dropped unanswered, even when the server closes.

``service_actions()``
    Called once per loop turn, at least every ``poll_interval`` seconds, or sooner if
    ``service_within()`` asks: reap finished workers, end an overload burst
    (:meth:`OverloadLog.check`), beat a heartbeat, wake a thread for a queued request.

``service_within() -> float | None``
    Called before each turn's wait: the most seconds the loop may wait before it calls
    ``service_actions()`` again, whatever ``poll_interval`` the caller chose; None leaves it to
    ``poll_interval`` (the default). A ``prefork`` worker's heartbeat must come well within its
    ``timeout``; ``threadpool`` judges again soon whether a queued request should get a thread.
    Called every turn: it must be cheap.

``close(timeout)``
    Called by ``server_close()`` after the listeners are closed and ``server.closing`` is set
    (handlers then answer the request in hand as the last of its connection): let queued and
    in-flight work finish (when the strategy's ``block_on_close`` says so), at most ``timeout``
    seconds if not None, then abandon or terminate what remains and log it. What is abandoned
    must not keep the process alive: a thread-based strategy runs its threads as daemon threads
    (``threading.Thread(daemon=True)``) and joins them here itself (:func:`join_threads`, which
    a second Ctrl+C interrupts), so that after the drain
    timeout the program exits whatever a stuck request does. Threads and processes are started
    in ``serve()`` or on first use, never in ``__init__`` (a ``prefork`` worker builds its
    strategy after the fork), and none is left running after a ``close()`` that drained in time.

``terminate()``
    Stop every worker at once, without waiting for requests (a second Ctrl+C). It may run in a
    signal handler, so it must not log or take locks; it returns how many workers it stopped.

``stats()``
    What the strategy's load is now, as a mapping of counts, for monitoring (the metrics plugin,
    :mod:`gearshift.metrics`, reads it when it is scraped, from another thread). A strategy
    returns only the keys it knows cheaply and correctly, read without a lock (one attribute
    or ``len()`` each, which are atomic), and never adds bookkeeping to the request path for
    it. The keys (see :data:`STATS`): ``busy``, handlers running now (in-flight requests);
    ``queued``, requests dispatched and waiting for a thread; ``threads``, the size of a fixed
    pool of threads; ``workers``, worker processes running. The default is empty.

Capabilities: the contract above is what every strategy honours; a few things some cannot do
are capabilities, named in :data:`CAPABILITIES`. A strategy declares those it lacks in ``lacks``
(default: none), a frozenset of those names (an unknown name is a ``ValueError`` when the class
is defined). ``gearshift --list-strategies`` shows them, and the conformance kit
(:mod:`gearshift.testing`) skips, with the reason, the tests that need one a strategy lacks.

Option values are checked with :func:`positive_int_option`, :func:`limit_option` and
:func:`bool_option`, so that every strategy's errors read the same (and the command can name
the flag: ``--threads must be a whole number >= 1, not 0``).
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import logging
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("gearshift")

#: (host, port) for TCP, (host, port, flow, scope) for IPv6, str for Unix sockets.
Address = tuple[Any, ...] | str

#: What a strategy may lack (``Strategy.lacks``), with what having it means.
CAPABILITIES: Mapping[str, str] = MappingProxyType({
    "concurrent": "handlers run concurrently, with each other and with the loop: a slow request holds up "
                  "no other, and one can be in flight while the server stops",
    "terminate": "terminate() stops running handlers at once (a thread cannot be stopped)",
})


#: The keys of ``Strategy.stats()``, with what each counts.
STATS: Mapping[str, str] = MappingProxyType({
    "busy": "handlers running now (in-flight requests)",
    "queued": "requests waiting for a free thread",
    "threads": "threads of the pool that runs handlers",
    "workers": "worker processes running (starting, serving or draining)",
})


class Strategy:
    """Base class of concurrency strategies. Subclass it, set ``name``, implement
    :meth:`process_request`, and return the class from a ``gearshift_strategies`` hook.

    ``multithread`` and ``multiprocess`` are facts about the strategy that layers above the core
    read (WSGI's ``wsgi.multithread`` / ``wsgi.multiprocess``); the core itself never looks at them.
    A strategy whose answer depends on its options (``prefork``: its inner strategy's) sets it
    on the instance.
    """

    #: The name users pass as ``strategy=``; unique across installed plugins.
    name: ClassVar[str] = ""
    #: May requests run concurrently in threads of one process?
    multithread: ClassVar[bool] = False
    #: May requests run in more than one process?
    multiprocess: ClassVar[bool] = False
    #: Does ``serve()`` run the loop in long-lived worker processes it starts, calling
    #: ``server.setup_worker()`` in each (see the module docstring)? A layer above then loads
    #: per-process resources (the application) there rather than before serving.
    worker_processes: ClassVar[bool] = False
    #: The capabilities (names in :data:`CAPABILITIES`) this strategy does not have. The default
    #: claims them all, so that a strategy states what it gives up rather than what it offers.
    lacks: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        lacks = cls.__dict__.get("lacks")
        if lacks is None:
            return
        if isinstance(lacks, str) or not all(isinstance(name, str) for name in lacks):
            raise TypeError(f"{cls.__qualname__}.lacks must be a frozenset of capability names, not {lacks!r}")
        unknown = sorted(set(lacks) - set(CAPABILITIES))
        if unknown:
            close = difflib.get_close_matches(unknown[0], CAPABILITIES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"{cls.__qualname__}.lacks names unknown capability {unknown[0]!r}{hint}; "
                f"the capabilities are: {', '.join(CAPABILITIES)}"
            )
        cls.lacks = frozenset(lacks)

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

    def service_within(self) -> float | None:
        """Before each turn's wait: call ``service_actions()`` again within this many seconds,
        or None for ``poll_interval``. The default is None."""
        return None

    def close(self, timeout: float | None = None) -> None:
        """Drain in-flight work for ``server_close()``. The default has nothing in flight."""

    def terminate(self) -> int:
        """Stop workers at once; return how many. Threads cannot be stopped: the default is 0."""
        return 0

    def stats(self) -> Mapping[str, int]:
        """The strategy's load now, by the keys of :data:`STATS` it knows (see the module
        docstring); safe to call from any thread. The default knows none."""
        return {}

    # -- helpers for subclasses and for the server --------------------------------------------

    def handle_connection(
        self, request: socket.socket, client_address: Address, done: Callable[[], object] | None = None
    ) -> bool:
        """Run the server's handler on ``request`` the way every strategy must, in the calling
        thread or process: ``finish_request``, ``handle_error`` on an exception, and always
        ``shutdown_request``. Returns True when the handler did not raise.

        Strategies call this from wherever they run work (the loop, a thread, a child) so the
        error and ownership rules live in one place. ``done`` (which must not raise) is called
        when the handler has finished, before ``shutdown_request``: that may hand the connection
        back to the loop, whose next request can then arrive at once, so a strategy that counts
        busy workers frees the worker there rather than after this returns.
        """
        server = self.server
        try:
            server.finish_request(request, client_address)
            return True
        except Exception:
            server.handle_error(request, client_address)
            return False
        finally:
            if done is not None:
                done()
            server.shutdown_request(request)

    @classmethod
    def description(cls) -> str:
        """One line describing the strategy: the first line of its docstring."""
        doc = inspect.getdoc(cls) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        """The options this strategy accepts, with their defaults, read from ``__init__``."""
        return dict(_keyword_options(cls)[0])

    @classmethod
    def accepts_any_option(cls) -> bool:
        """Does ``__init__`` take ``**options``? Then no option name is refused up front."""
        return _keyword_options(cls)[1]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


_OPTIONS: weakref.WeakKeyDictionary[type[Strategy], tuple[Mapping[str, Any], bool]] = weakref.WeakKeyDictionary()


def _keyword_options(strategy: type[Strategy]) -> tuple[Mapping[str, Any], bool]:
    """The keyword-only parameters of ``strategy.__init__`` with their defaults, and whether it
    takes ``**options``; read once per class."""
    options = _OPTIONS.get(strategy)
    if options is None:
        options = _OPTIONS[strategy] = _read_keyword_options(strategy)
    return options


def _read_keyword_options(strategy: type[Strategy]) -> tuple[Mapping[str, Any], bool]:
    parameters = inspect.signature(strategy.__init__).parameters.values()
    defaults = {
        p.name: _REQUIRED if p.default is inspect.Parameter.empty else p.default
        for p in parameters
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    return MappingProxyType(defaults), any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


class _Required:
    """Default of a keyword-only option without one (``inspect.Parameter.empty``'s role)."""

    def __repr__(self) -> str:
        return "<required>"


_REQUIRED = _Required()


# -- option validation: the one place option names are checked, and value helpers --------------


def check_options(
    strategy: type[Strategy],
    options: Collection[str],
    extra: Collection[str] = (),
    *,
    extra_label: str = "other options",
    renamed: Mapping[str, str] | None = None,
) -> None:
    """Raise ``TypeError`` unless every name in ``options`` is an option of ``strategy`` or one of
    ``extra``, the options a layer above the core takes next to the strategy's (the HTTP
    layer's, listed as ``extra_label``). ``renamed`` maps old names to a hint
    saying what replaced them.

    The message names the unexpected options, suggests a close name when there is one, and
    lists what is accepted: ``unexpected option 'max_chidren' (did you mean 'max_children'?):
    strategy 'fork' accepts: block_on_close, freeze_gc, max_children``.
    """
    accepted, takes_any = _keyword_options(strategy)
    shared = sorted(set(accepted) & set(extra))
    if shared:
        raise TypeError(
            f"strategy {strategy.name!r} declares the option {shared[0]!r}, which is also one of the "
            f"{extra_label}; the strategy must rename it"
        )
    unknown = [name for name in options if name not in extra and name not in accepted]
    for name in unknown:
        if renamed and name in renamed:
            raise TypeError(f"option {name!r} was renamed: use {renamed[name]}")
    if not unknown or takes_any:
        return
    candidates = [*accepted, *extra]
    described = []
    for name in sorted(unknown):
        close = difflib.get_close_matches(name, candidates, n=1)
        described.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
    plural = "s" if len(unknown) > 1 else ""
    allowed = f"accepts: {', '.join(sorted(accepted))}" if accepted else "accepts no options"
    message = f"unexpected option{plural} {', '.join(described)}: strategy {strategy.name!r} {allowed}"
    if extra:
        message += f"; {extra_label}: {', '.join(sorted(extra))}"
    raise TypeError(message)


def flush_stdio() -> None:
    """For a strategy that forks: call it just before ``os.fork()``, so that the child does not
    inherit the parent's unwritten ``sys.stdout`` / ``sys.stderr`` buffers and write them a
    second time."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            with contextlib.suppress(Exception):  # a closed or broken stream: nothing to keep
                stream.flush()


#: The longest :func:`join_threads` waits for a thread in one piece.
JOIN_SLICE = 0.2


def join_threads(threads: Iterable[threading.Thread], timeout: float | None) -> list[threading.Thread]:
    """Join ``threads``, at most ``timeout`` seconds in all (None: as long as they take), and
    return those still running: a thread-based strategy's drain.

    Why in slices: Python runs signal handlers only on the main thread, and a ``join()`` returns
    early for a signal only if the kernel delivered it to the joining thread; Linux may give a
    signal sent to the process to any thread that does not block it, such as one running the app.
    One long ``join()`` would then hold a second Ctrl+C until the drain ends; a slice holds it at
    most :data:`JOIN_SLICE`. (Blocking the signals in request threads instead would be inherited
    by every subprocess the app starts from them.)
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    threads = list(threads)
    for thread in threads:
        while thread.is_alive():
            left = JOIN_SLICE if deadline is None else min(JOIN_SLICE, deadline - time.monotonic())
            if left <= 0:
                break
            thread.join(left)
    return [thread for thread in threads if thread.is_alive()]


def bool_option(option: str, value: object) -> bool:
    """``value`` if it is True or False, else ``ValueError`` naming the option."""
    if not isinstance(value, bool):
        raise ValueError(f"{option} must be True or False, not {value!r}")
    return value


def positive_int_option(option: str, value: object) -> int:
    """``value`` if it is an int >= 1 (not a bool), else ``ValueError`` naming the option."""
    return _whole_number(option, value, 1, "")


def limit_option(option: str, value: object, minimum: int = 1) -> int | None:
    """``value`` if it is None (no limit) or an int >= ``minimum`` (not a bool), else
    ``ValueError`` naming the option, in the words of :func:`positive_int_option`."""
    if value is None:
        return None
    return _whole_number(option, value, minimum, " or None for no limit")


def _whole_number(option: str, value: object, minimum: int, alternative: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{option} must be a whole number >= {minimum}{alternative}, not {value!r}")
    return value


# -- overload: refusing work without flooding the log -------------------------------------------


class OverloadLog:
    """Logs a strategy's refusals (:meth:`Server.handle_overload`) once per burst: a warning
    when refusing starts, an info line with the count when it ends. Not a line per refusal: in
    an overload that would flood the log and add work just when both hurt most.

    A burst ends when nothing was refused for :attr:`QUIET` seconds. The strategy calls
    :meth:`refused` for each refusal, and :meth:`check` from ``service_actions()`` (every loop
    turn) and ``close()``, so the end is logged even when no request follows it. Used from the
    loop's thread only (``close()`` runs after the loop has stopped).
    """

    #: Twice HTTP's ``Retry-After: 1``: clients retrying after a refusal are still the same burst.
    QUIET = 2.0

    def __init__(self, strategy: str) -> None:
        self.strategy = strategy
        #: Refusals in the current burst; 0 outside one.
        self.count = 0
        self._started = 0.0
        self._last = 0.0

    def refused(self, why: str, *args: object) -> None:
        """Count one refusal; the first of a burst logs ``why % args`` as a warning."""
        now = time.monotonic()
        if self.count and now - self._last >= self.QUIET:
            self._end(self._last)
        if not self.count:
            self._started = now
            log.warning("%s overloaded: " + why + "; refusing new requests until it clears",
                        self.strategy, *args)
        self.count += 1
        self._last = now

    def check(self, *, final: bool = False) -> None:
        """Log the end of the current burst if it is over (``final``: over anyway, at close)."""
        if self.count and (final or time.monotonic() - self._last >= self.QUIET):
            self._end(self._last)

    def _end(self, last: float) -> None:
        log.info("%s overload over: refused %d request%s in %.1f s", self.strategy, self.count,
                 "" if self.count == 1 else "s", last - self._started)
        self.count = 0
