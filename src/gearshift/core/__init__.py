"""The core: accept loop, listeners, plugin manager and hookspecs, errors. Knows nothing of HTTP."""

from .errors import GearshiftError, PluginError, StrategyUnavailableError, UnknownStrategyError
from .plugins import available_strategies, resolve_strategy, strategy_origins
from .server import Server
from .strategy import Strategy

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .hookspecs import hookimpl


def __getattr__(name: str) -> object:
    # pluggy is imported on first use of the marker: a process that only runs built-in
    # strategies never loads it (see plugins.py for why that matters to ``fork``).
    if name == "hookimpl":
        from .hookspecs import hookimpl

        return hookimpl
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
