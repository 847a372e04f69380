"""Strategies come from plugins: the built-ins, and third parties found through REAL entry points
(a ``*.dist-info`` directory with ``entry_points.txt`` on sys.path), and broken plugins give
errors naming the entry point and the distribution. The registry is cached: tests that install
a plugin call ``gearshift.core.plugins.reset()``."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from core_helpers import ask, serve

import gearshift
from gearshift.core import PluginError, plugins, strategy_origins
from gearshift.core.plugins import hook_implementations

pytestmark = pytest.mark.timeout(20)

REVERSED_PLUGIN = '''\
import gearshift
class ReversedSync(gearshift.Strategy):
    name = "reversed-sync"
    def process_request(self, request, client_address):
        try:
            self.server.finish_request(request, client_address)
        except Exception:
            self.server.handle_error(request, client_address)
        finally:
            self.server.shutdown_request(request)
@gearshift.hookimpl
def gearshift_strategies():
    return [ReversedSync]
'''


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """Returns ``install(module, source, dist=..., entry_point=...)``, which writes a module and a
    ``<dist>-<version>.dist-info`` declaring it under the ``gearshift.strategies`` group in a
    directory on sys.path, and resets the registry. The modules are dropped from sys.modules and
    the registry is reset again afterwards."""
    modules: list[str] = []
    monkeypatch.syspath_prepend(str(tmp_path))

    def install(module: str, source: str, *, dist: str, entry_point: str, version: str = "1.0",
                value: str | None = None, group: str = "gearshift.strategies") -> None:
        modules.append(module)
        (tmp_path / f"{module}.py").write_text(source)
        # As in a wheel, the directory name escapes "-" in the distribution name as "_"
        # (importlib.metadata reads the name up to the first "-" of the directory name).
        info = tmp_path / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[{group}]\n{entry_point} = {value or module}\n")
        plugins.reset()

    yield install
    for module in modules:
        sys.modules.pop(module, None)
    monkeypatch.undo()  # sys.path first: the registry rebuilt next must not see these plugins
    plugins.reset()


def test_builtin_strategies_are_available():
    strategies = gearshift.available_strategies()
    assert {"sync", "thread", "fork"} <= set(strategies)
    for name in ("sync", "thread", "fork"):
        assert issubclass(strategies[name], gearshift.Strategy)
        assert strategies[name].name == name
        assert strategy_origins()[name] == "built-in"
        assert strategies[name].description()
    assert strategies["thread"].multithread and not strategies["thread"].multiprocess
    assert strategies["fork"].multiprocess and not strategies["fork"].multithread
    assert strategies["thread"].option_defaults() == {"daemon_threads": False, "block_on_close": True,
                                                      "max_threads": None}
    assert strategies["fork"].option_defaults() == {"max_children": 40, "block_on_close": True, "freeze_gc": True}
    assert strategies["sync"].option_defaults() == {}


def test_available_strategies_is_read_only():
    with pytest.raises(TypeError):
        gearshift.available_strategies()["mine"] = gearshift.Strategy  # type: ignore[index]


def test_third_party_strategy_through_a_real_entry_point(tmp_path, monkeypatch):
    (tmp_path / "myplugin.py").write_text(REVERSED_PLUGIN)
    info = tmp_path / "myplugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: myplugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[gearshift.strategies]\nreversed = myplugin\n")
    try:
        assert "reversed-sync" not in gearshift.available_strategies()
        with monkeypatch.context() as patch:
            patch.syspath_prepend(str(tmp_path))
            plugins.reset()
            strategies = gearshift.available_strategies()
            assert "reversed-sync" in strategies
            assert strategies["reversed-sync"].__module__ == "myplugin"
            assert {"sync", "thread", "fork"} <= set(strategies)
            origin = strategy_origins()["reversed-sync"]
            assert "myplugin 1.0" in origin and "'reversed'" in origin
            server = gearshift.Server(("127.0.0.1", 0), _Echo, strategy="reversed-sync")
            assert server.strategy.name == "reversed-sync"
            with serve(server):
                assert ask(server.server_address, "plugin") == "plugin"
                assert ask(server.server_address, "again") == "again"
        # sys.path restored and the registry reset: the plugin is gone
        plugins.reset()
        assert "reversed-sync" not in gearshift.available_strategies()
        with pytest.raises(gearshift.UnknownStrategyError):
            gearshift.Server(("127.0.0.1", 0), _Echo, strategy="reversed-sync")
    finally:
        sys.modules.pop("myplugin", None)
        plugins.reset()


def test_the_registry_is_cached_until_reset(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins.reset()
    assert "reversed-sync" not in gearshift.available_strategies()
    (tmp_path / "gs_late.py").write_text(REVERSED_PLUGIN)
    info = tmp_path / "late-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: late\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[gearshift.strategies]\nlate = gs_late\n")
    try:
        assert "reversed-sync" not in gearshift.available_strategies()  # installed after the first use
        plugins.reset()
        assert "reversed-sync" in gearshift.available_strategies()
        assert plugins.get_plugin_manager().has_plugin("gearshift.strategies:late")
    finally:
        sys.modules.pop("gs_late", None)
        monkeypatch.undo()
        plugins.reset()


class _Echo:
    """A minimal handler class without socketserver: anything callable as (request, addr, server)."""

    def __init__(self, request, client_address, server):
        data = b""
        while not data.endswith(b"\n"):
            chunk = request.recv(100)
            if not chunk:
                break
            data += chunk
        request.sendall(data)


def test_plugin_that_fails_to_import(plugin_dir):
    plugin_dir("gs_broken_import", "raise ImportError('missing dependency frobnicate')\n",
               dist="broken-import-dist", entry_point="brokenimport")
    with pytest.raises(gearshift.PluginError) as info:
        gearshift.available_strategies()
    message = str(info.value)
    assert "broken-import-dist 1.0" in message
    assert "'brokenimport'" in message
    assert "frobnicate" in message
    # the server cannot be built either, with the same clear error
    with pytest.raises(gearshift.PluginError):
        gearshift.Server(("127.0.0.1", 0), _Echo)


def test_plugin_entry_point_naming_a_missing_module(plugin_dir):
    plugin_dir("gs_present_module", "", dist="typo-dist", entry_point="typo", value="gs_no_such_module")
    with pytest.raises(gearshift.PluginError) as info:
        gearshift.available_strategies()
    assert "typo-dist 1.0" in str(info.value) and "'typo'" in str(info.value)
    assert "gs_no_such_module" in str(info.value)


def test_plugin_returning_a_non_strategy(plugin_dir):
    plugin_dir("gs_not_a_strategy", textwrap.dedent('''\
        import gearshift
        class NotAStrategy:
            name = "not-a-strategy"
        @gearshift.hookimpl
        def gearshift_strategies():
            return [NotAStrategy]
        '''), dist="wrong-type-dist", entry_point="wrongtype")
    with pytest.raises(gearshift.PluginError) as info:
        gearshift.available_strategies()
    message = str(info.value)
    assert "wrong-type-dist 1.0" in message and "'wrongtype'" in message
    assert "NotAStrategy" in message and "not a gearshift.Strategy subclass" in message


def test_plugin_returning_something_other_than_a_list(plugin_dir):
    plugin_dir("gs_not_a_list", textwrap.dedent('''\
        import gearshift
        class Single(gearshift.Strategy):
            name = "single"
        @gearshift.hookimpl
        def gearshift_strategies():
            return Single
        '''), dist="not-a-list-dist", entry_point="notalist")
    with pytest.raises(gearshift.PluginError) as info:
        gearshift.available_strategies()
    assert "not-a-list-dist 1.0" in str(info.value) and "'notalist'" in str(info.value)


def test_plugin_whose_hook_raises(plugin_dir):
    plugin_dir("gs_hook_raises", textwrap.dedent('''\
        import gearshift
        @gearshift.hookimpl
        def gearshift_strategies():
            raise RuntimeError("hook blew up")
        '''), dist="raising-dist", entry_point="raising")
    with pytest.raises(gearshift.PluginError) as info:
        gearshift.available_strategies()
    assert "raising-dist 1.0" in str(info.value) and "'raising'" in str(info.value)
    assert "hook blew up" in str(info.value)


def test_plugin_strategy_without_a_name(plugin_dir):
    plugin_dir("gs_nameless", textwrap.dedent('''\
        import gearshift
        class Nameless(gearshift.Strategy):
            def process_request(self, request, client_address):
                self.handle_connection(request, client_address)
        @gearshift.hookimpl
        def gearshift_strategies():
            return [Nameless]
        '''), dist="nameless-dist", entry_point="nameless")
    with pytest.raises(gearshift.PluginError) as info:
        gearshift.available_strategies()
    message = str(info.value)
    assert "nameless-dist 1.0" in message and "'nameless'" in message
    assert "Nameless" in message and "without a name" in message


def _strategy_source(class_name: str, strategy_name: str) -> str:
    return textwrap.dedent(f'''\
        import gearshift
        class {class_name}(gearshift.Strategy):
            name = {strategy_name!r}
            def process_request(self, request, client_address):
                self.handle_connection(request, client_address)
        @gearshift.hookimpl
        def gearshift_strategies():
            return [{class_name}]
        ''')


def test_two_plugins_providing_the_same_name(plugin_dir):
    plugin_dir("gs_dup_one", _strategy_source("First", "duplicated"), dist="dup-one-dist", entry_point="dupone")
    plugin_dir("gs_dup_two", _strategy_source("Second", "duplicated"), dist="dup-two-dist", entry_point="duptwo")
    with pytest.raises(gearshift.PluginError) as info:
        gearshift.available_strategies()
    message = str(info.value)
    assert "'duplicated'" in message
    for part in ("dup-one-dist 1.0", "'dupone'", "gs_dup_one.First",
                 "dup-two-dist 1.0", "'duptwo'", "gs_dup_two.Second"):
        assert part in message


def test_plugin_reusing_a_builtin_name(plugin_dir):
    plugin_dir("gs_fake_sync", _strategy_source("FakeSync", "sync"), dist="impostor-dist", entry_point="impostor")
    with pytest.raises(gearshift.PluginError) as info:
        gearshift.available_strategies()
    message = str(info.value)
    assert "'sync'" in message and "built-in" in message
    assert "impostor-dist 1.0" in message and "'impostor'" in message and "FakeSync" in message


def test_two_entry_points_for_one_module_register_it_once(plugin_dir):
    plugin_dir("gs_listed_twice", _strategy_source("Twice", "twice-listed"), dist="twice-a", entry_point="twicea")
    plugin_dir("gs_listed_twice_other", "", dist="twice-b", entry_point="twiceb", value="gs_listed_twice")
    assert "twice-listed" in gearshift.available_strategies()


def test_plugin_returning_nothing_is_ignored(plugin_dir):
    plugin_dir("gs_returns_none", textwrap.dedent('''\
        import gearshift
        @gearshift.hookimpl
        def gearshift_strategies():
            return None
        '''), dist="none-dist", entry_point="none")
    assert {"sync", "thread", "fork"} <= set(gearshift.available_strategies())


def test_hookimpl_is_pluggys_marker_for_gearshift():
    import pluggy

    assert isinstance(gearshift.hookimpl, pluggy.HookimplMarker)
    assert gearshift.hookimpl.project_name == "gearshift"
    assert gearshift.core.hookimpl is gearshift.hookimpl


def test_unmarked_hook_function_of_a_third_party_plugin_is_an_error(plugin_dir):
    plugin_dir("gs_unmarked", REVERSED_PLUGIN.replace("@gearshift.hookimpl\n", ""),
               dist="unmarked-dist", entry_point="unmarked")
    with pytest.raises(gearshift.PluginError) as info:
        gearshift.available_strategies()
    message = str(info.value)
    assert "unmarked-dist 1.0" in message and "'unmarked'" in message
    assert "gearshift_strategies() without @gearshift.hookimpl" in message


def test_builtin_strategy_modules_are_marked_plugins():
    pm = plugins.get_plugin_manager()
    for name in ("sync", "thread", "fork"):
        module = sys.modules[f"gearshift.strategies.{name}"]
        assert pm.is_registered(module)
        assert hasattr(module.gearshift_strategies, "gearshift_impl")  # @gearshift.hookimpl's mark


def test_marked_function_that_is_not_a_hook_is_an_error(plugin_dir):
    plugin_dir("gs_typo", textwrap.dedent('''\
        import gearshift
        @gearshift.hookimpl
        def gearshift_strategy():  # singular: not a gearshift hook
            return []
        '''), dist="typo-dist", entry_point="typo")
    with pytest.raises(gearshift.PluginError) as info:
        gearshift.available_strategies()
    message = str(info.value)
    assert "typo-dist 1.0" in message and "gearshift_strategy()" in message
    assert "gearshift_add_options, gearshift_strategies" in message


def test_add_options_hook_through_pluggy_passes_only_declared_arguments(plugin_dir):
    plugin_dir("gs_options", textwrap.dedent('''\
        import gearshift
        seen = []
        @gearshift.hookimpl
        def gearshift_add_options():  # declares none of the hook's arguments, as pluggy allows
            seen.append("called")
        '''), dist="options-dist", entry_point="options")
    # the built-in fork and thread strategies declare options too
    calls = [(origin, call) for origin, call in hook_implementations("gearshift_add_options") if origin != "built-in"]
    assert [origin for origin, _ in calls] == ["options-dist 1.0 (entry point 'options' = 'gs_options')"]
    calls[0][1](parser=object())
    assert sys.modules["gs_options"].seen == ["called"]


RESERVED_OPTION_PLUGIN = '''\
import gearshift
class Slow(gearshift.Strategy):
    name = "slow"
    def __init__(self, server, *, head_timeout=1.0):
        super().__init__(server)
    def process_request(self, request, client_address):
        self.handle_connection(request, client_address)
@gearshift.hookimpl
def gearshift_strategies():
    return [Slow]
'''


def test_a_strategy_option_named_like_an_http_option_is_refused_at_registration(plugin_dir):
    plugin_dir("gs_reserved", RESERVED_OPTION_PLUGIN, dist="reserved-dist", entry_point="reserved")
    with pytest.raises(gearshift.PluginError) as info:
        gearshift.available_strategies()
    message = str(info.value)
    assert "strategy 'slow'" in message and "reserved-dist 1.0" in message
    assert "'head_timeout'" in message and "HTTP layer" in message


def test_reserving_an_option_name_rechecks_registered_strategies(plugin_dir):
    source = RESERVED_OPTION_PLUGIN.replace("head_timeout", "grace_period")
    plugin_dir("gs_reserved_later", source, dist="later-dist", entry_point="later")
    assert "slow" in gearshift.available_strategies()
    try:
        plugins.reserve_options(["grace_period"], owner="a test layer")
        with pytest.raises(gearshift.PluginError, match="'grace_period', which a test layer reserves"):
            gearshift.available_strategies()
    finally:
        plugins._reserved.pop("grace_period", None)
        plugins.reset()


def test_a_process_using_only_builtin_strategies_does_not_import_ssl():
    """``ssl`` is imported only for TLS: a plain server never loads it."""
    out = subprocess.run([sys.executable, "-c", BUILTIN_ONLY_PROCESS], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    assert out.strip() == "", f"imported: {out.strip()}"


BUILTIN_ONLY_PROCESS = """
import sys, socketserver, gearshift
for name in ("sync", "thread", "fork"):
    gearshift.Server(("127.0.0.1", 0), socketserver.BaseRequestHandler, strategy=name).server_close()
