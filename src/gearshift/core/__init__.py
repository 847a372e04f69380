"""The core: accept loop, listeners, plugin manager and hookspecs, errors. Knows nothing of HTTP."""

from .errors import GearshiftError, PluginError, StrategyUnavailableError, UnknownStrategyError
from .hookspecs import hookimpl
from .plugins import available_strategies, resolve_strategy, strategy_origins
from .server import Server
from .strategy import Strategy

__all__ = [
    "GearshiftError",
    "PluginError",
    "Server",
    "Strategy",
    "StrategyUnavailableError",
    "UnknownStrategyError",
    "available_strategies",
    "hookimpl",
    "resolve_strategy",
    "strategy_origins",
]
