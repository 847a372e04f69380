"""The hooks a gearshift plugin can implement. Read this file top to bottom to know the contract.

A plugin is a module (or any object) whose hook functions are marked ``@gearshift.hookimpl``,
pluggy's marker for project "gearshift"; the marker also takes pluggy's options (``tryfirst``,
``trylast``, ``wrapper``, ...). A marked function whose name is not a gearshift hook, or a hook
function left unmarked, is an error naming the plugin, not ignored. Built-in strategies are
plugins registered exactly like third-party ones; third parties are found through the
``gearshift.strategies`` entry-point group, whose entries name a module or object to register::

    [project.entry-points."gearshift.strategies"]
    reversed = "myplugin"

A plugin that provides no strategy, only observes, uses the ``gearshift.plugins`` group the same
way, or is registered at run time with :func:`gearshift.register_plugin`.

**Observer hooks** (``gearshift_server_started`` and below) let a plugin watch the server
without being a strategy: metrics, tracing, audit logs. They are notifications: what they
return is ignored, and they run in whichever thread or process the event happens in (a
``threadpool`` handler thread, a ``fork`` child, a ``prefork`` worker), so an implementation
must be quick and thread-safe. Each implementation is called on its own: one that raises is
logged (logger ``gearshift``, naming the plugin) and the others, and the request, go on. A hook
nobody implements costs one attribute test where the event happens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from socket import socket

    from ..http.accesslog import AccessRecord
    from ..settings import Setting
    from .server import Server
    from .strategy import Address, Strategy

PROJECT = "gearshift"

hookspec = pluggy.HookspecMarker(PROJECT)
#: Marks a plugin function as an implementation of one of the hooks below.
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def gearshift_strategies() -> list[type[Strategy]]:
    """Return the Strategy subclasses this plugin provides.

    Called once per plugin when the registry is built. Each class must subclass
    :class:`gearshift.Strategy` and have a non-empty ``name`` that no other plugin uses, and its
    options must not use a name another layer reserves (the HTTP options); a violation raises
    :class:`gearshift.PluginError` naming this plugin, rather than being ignored.
    """
    raise NotImplementedError


@hookspec
def gearshift_add_options(parser: Any) -> list[Setting] | None:
    """Declare the ``gearshift`` command's options for your strategy.

    Called once when the command builds its parser. Return a list of
    :class:`gearshift.settings.Setting`: each becomes a flag, a ``GEARSHIFT_<NAME>`` variable and a
    line of ``--help``, is checked, and reaches your strategy's ``__init__`` as the keyword
    ``name`` when it is given (naming it for another strategy is an error). Options added to
    ``parser`` (the command's ``argparse`` parser) with ``add_argument`` also work: they get a
    variable too and reach a strategy whose ``__init__`` takes their ``dest``.
    """


# -- observer hooks ---------------------------------------------------------------------------


@hookspec
def gearshift_server_started(server: Server) -> None:
    """``server.serve_forever()`` is about to serve, in the process that called it (a
    ``prefork`` master, not its workers). The listeners are bound: ``server.server_address``
    is the real address."""


@hookspec
def gearshift_server_stopping(server: Server) -> None:
    """``server.server_close()`` has begun, in the process where
    :func:`gearshift_server_started` was called: the listeners close next, then in-flight
    requests drain. Called once per close."""


@hookspec
def gearshift_connection_accepted(server: Server, request: socket, client_address: Address) -> None:
    """The loop accepted ``request`` (before ``verify_request()``)."""


@hookspec
def gearshift_connection_closed(server: Server, request: socket, client_address: Address) -> None:
    """This process's server is done with a connection it accepted: closed, or, under ``fork``,
    handed to the child that serves it (the parent closes its copy at once). Called once per
    accepted connection, in the process that accepted it."""


@hookspec
def gearshift_request_finished(server: Server, record: AccessRecord, worker: int) -> None:
    """An HTTP request was answered (by the application, or refused with a 4xx/5xx): ``record``
    is what its access-log line tells (``record.method()``, ``record.path()``, ``record.status``,
    ``record.size`` body bytes sent, ``record.duration`` seconds, headers); ``worker`` is the pid
    of the process that served it. Called whether or not the access log is on."""


@hookspec
def gearshift_worker_started(server: Server, pid: int, number: int) -> None:
    """A supervising strategy (``prefork``) started worker ``number`` as process ``pid``; called
    in the supervisor."""


@hookspec
def gearshift_worker_exited(server: Server, pid: int, number: int, exitcode: int) -> None:
    """Worker ``number`` (process ``pid``) exited, with ``exitcode`` as
    :func:`os.waitstatus_to_exitcode` gives it (negative: killed by that signal); called in the
    supervisor once it has reaped the worker."""


OBSERVER_HOOKS = (
    "gearshift_server_started",
    "gearshift_server_stopping",
    "gearshift_connection_accepted",
    "gearshift_connection_closed",
    "gearshift_request_finished",
    "gearshift_worker_started",
    "gearshift_worker_exited",
)
HOOK_NAMES = ("gearshift_add_options", "gearshift_strategies", *OBSERVER_HOOKS)