assert sorted(gearshift.available_strategies()) == ["fork", "prefork", "sync", "thread", "threadpool"]
print("ssl" if "ssl" in sys.modules else "")
"""


# -- capabilities (Strategy.lacks) ---------------------------------------------------------------


def test_a_strategy_has_every_capability_unless_it_declares_what_it_lacks():
    class Full(gearshift.Strategy):
        name = "full"

    class Partial(gearshift.Strategy):
        name = "partial"
        lacks = {"terminate"}  # any collection of names; stored as a frozenset

    assert Full.lacks == frozenset()
    assert Partial.lacks == frozenset({"terminate"}) and isinstance(Partial.lacks, frozenset)
    builtins = gearshift.available_strategies()
    assert builtins["sync"].lacks == {"concurrent", "terminate"}
    assert builtins["thread"].lacks == builtins["threadpool"].lacks == {"terminate"}
    assert builtins["fork"].lacks == frozenset()


def test_an_unknown_capability_name_is_an_error_naming_the_known_ones():
    with pytest.raises(ValueError, match=r"Typo.lacks names unknown capability 'concurent' \(did you mean "
                                         r"'concurrent'\?\); the capabilities are: concurrent, terminate"):
        class Typo(gearshift.Strategy):
            lacks = frozenset({"concurent"})
    with pytest.raises(TypeError, match="must be a frozenset of capability names, not 'terminate'"):
        class NotASet(gearshift.Strategy):
            lacks = "terminate"


# -- observers: the gearshift.plugins group and register_plugin() ---------------------------------

OBSERVER_SOURCE = """
import gearshift

