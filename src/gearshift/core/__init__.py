"""The core: accept loop, listeners, plugin registry and hookspecs, errors. Knows nothing of HTTP."""

from .errors import GearshiftError, PluginError, StrategyUnavailableError, UnknownStrategyError, WorkerBootError
from .hookspecs import hookimpl
from .plugins import available_strategies, register_plugin, resolve_strategy, strategy_origins, unregister_plugin
from .server import Server
from .strategy import Strategy, check_options

__all__ = [
    "GearshiftError",
    "PluginError",
    "Server",
    "Strategy",
    "StrategyUnavailableError",
    "UnknownStrategyError",
    "WorkerBootError",
    "available_strategies",
    "check_options",
    "hookimpl",
    "register_plugin",
    "resolve_strategy",
    "strategy_origins",
    "unregister_plugin",
]
