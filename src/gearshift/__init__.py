"""gearshift: one selector-based accept loop; the concurrency model is a plugin chosen by name.

Public API only; see README.md.
"""

from .core import (
    GearshiftError,
    PluginError,
    Server,
    Strategy,
    StrategyUnavailableError,
    UnknownStrategyError,
    available_strategies,
)
from ._version import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .core.hookspecs import hookimpl
    from .http import make_server


def __getattr__(name: str) -> object:
    # make_server and hookimpl are imported on first use: a core-only user (socketserver
    # handlers) never loads the HTTP layer and httptools, and a process that uses only built-in
    # strategies never loads pluggy; both keep fork()ed children cheaper.
    if name == "make_server":
        from .http import make_server

        return make_server
    if name == "hookimpl":
        from .core.hookspecs import hookimpl

        return hookimpl
    raise AttributeError(f"module 'gearshift' has no attribute {name!r}")


__all__ = [
    "GearshiftError",
    "PluginError",
    "Server",
    "Strategy",
    "StrategyUnavailableError",
    "UnknownStrategyError",
    "__version__",
    "available_strategies",
    "hookimpl",
    "make_server",
]
