"""gearshift's loggers, with ``logging`` imported on first use.

Why: ``logging`` adds about 1.5 MB to a process, and the ``fork`` strategy copies the parent's
memory on every request. A server that has nothing to log (or whose application never imports
``logging``) should not pay for it; one that logs gets the ordinary ``logging.getLogger(name)``
behind this proxy, configured the ordinary way.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: the core does not import typing at run time (plugins.py)
if TYPE_CHECKING:
    from typing import Any

INFO = 20  # logging.INFO, without importing logging


class LazyLogger:
    """Forwards every attribute to ``logging.getLogger(name)``, imported when first needed."""

    __slots__ = ("_name", "_logger")

    def __init__(self, name: str) -> None:
        self._name = name
        self._logger: Any = None

    def __getattr__(self, attribute: str) -> Any:
        logger = self._logger
        if logger is None:
            import logging

            logger = self._logger = logging.getLogger(self._name)
        return getattr(logger, attribute)


def get_logger(name: str = "gearshift") -> Any:
    return LazyLogger(name)
