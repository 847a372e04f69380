"""The plugin registry: built-in strategies and third-party ones, found the same way.

Every strategy comes from a plugin's ``gearshift_strategies`` hook. The built-in strategy modules
are plugins; third parties are loaded from the ``gearshift.strategies`` entry-point group and
registered with pluggy next to them. The registry is rebuilt when ``sys.path`` changes (a test or
an application that adds a plugin's directory sees it without a restart) and cached otherwise.

pluggy is loaded only when it has something to do. When no installed distribution declares a
``gearshift.strategies`` entry point, the plugins are exactly the built-in modules, and their hook
functions are read off those modules directly: the same functions pluggy would find, called the
same way, with the same checks. Why bother: pluggy imports ``inspect`` and ``typing`` (about 2 MB
of a process), and the ``fork`` strategy pays for every megabyte of its parent on every request,
in ``fork()`` and again when the child exits. The built-in modules therefore define their hooks
as plain functions named like the hook; gearshift's plugin manager recognises such functions with
or without ``@gearshift.hookimpl`` (pytest does the same for ``pytest_*`` functions).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Mapping
from types import MappingProxyType

from .errors import PluginError, UnknownStrategyError
from .strategy import Strategy

TYPE_CHECKING = False
if TYPE_CHECKING:
    from importlib import metadata
    from typing import Any

    import pluggy

ENTRY_POINT_GROUP = "gearshift.strategies"
BUILTIN_PLUGINS = (
    "gearshift.strategies.sync",
    "gearshift.strategies.thread",
    "gearshift.strategies.fork",
)
BUILTIN = "built-in"


class StrategyInfo:
    """Where a strategy came from: ``"built-in"`` or ``"<distribution> (entry point <name>)"``."""

    __slots__ = ("strategy", "origin")

    def __init__(self, strategy: type[Strategy], origin: str) -> None:
        self.strategy = strategy
        self.origin = origin


_lock = threading.RLock()
_strategies: tuple[tuple[str, ...], Mapping[str, StrategyInfo]] | None = None
_manager: tuple[tuple[str, ...], pluggy.PluginManager, dict[str, str]] | None = None


def get_plugin_manager() -> pluggy.PluginManager:
    """The pluggy manager with built-in and third-party plugins registered (imports pluggy)."""
    return _plugin_manager()[0]


def available_strategies() -> Mapping[str, type[Strategy]]:
    """Every strategy that can be asked for by name: built-ins and installed third-party ones."""
    return MappingProxyType({name: info.strategy for name, info in _registry().items()})


def strategy_origins() -> Mapping[str, str]:
    """Where each strategy comes from, for ``gearshift --list-strategies``."""
    return MappingProxyType({name: info.origin for name, info in _registry().items()})


def resolve_strategy(strategy: str | type[Strategy]) -> type[Strategy]:
    """The Strategy class for a name (or a Strategy subclass passed directly)."""
    if isinstance(strategy, type) and issubclass(strategy, Strategy):
        return strategy
    if not isinstance(strategy, str):
        raise TypeError(f"strategy must be a name or a Strategy subclass, not {strategy!r}")
    strategies = _registry()
    try:
        return strategies[strategy].strategy
    except KeyError:
        raise UnknownStrategyError(strategy, strategies) from None


def hook_implementations(hook_name: str) -> list[tuple[str, Callable[..., object]]]:
    """``(origin, call)`` for every plugin implementing ``hook_name``, in pluggy's call order (the
    last registered first). ``call(**hook_arguments)`` passes an implementation only the
    arguments it declares, as pluggy does. pluggy itself is used only if a third-party plugin
    may be installed."""
    if not _may_have_entry_points():
        modules = [_import(name) for name in BUILTIN_PLUGINS]
        functions = [getattr(module, hook_name, None) for module in reversed(modules)]
        return [(BUILTIN, _caller(f, _argnames(f))) for f in functions if callable(f)]
    pm, origins = _plugin_manager()
    return [
        (origins.get(impl.plugin_name, impl.plugin_name), _caller(impl.function, impl.argnames))
        for impl in reversed(getattr(pm.hook, hook_name).get_hookimpls())
    ]


def _argnames(function: Callable[..., object]) -> tuple[str, ...]:
    code = function.__code__  # type: ignore[attr-defined]
    return tuple(code.co_varnames[: code.co_argcount])


def _caller(function: Callable[..., object], argnames: tuple[str, ...]) -> Callable[..., object]:
    def call(**arguments: object) -> object:
        return function(*[arguments[name] for name in argnames])

    return call


def _registry() -> Mapping[str, StrategyInfo]:
    global _strategies
    key = tuple(sys.path)
    with _lock:
        if _strategies is None or _strategies[0] != key:
            _strategies = (key, _collect_strategies())
        return _strategies[1]


def _plugin_manager() -> tuple[pluggy.PluginManager, dict[str, str]]:
    global _manager
    key = tuple(sys.path)
    with _lock:
        if _manager is None or _manager[0] != key:
            _manager = (key, *_build_plugin_manager())
        return _manager[1], _manager[2]


def _collect_strategies() -> Mapping[str, StrategyInfo]:
    strategies: dict[str, StrategyInfo] = {}
    for origin, call in hook_implementations("gearshift_strategies"):
        try:
            provided = call()
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
    return MappingProxyType(dict(sorted(strategies.items())))


def _build_plugin_manager() -> tuple[pluggy.PluginManager, dict[str, str]]:
    from . import hookspecs

    pm = hookspecs.PluginManager()
    origins: dict[str, str] = {}
    for module_name in BUILTIN_PLUGINS:
        pm.register(_import(module_name), name=module_name)
        origins[module_name] = BUILTIN
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
    for hook_caller in pm.hook.__dict__.values():
        for impl in hook_caller.get_hookimpls() if not hook_caller.has_spec() else ():
            if impl.optionalhook:
                continue
            origin = origins.get(impl.plugin_name, impl.plugin_name)
            raise PluginError(
                f"gearshift plugin {origin} implements {hook_caller.name}(), which is not a gearshift "
                f"hook; the hooks are: {', '.join(hookspecs.HOOK_NAMES)}"
            )
    return pm, origins


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
    # importlib.machinery.PathFinder, without importing importlib (the frozen module is loaded).
    standard = sys.modules["_frozen_importlib_external"].PathFinder
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


def _import(module_name: str) -> Any:
    """``importlib.import_module`` for an absolute name, without importing ``importlib``."""
    __import__(module_name)
    return sys.modules[module_name]


def _describe(entry_point: Any) -> str:
    dist = entry_point.dist
    dist_name = f"{dist.name} {dist.version}" if dist is not None else "an unknown distribution"
    return f"{dist_name} (entry point {entry_point.name!r} = {entry_point.value!r})"


def _as_list(provided: object, origin: str) -> list[object]:
    if isinstance(provided, (list, tuple)):
        return list(provided)
    raise PluginError(f"gearshift plugin {origin} must return a list of Strategy classes, not {provided!r}")
