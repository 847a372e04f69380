"""The plugin registry: built-in strategies and third-party ones, registered the same way.

One pluggy plugin manager holds every plugin: the built-in strategy modules first, then each
module or object named by an entry point of the ``gearshift.strategies`` or ``gearshift.plugins``
group (the second for plugins that provide no strategy), then those given to
:func:`register_plugin`. Every strategy comes from a plugin's ``gearshift_strategies`` hook. The
registry is built on first use and cached; :func:`reset` forgets it, so that the next use sees
plugins installed since (tests do this).

The observer hooks are not called through pluggy's hook caller but through :data:`OBSERVERS`,
which holds each hook's implementations (empty when none): the place an event happens tests
that before it builds any argument, and :func:`notify` calls each implementation on its own, so
that one failing observer is logged and the others still run.

Layers above the core reserve the option names they take next to a strategy's (the HTTP layer
reserves its timeouts and limits) with :func:`reserve_options`; a strategy declaring a reserved
name is a :class:`PluginError` when the registry is built, rather than an option silently taken
by the other layer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING

import pluggy

from ..strategies import fork, prefork, sync, thread, threadpool
from . import hookspecs
from .errors import PluginError, UnknownStrategyError
from .strategy import Strategy

ENTRY_POINT_GROUP = "gearshift.strategies"
#: Entry points of plugins that provide no strategy (observers), loaded the same way.
PLUGIN_ENTRY_POINT_GROUP = "gearshift.plugins"
BUILTIN_PLUGINS: tuple[ModuleType, ...] = (sync, thread, threadpool, fork, prefork)
BUILTIN = "built-in"

log = logging.getLogger("gearshift")

#: One observer implementation: where it comes from, the hook's name, and how to call it.
Observer = tuple[str, str, Callable[..., object]]


class Observers:
    """The implementations of each observer hook, by the hook's name without ``gearshift_``
    (``OBSERVERS.request_finished``): a tuple, empty when no plugin implements the hook."""

    __slots__ = tuple(name.removeprefix("gearshift_") for name in hookspecs.OBSERVER_HOOKS)

    def __init__(self) -> None:
        for attribute in self.__slots__:
            setattr(self, attribute, ())

    def _fill(self, manager: pluggy.PluginManager, origins: Mapping[str, str]) -> None:
        for hook_name in hookspecs.OBSERVER_HOOKS:
            impls = getattr(manager.hook, hook_name).get_hookimpls()
            setattr(self, hook_name.removeprefix("gearshift_"), tuple(
                (origins.get(impl.plugin_name, impl.plugin_name), hook_name, _declared_arguments_only(impl))
                for impl in reversed(impls)
            ))

    if TYPE_CHECKING:
        server_started: tuple[Observer, ...]
        server_stopping: tuple[Observer, ...]
        connection_accepted: tuple[Observer, ...]
        connection_closed: tuple[Observer, ...]
        request_finished: tuple[Observer, ...]
        worker_started: tuple[Observer, ...]
        worker_exited: tuple[Observer, ...]


#: The observer hooks' implementations of the current registry (see :class:`Observers`).
OBSERVERS = Observers()


def notify(observers: tuple[Observer, ...], **arguments: object) -> None:
    """Call each of ``observers`` (one hook's implementations) with ``arguments``: one that
    raises is logged and the others still run; nothing reaches the caller (a request, the
    loop)."""
    for origin, hook_name, call in observers:
        try:
            call(**arguments)
        except Exception:
            log.exception("observer %s failed in %s()", origin, hook_name)


@dataclass(frozen=True)
class StrategyInfo:
    """A registered strategy and where it came from: ``"built-in"`` or
    ``"<distribution> <version> (entry point '<name>' = '<value>')"``."""

    strategy: type[Strategy]
    origin: str


@dataclass(frozen=True)
class _Registry:
    manager: pluggy.PluginManager
    origins: Mapping[str, str]  # pluggy plugin name -> origin
    strategies: Mapping[str, StrategyInfo]


_lock = threading.RLock()  # reentrant: a plugin's import may itself look strategies up
_registry: _Registry | None = None
_reserved: dict[str, str] = {}  # option name -> who reserved it
_runtime: list[tuple[object, str]] = []  # register_plugin()'s plugins, with their names


def reset() -> None:
    """Forget the registry: the next use loads the plugins again (for tests that install some)."""
    global _registry
    with _lock:
        _registry = None


def register_plugin(plugin: object, name: str | None = None) -> None:
    """Register ``plugin`` (a module, class or object with ``@gearshift.hookimpl`` functions)
    for this process, beside the installed ones: an observer, or strategies of its own. It takes
    effect at once, for servers already running too. Errors as for an installed plugin
    (:class:`PluginError`: an unknown hook, an unmarked one, a clashing strategy name)."""
    global _registry
    with _lock:
        if any(registered is plugin for registered, _ in _runtime):
            raise PluginError(f"gearshift plugin {plugin!r} is registered already")
        _runtime.append((plugin, name or f"runtime:{id(plugin):x}"))
        _registry = None
        try:
            _get()
        except BaseException:
            del _runtime[-1]
            _registry = None
            raise


def unregister_plugin(plugin: object) -> None:
    """Undo :func:`register_plugin`: its hooks are no longer called (in this process)."""
    global _registry
    with _lock:
        kept = [(registered, name) for registered, name in _runtime if registered is not plugin]
        if len(kept) == len(_runtime):
            raise PluginError(f"gearshift plugin {plugin!r} was not registered with register_plugin()")
        _runtime[:] = kept
        _registry = None
        _get()


def observers() -> Observers:
    """:data:`OBSERVERS`, once the registry is built (so that installed plugins are in it)."""
    _get()
    return OBSERVERS


def reserve_options(names: Iterable[str], owner: str) -> None:
    """Reserve option names for ``owner``, a layer that takes them next to a strategy's options
    (``"the HTTP layer (make_server)"``): no registered strategy may declare one."""
    global _registry
    with _lock:
        for name in names:
            _reserved[name] = owner
        _registry = None  # strategies registered before are checked against the new names too


def get_plugin_manager() -> pluggy.PluginManager:
    """The pluggy manager with the built-in and third-party plugins registered: call hooks as
    ``get_plugin_manager().hook.gearshift_add_options(parser=parser)``."""
    return _get().manager


def available_strategies() -> Mapping[str, type[Strategy]]:
    """Every strategy that can be asked for by name: built-ins and installed third-party ones."""
    return MappingProxyType({name: info.strategy for name, info in _get().strategies.items()})


def strategy_origins() -> Mapping[str, str]:
    """Where each strategy comes from, for ``gearshift --list-strategies``."""
    return MappingProxyType({name: info.origin for name, info in _get().strategies.items()})


def resolve_strategy(strategy: str | type[Strategy]) -> type[Strategy]:
    """The Strategy class for a name (or a Strategy subclass passed directly)."""
    if isinstance(strategy, type) and issubclass(strategy, Strategy):
        return strategy
    if not isinstance(strategy, str):
        raise TypeError(f"strategy must be a name or a Strategy subclass, not {strategy!r}")
    strategies = _get().strategies
    try:
        return strategies[strategy].strategy
    except KeyError:
        raise UnknownStrategyError(strategy, strategies) from None


def hook_implementations(hook_name: str) -> list[tuple[str, Callable[..., object]]]:
    """Each plugin's implementation of ``hook_name``, in the order pluggy calls them, as
    ``(origin, call)``: for a caller that must know which plugin a result (or an error) came
    from, which ``pm.hook.<hook_name>(...)`` does not say. ``call(**arguments)`` passes an
    implementation only the arguments it declares, as pluggy does."""
    registry = _get()
    return [
        (registry.origins.get(impl.plugin_name, impl.plugin_name), _declared_arguments_only(impl))
        for impl in reversed(getattr(registry.manager.hook, hook_name).get_hookimpls())
    ]


def _declared_arguments_only(impl: pluggy.HookImpl) -> Callable[..., object]:
    def call(**arguments: object) -> object:
        return impl.function(*(arguments[name] for name in impl.argnames))

    return call


def _get() -> _Registry:
    global _registry
    with _lock:
        if _registry is None:
            manager, origins = _build_plugin_manager()
            _registry = _Registry(manager, MappingProxyType(origins), _collect_strategies(manager, origins))
            OBSERVERS._fill(manager, origins)
        return _registry


def _build_plugin_manager() -> tuple[pluggy.PluginManager, dict[str, str]]:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    origins: dict[str, str] = {}
    for module in BUILTIN_PLUGINS:
        pm.register(module, name=module.__name__)
        origins[module.__name__] = BUILTIN
    entry_points = [
        (group, entry_point)
        for group in (ENTRY_POINT_GROUP, PLUGIN_ENTRY_POINT_GROUP)
        for entry_point in sorted(metadata.entry_points(group=group), key=lambda ep: (ep.name, ep.value))
    ]
    for group, entry_point in entry_points:
        origin = _describe(entry_point)
        try:
            plugin = entry_point.load()
        except Exception as exc:
            raise PluginError(f"cannot load gearshift plugin {origin}: {type(exc).__name__}: {exc}") from exc
        if pm.is_registered(plugin):
            continue  # one module named by two entry points (or one distribution seen twice)
        _register(pm, plugin, f"{group}:{entry_point.name}", origin, origins)
    for plugin, plugin_name in _runtime:
        _register(pm, plugin, plugin_name, f"{plugin!r} (register_plugin)", origins)
    return pm, origins


def _register(pm: pluggy.PluginManager, plugin: object, plugin_name: str, origin: str,
              origins: dict[str, str]) -> None:
    try:
        pm.register(plugin, name=plugin_name)
    except Exception as exc:
        raise PluginError(f"cannot register gearshift plugin {origin}: {exc}") from exc
    origins[plugin_name] = origin
    _check_hooks(pm, plugin, origin)


def _check_hooks(pm: pluggy.PluginManager, plugin: object, origin: str) -> None:
    """A plugin's hooks must be gearshift's hooks, marked: a typo or a forgotten marker would
    otherwise make the plugin silently provide nothing."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError:
        unknown = ", ".join(f"{c.name}()" for c in pm.get_hookcallers(plugin) or () if not c.has_spec())
        raise PluginError(
            f"gearshift plugin {origin} implements {unknown}, which is not a gearshift hook; "
            f"the hooks are: {', '.join(hookspecs.HOOK_NAMES)}"
        ) from None
    marked = {caller.name for caller in pm.get_hookcallers(plugin) or ()}
    unmarked = [name for name in hookspecs.HOOK_NAMES if name not in marked and callable(getattr(plugin, name, None))]
    if unmarked:
        raise PluginError(
            f"gearshift plugin {origin} defines {', '.join(f'{n}()' for n in unmarked)} without "
            f"@gearshift.hookimpl; mark it so that gearshift calls it"
        )


def _collect_strategies(pm: pluggy.PluginManager, origins: Mapping[str, str]) -> Mapping[str, StrategyInfo]:
    strategies: dict[str, StrategyInfo] = {}
    # One implementation at a time, so that each class is known by the plugin that provided it
    # (pluggy's own call returns the results without saying whose they are). The hook takes no
    # arguments, so each implementation is called as pluggy would call it.
    for impl in reversed(pm.hook.gearshift_strategies.get_hookimpls()):
        origin = origins.get(impl.plugin_name, impl.plugin_name)
        try:
            provided = impl.function()
        except Exception as exc:
            raise PluginError(f"gearshift plugin {origin} failed in gearshift_strategies(): {exc!r}") from exc
        if provided is None:
            continue
        if not isinstance(provided, (list, tuple)):
            raise PluginError(
                f"gearshift plugin {origin} must return a list of Strategy classes, not {provided!r}"
            )
        for strategy in provided:
            _check_strategy(strategy, origin, strategies)
            strategies[strategy.name] = StrategyInfo(strategy, origin)
    return MappingProxyType(dict(sorted(strategies.items())))


def _check_strategy(strategy: object, origin: str, registered: Mapping[str, StrategyInfo]) -> None:
    if not (isinstance(strategy, type) and issubclass(strategy, Strategy)):
        raise PluginError(
            f"gearshift plugin {origin} returned {strategy!r}, which is not a gearshift.Strategy subclass"
        )
    if not isinstance(strategy.name, str) or not strategy.name:
        raise PluginError(f"gearshift plugin {origin} returned {strategy.__qualname__} without a name")
    clash = registered.get(strategy.name)
    if clash is not None and clash.strategy is not strategy:
        raise PluginError(
            f"strategy name {strategy.name!r} is provided twice: by {clash.origin} "
            f"({clash.strategy.__module__}.{clash.strategy.__qualname__}) and by {origin} "
            f"({strategy.__module__}.{strategy.__qualname__}); uninstall one of them"
        )
    for option in strategy.option_defaults():
        owner = _reserved.get(option)
        if owner is not None:
            raise PluginError(
                f"strategy {strategy.name!r} of gearshift plugin {origin} declares the option {option!r}, "
                f"which {owner} reserves; the strategy must rename it"
            )


def _describe(entry_point: metadata.EntryPoint) -> str:
    dist = entry_point.dist
    dist_name = f"{dist.name} {dist.version}" if dist is not None else "an unknown distribution"
    return f"{dist_name} (entry point {entry_point.name!r} = {entry_point.value!r})"
