"""gearshift: one selector-based accept loop; the concurrency model is a plugin chosen by name.

Public API only; see README.md.
"""

from ._version import __version__
from .core import (
    GearshiftError,
    PluginError,
    Server,
    Strategy,
    StrategyUnavailableError,
    UnknownStrategyError,
    available_strategies,
    hookimpl,
    register_plugin,
    unregister_plugin,
)
from .http import make_server
from .serving import serve

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
    "register_plugin",
    "serve",
    "unregister_plugin",
]
