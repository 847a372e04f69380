"""Exceptions raised by gearshift's core.

Every error a user can cause by configuration says what was wrong and what is allowed, so
that a CLI can print ``str(error)`` as one line and a library user can fix the call.
"""

from __future__ import annotations

from collections.abc import Iterable


class GearshiftError(Exception):
    """Base class of gearshift's own errors."""


class UnknownStrategyError(GearshiftError, ValueError):
    """A strategy name that no built-in or installed plugin provides."""

    def __init__(self, name: str, available: Iterable[str]) -> None:
        self.name = name
        self.available = sorted(available)
        super().__init__(
            f"unknown strategy {name!r}; available strategies: {', '.join(self.available) or '(none)'}"
        )


class StrategyUnavailableError(GearshiftError, RuntimeError):
    """A known strategy that cannot run on this platform (``fork`` where ``os.fork`` is missing)."""


class WorkerBootError(GearshiftError, RuntimeError):
    """A worker process could not start (``server.setup_worker()`` raised in it: the command
    imports the application there), so a supervising strategy's ``serve()`` stopped serving.
    The message is the worker's error, in one line."""


class PluginError(GearshiftError, RuntimeError):
    """A third-party plugin is broken: it failed to import, has a hook that is not gearshift's or
    one without the marker, returned something that is not a Strategy, clashes with another
    plugin's strategy name, or gives a strategy an option name that another layer reserves.

    The message names the entry point and the distribution that shipped it, because that is
    what the user has to uninstall or fix.
    """
