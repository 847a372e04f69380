"""The hooks a gearshift plugin can implement. Read this file top to bottom to know the contract.

A plugin is a module (or any object) whose hook functions are marked ``@gearshift.hookimpl``,
pluggy's marker for project "gearshift"; the marker also takes pluggy's options (``tryfirst``,
``trylast``, ``wrapper``, ...). A marked function whose name is not a gearshift hook, or a hook
function left unmarked, is an error naming the plugin, not ignored. Built-in strategies are
plugins registered exactly like third-party ones; third parties are found through the
``gearshift.strategies`` entry-point group, whose entries name a module or object to register::

    [project.entry-points."gearshift.strategies"]
    reversed = "myplugin"
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from ..settings import Setting
    from .strategy import Strategy

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


HOOK_NAMES = ("gearshift_add_options", "gearshift_strategies")