seen = []

@gearshift.hookimpl
def gearshift_server_started(server):
    seen.append(server)
"""


def test_observer_plugin_through_the_plugins_entry_point_group(plugin_dir):
    plugin_dir("gs_observer", OBSERVER_SOURCE, dist="gs-observer", entry_point="watch", group="gearshift.plugins")
    observers = plugins.observers()
    assert [origin for origin, _, _ in observers.server_started] == [
        "gs-observer 1.0 (entry point 'watch' = 'gs_observer')"
    ]
    assert not observers.request_finished


def test_observer_hook_misspelt_is_an_error(plugin_dir):
    source = OBSERVER_SOURCE.replace("gearshift_server_started", "gearshift_server_startd")
    plugin_dir("gs_typo", source, dist="gs-typo", entry_point="typo", group="gearshift.plugins")
    with pytest.raises(PluginError, match=r"implements gearshift_server_startd\(\), which is not a gearshift hook"):
        plugins.observers()


class Observer:
    def __init__(self):
        self.accepted = []

    @gearshift.hookimpl
    def gearshift_connection_accepted(self, client_address):
        self.accepted.append(client_address)


def test_register_plugin_takes_effect_at_once_and_unregister_undoes_it():
    observer = Observer()
    gearshift.register_plugin(observer)
    try:
        assert [call for _, _, call in plugins.OBSERVERS.connection_accepted]
        with pytest.raises(PluginError, match="is registered already"):
            gearshift.register_plugin(observer)
    finally:
        gearshift.unregister_plugin(observer)
    assert not plugins.OBSERVERS.connection_accepted
    with pytest.raises(PluginError, match="was not registered with register_plugin"):
        gearshift.unregister_plugin(observer)


def test_register_plugin_checks_the_plugin_and_keeps_nothing_broken():
    class Unmarked:
        def gearshift_request_finished(self, record):
            pass

    with pytest.raises(PluginError, match=r"defines gearshift_request_finished\(\) without @gearshift.hookimpl"):
        gearshift.register_plugin(Unmarked())
    assert "sync" in gearshift.available_strategies()  # the registry still builds
