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
    hookimpl,
)
from ._version import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .http import make_server


def __getattr__(name: str) -> object:
    # make_server is imported on first use: a core-only user (socketserver handlers) then never
    # loads the HTTP layer and httptools, which keeps fork()ed children cheaper.
    if name == "make_server":
        from .http import make_server

        return make_server
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
