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

__version__ = "0.1.0"

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
]
