"""The plugin manager: built-in strategies and third-party ones, found the same way.

Built-in strategy modules are registered as ordinary plugins; third parties are loaded from the
``gearshift.strategies`` entry-point group. The registry is rebuilt when ``sys.path`` changes (a
test or an application that adds a plugin's directory sees it without a restart) and cached
otherwise, because scanning installed distributions costs milliseconds.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import pluggy

from . import hookspecs
from .errors import PluginError, UnknownStrategyError
from .strategy import Strategy

if TYPE_CHECKING:
    from importlib import metadata

ENTRY_POINT_GROUP = "gearshift.strategies"
BUILTIN_PLUGINS = (
    "gearshift.strategies.sync",
    "gearshift.strategies.thread",
    "gearshift.strategies.fork",
)


@dataclass(frozen=True)
class StrategyInfo:
    """Where a strategy came from: ``"built-in"`` or ``"<distribution> (entry point <name>)"``."""

    strategy: type[Strategy]
    origin: str


@dataclass(frozen=True)
class Registry:
    plugin_manager: pluggy.PluginManager
    strategies: Mapping[str, StrategyInfo]


_lock = threading.Lock()
_cache: tuple[tuple[str, ...], Registry] | None = None


def get_registry() -> Registry:
    """The current registry, rebuilt if ``sys.path`` changed since it was built."""
    global _cache
    key = tuple(sys.path)
    with _lock:
        if _cache is None or _cache[0] != key:
            _cache = (key, _build_registry())
        return _cache[1]


def get_plugin_manager() -> pluggy.PluginManager:
    """The pluggy manager with built-in and third-party plugins registered."""
    return get_registry().plugin_manager


def available_strategies() -> Mapping[str, type[Strategy]]:
    """Every strategy that can be asked for by name: built-ins and installed third-party ones."""
    return MappingProxyType({name: info.strategy for name, info in get_registry().strategies.items()})


def strategy_origins() -> Mapping[str, str]:
    """Where each strategy comes from, for ``gearshift --list-strategies``."""
    return MappingProxyType({name: info.origin for name, info in get_registry().strategies.items()})


def resolve_strategy(strategy: str | type[Strategy]) -> type[Strategy]:
    """The Strategy class for a name (or a Strategy subclass passed directly)."""
    if isinstance(strategy, type) and issubclass(strategy, Strategy):
        return strategy
    if not isinstance(strategy, str):
        raise TypeError(f"strategy must be a name or a Strategy subclass, not {strategy!r}")
    strategies = get_registry().strategies
    try:
        return strategies[strategy].strategy
    except KeyError:
        raise UnknownStrategyError(strategy, strategies) from None


def _build_registry() -> Registry:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    origins: dict[str, str] = {}
    for module_name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
        origins[module_name] = "built-in"
    for entry_point in _entry_points():
        origin = _describe(entry_point)
        try:
            plugin = entry_point.load()
        except Exception as exc:
            raise PluginError(f"cannot load gearshift plugin {origin}: {type(exc).__name__}: {exc}") from exc
        plugin_name = f"{ENTRY_POINT_GROUP}:{entry_point.name}"
        if pm.is_registered(plugin):
            continue  # the same module listed twice (e.g. a dist-info on sys.path twice)
        try:
            pm.register(plugin, name=plugin_name)
        except Exception as exc:
            raise PluginError(f"cannot register gearshift plugin {origin}: {exc}") from exc
        origins[plugin_name] = origin

    strategies: dict[str, StrategyInfo] = {}
    for impl in pm.hook.gearshift_strategies.get_hookimpls():
        origin = origins.get(impl.plugin_name, impl.plugin_name)
        try:
            provided = impl.function()
        except Exception as exc:
            raise PluginError(f"gearshift plugin {origin} failed in gearshift_strategies(): {exc!r}") from exc
        if provided is None:
            continue
        for strategy in _as_list(provided, origin):
            if not (isinstance(strategy, type) and issubclass(strategy, Strategy)):
                raise PluginError(
                    f"gearshift plugin {origin} returned {strategy!r}, which is not a gearshift.Strategy subclass"
                )
            if not isinstance(strategy.name, str) or not strategy.name:
                raise PluginError(f"gearshift plugin {origin} returned {strategy.__qualname__} without a name")
            clash = strategies.get(strategy.name)
            if clash is not None and clash.strategy is not strategy:
                raise PluginError(
                    f"strategy name {strategy.name!r} is provided twice: by {clash.origin} "
                    f"({clash.strategy.__module__}.{clash.strategy.__qualname__}) and by {origin} "
                    f"({strategy.__module__}.{strategy.__qualname__}); uninstall one of them"
                )
            strategies[strategy.name] = StrategyInfo(strategy, origin)
    return Registry(pm, MappingProxyType(dict(sorted(strategies.items()))))


def _entry_points() -> list[metadata.EntryPoint]:
    if not _may_have_entry_points():
        return []
    from importlib import metadata

    return sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: (ep.name, ep.value))


def _may_have_entry_points() -> bool:
    """False only when no distribution on ``sys.path`` can declare a gearshift entry point.

    Why: ``importlib.metadata`` and what it imports (zipfile, email, csv, ...) add several
    megabytes to the process, and the ``fork`` strategy pays for every megabyte of the parent
    on every request. Most installations have no gearshift plugin, and this look at the
    ``entry_points.txt`` files decides that without importing it. Anything this cannot see
    through (a zip on sys.path, a third-party distribution finder) means "maybe".
    """
    standard = importlib.machinery.PathFinder
    if any(hasattr(f, "find_distributions") and f is not standard for f in sys.meta_path):
        return True
    marker = f"[{ENTRY_POINT_GROUP}]"
    for entry in sys.path:
        directory = entry or "."
        if not os.path.isdir(directory):
            if os.path.exists(directory):
                return True  # a zip archive: let importlib.metadata read it
            continue
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            if not name.endswith((".dist-info", ".egg-info")):
                continue
            try:
                with open(os.path.join(directory, name, "entry_points.txt"), encoding="utf-8") as file:
                    if marker in file.read():
                        return True
            except (OSError, UnicodeDecodeError):
                continue
    return False


def _describe(entry_point: Any) -> str:
    dist = entry_point.dist
    dist_name = f"{dist.name} {dist.version}" if dist is not None else "an unknown distribution"
    return f"{dist_name} (entry point {entry_point.name!r} = {entry_point.value!r})"


def _as_list(provided: object, origin: str) -> list[object]:
    if isinstance(provided, (list, tuple)):
        return list(provided)
    raise PluginError(f"gearshift plugin {origin} must return a list of Strategy classes, not {provided!r}")
