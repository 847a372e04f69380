"""The ``gearshift`` command: argument and environment parsing, app loading and the demo app
in-process; serving, signals, errors, plugins and socket activation for real, in subprocesses."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from wsgiref.util import setup_testing_defaults
from wsgiref.validate import validator

import pytest
from cli_helpers import (
    GEARSHIFT,
    GREETER_PLUGIN,
    BackgroundRequest,
    GearshiftProcess,
    assert_error,
    clean_env,
    connection_refused,
    holding_a_connection,
    is_alive,
    port_is_free,
    request,
    run_gearshift,
    socket_activation_command,
    write_dist_info,
    write_module,
)

from gearshift import cli, demo, loader
from gearshift.settings import Setting

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_PLUGIN = REPO / "examples" / "reversed_strategy"
BUILTIN_STRATEGIES = ["sync", "thread", "threadpool", "fork"]

GOOD_APP = '''
import json, os

NOT_CALLABLE = 42
NOTHING = None

def app(environ, start_response):
    body = b"good app"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

class holder:
    app = staticmethod(app)

def create_app(greeting="hi", *, suffix=""):
    def greeting_app(environ, start_response):
        body = (greeting + suffix).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    return greeting_app

def failing_factory():
    raise RuntimeError("the factory broke")

def env_app(environ, start_response):
    body = json.dumps({k: os.environ.get(k) for k in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
'''

FAKE_STRATEGY = '''
import gearshift

class FakeStrategy(gearshift.Strategy):
    """A fake strategy that tests install through an entry point."""
    name = "fake"

    def process_request(self, request, client_address):
        self.handle_connection(request, client_address)

@gearshift.hookimpl
def gearshift_strategies():
    return [FakeStrategy]
'''


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with application modules, used as the subprocess's current directory."""
    directory = tmp_path_factory.mktemp("apps")
    write_module(directory, "goodapp", GOOD_APP)
    write_module(directory, "brokenapp", "import no_such_dependency_abc\n")
    write_module(directory, "syntaxapp", "def broken(:\n")
    return directory


# -- in-process: parsing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8000", cli.Bind("127.0.0.1:8000", host="127.0.0.1", port=8000)),
        ("localhost:0", cli.Bind("localhost:0", host="localhost", port=0)),
        (":8080", cli.Bind(":8080", host="0.0.0.0", port=8080)),
        ("[::1]:9000", cli.Bind("[::1]:9000", host="::1", port=9000)),
        ("[::]:80", cli.Bind("[::]:80", host="::", port=80)),
        ("unix:/run/app.sock", cli.Bind("unix:/run/app.sock", path="/run/app.sock")),
    ],
)
def test_parse_bind(text: str, expected: cli.Bind) -> None:
    assert cli.parse_bind(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("localhost", "expected HOST:PORT"),
        ("host:http", "port must be a number"),
        ("host:70000", "port must be a number"),
        ("::1:8000", "brackets"),
        ("[::1]8000", "expected HOST:PORT"),
        ("[nope]:8000", "not an IPv6 address"),
        ("unix:", "expected HOST:PORT"),
    ],
)
def test_parse_bind_rejects(text: str, message: str) -> None:
    with pytest.raises(cli.UsageError, match=message):
        cli.parse_bind(text)


@pytest.mark.parametrize(
    ("text", "module", "path", "call"),
    [
        ("pkg.mod:app", "pkg.mod", ("app",), None),
        ("mod", "mod", None, None),
        ("mod:obj.inner.app", "mod", ("obj", "inner", "app"), None),
        ("mod:create_app()", "mod", ("create_app",), ((), {})),
        ("mod:create_app('x', 2, debug=True)", "mod", ("create_app",), (("x", 2), {"debug": True})),
        ("mod:factories.make( [1, 2] )", "mod", ("factories", "make"), (([1, 2],), {})),
    ],
)
def test_parse_app_spec(text: str, module: str, path: tuple[str, ...] | None, call: object) -> None:
    spec = loader.parse_app_spec(text)
    assert (spec.module, spec.path, spec.call, spec.file) == (module, path, call, None)


@pytest.mark.parametrize(
    ("text", "file", "path"),
    [("./hello.py:app", "./hello.py", ("app",)), ("hello.py", "hello.py", None),
     ("src/hello.py:app", "src/hello.py", ("app",)),
     ("/srv/site/hello.py:create()", "/srv/site/hello.py", ("create",))],
)
def test_parse_app_spec_takes_a_file(text: str, file: str, path: tuple[str, ...] | None) -> None:
    spec = loader.parse_app_spec(text)
    assert (spec.file, spec.module, spec.path) == (file, "hello", path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("my-app:app", "expected MODULE:APP, e.g. myapp:app or myapp.py:app"),
        (":app", "expected MODULE:APP"),
        ("mod:app[0]", "not a name or a call"),
        ("mod:create_app(x)", "must be literals"),
        ("mod:create_app(**opts)", "not supported"),
        ("mod:1 +", "not a name or a call"),
    ],
)
def test_parse_app_spec_rejects(text: str, message: str) -> None:
    with pytest.raises(loader.AppSpecError, match=message):
        loader.parse_app_spec(text)


def _args(argv: list[str], environ: dict[str, str] | None = None) -> argparse.Namespace:
    return cli.parse_args(cli.build_parser(), argv, environ or {})


def test_defaults() -> None:
    args = _args([])
    assert args.app is None and args.bind is None and args.strategy == "threadpool"
    assert args.graceful_timeout == 30.0 and args.access_log == "-" and args.log_level == "info"
    assert args.no_access_log is None and args.access_log_format is None
    assert args.forwarded_allow_ips is None and args.root_path is None  # make_server's defaults apply
    assert args.max_children is None and args.daemon_threads is None
    # the strategies' own defaults apply: the command does not repeat them
    assert args.threads is None and args.max_queue is None and args.max_threads is None


def test_environment_supplies_options_and_command_line_wins() -> None:
    environ = {
        "GEARSHIFT_STRATEGY": "fork", "GEARSHIFT_MAX_CHILDREN": "7", "GEARSHIFT_DAEMON_THREADS": "yes",
        "GEARSHIFT_BIND": "127.0.0.1:1, unix:/tmp/a.sock  [::1]:2", "GEARSHIFT_APP": "mod:app",
        "GEARSHIFT_ACCESS_LOG": "-", "GEARSHIFT_LOG_LEVEL": "WARNING", "GEARSHIFT_GRACEFUL_TIMEOUT": "2.5",
    }
    args = _args([], environ)
    assert (args.strategy, args.max_children, args.daemon_threads) == ("fork", 7, True)
    assert args.bind == ["127.0.0.1:1", "unix:/tmp/a.sock", "[::1]:2"]
    assert (args.app, args.access_log, args.log_level, args.graceful_timeout) == ("mod:app", "-", "warning", 2.5)
    args = _args(["other:app", "-s", "sync", "--max-children", "3", "-b", ":9"], environ)
    assert (args.app, args.strategy, args.max_children, args.bind) == ("other:app", "sync", 3, [":9"])


def test_false_flag_in_environment_is_not_given() -> None:
    assert _args([], {"GEARSHIFT_DAEMON_THREADS": "off"}).daemon_threads is None


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"GEARSHIFT_MAX_CHILDREN": "many"}, "GEARSHIFT_MAX_CHILDREN: invalid value 'many'"),
        ({"GEARSHIFT_DAEMON_THREADS": "maybe"}, "GEARSHIFT_DAEMON_THREADS='maybe': expected 1/0"),
        ({"GEARSHIFT_LOG_LEVEL": "loud"}, "GEARSHIFT_LOG_LEVEL: invalid choice 'loud'"),
    ],
)
def test_bad_environment_values_are_usage_errors(environ: dict[str, str], message: str) -> None:
    with pytest.raises(cli.UsageError, match=message):
        _args([], environ)


def test_access_log_takes_a_value_and_refuses_to_guess(importable: Path) -> None:
    args = _args(["--access-log", "-", "mod:app"])
    assert (args.app, args.access_log) == ("mod:app", "-")
    args = _args(["mod:app", "--access-log", "/var/log/access.log"])
    assert (args.app, args.access_log) == ("mod:app", "/var/log/access.log")
    assert _args(["--access-log", "access.log"]).access_log == "access.log"  # no module 'access': a file
    assert _args(["--access-log", "goodapp", "goodapp:app"]).access_log == "goodapp"  # the app is given
    with pytest.raises(cli.UsageError, match=r"^argument --access-log: expected one argument \(a file name, or - for"):
        _args(["--access-log"])
    # "gearshift --access-log goodapp": a log file named goodapp while serving the demo, or the
    # app goodapp? Refused, rather than guessed either way.
    for value in ("goodapp", "goodapp:app", "mod:create_app()"):
        message = rf"^--access-log takes a file name .* is '{re.escape(value)}' the application\?"
        with pytest.raises(cli.UsageError, match=message):
            _args(["--access-log", value])
    with pytest.raises(cli.UsageError, match="^GEARSHIFT_ACCESS_LOG takes a file name"):
        _args([], {"GEARSHIFT_ACCESS_LOG": "goodapp"})


def test_unknown_option_suggests_the_closest() -> None:
    message = r"^unrecognized arguments: --max-chidren=4; did you mean --max-children\?$"
    with pytest.raises(cli.UsageError, match=message):
        _args(["--max-chidren=4"])
    with pytest.raises(cli.UsageError, match=r"did you mean --keep-alive-timeout\?$"):
        _args(["mod:app", "--keepalive-timeout", "3"])
    with pytest.raises(cli.UsageError, match=r"^unrecognized arguments: --zzz$"):
        _args(["--zzz"])


def test_unknown_gearshift_variables_are_reported_with_the_closest_name() -> None:
    args = _args([], {"GEARSHIFT_MAX_CHILDRN": "3", "GEARSHIFT_STRATEGY": "fork", "GEARSHIFT_ZZZ": "1"})
    assert args.max_children is None
    assert args.warnings == [
        "GEARSHIFT_MAX_CHILDRN is not a gearshift setting and is ignored; did you mean GEARSHIFT_MAX_CHILDREN?",
        "GEARSHIFT_ZZZ is not a gearshift setting and is ignored (see 'gearshift --help' for the variables)",
    ]


@pytest.mark.parametrize(("text", "value"), [("007", 0o007), ("0o077", 0o077), ("0", 0), ("777", 0o777), ("22", 0o022)])
def test_umask_is_octal(text: str, value: int) -> None:
    assert _args(["--umask", text]).umask == value
    assert _args([], {"GEARSHIFT_UMASK": text}).umask == value


@pytest.mark.parametrize("text", ["8", "1000", "0x7", "-1", "", "rwx"])
def test_umask_rejects(text: str) -> None:
    with pytest.raises(cli.UsageError, match="expected an octal number from 0 to 777"):
        _args([f"--umask={text}"])


def test_listen_fds_reads_and_unsets_the_environment() -> None:
    environ = {"LISTEN_FDS": "2", "LISTEN_PID": str(os.getpid()), "LISTEN_FDNAMES": "a:b", "OTHER": "x"}
    assert cli.listen_fds(environ) == [3, 4]
    assert environ == {"OTHER": "x"}
    environ = {"LISTEN_FDS": "1", "LISTEN_PID": "1"}  # meant for another process
    assert cli.listen_fds(environ) == [] and environ == {}
    assert cli.listen_fds({}) == []


def test_strategy_options_pass_only_given_values_the_strategy_takes() -> None:
    from gearshift.strategies.fork import ForkStrategy
    from gearshift.strategies.thread import ThreadStrategy

    args = _args(["--max-children", "3"])
    # an option a plugin added with parser.add_argument(), for another strategy: not passed
    args.settings += (Setting("log_every", ("--log-every",), "", type=int, target="if-accepted"),)
    args.log_every = 5
    assert cli.strategy_options(args, ForkStrategy) == {"max_children": 3}
    assert cli.strategy_options(_args([]), ForkStrategy) == {}
    message = r"^--max-children \(GEARSHIFT_MAX_CHILDREN\) does not apply to strategy 'thread'"
    with pytest.raises(cli.UsageError, match=message):
        cli.strategy_options(args, ThreadStrategy)


def test_a_setting_name_is_taken_once() -> None:
    parser = cli.build_parser()
    for name in ("max_children", "given", "warnings"):  # a built-in's, and the parsed command's own attributes
        with pytest.raises(ValueError, match=f"a setting named '{name}' exists already"):
            parser.add_setting(Setting(name, ("--other-" + name,), ""))


def test_list_strategies_table() -> None:
    table = cli.format_strategies().splitlines()
    header = ["NAME", "MULTITHREAD", "MULTIPROCESS", "CONCURRENT", "TERMINATE", "ORIGIN", "DESCRIPTION"]
    assert table[0].split() == header
    rows = {line.split()[0]: line.split()[:6] for line in table[1:]}
    # What a user gives up by choosing each one: the flags, then a column per capability.
    assert rows["sync"] == ["sync", "no", "no", "no", "no", "built-in"]
    assert rows["thread"] == ["thread", "yes", "no", "yes", "no", "built-in"]
    assert rows["threadpool"] == ["threadpool", "yes", "no", "yes", "no", "built-in"]
    assert rows["fork"] == ["fork", "no", "yes", "yes", "yes", "built-in"]
    assert set(rows) >= set(BUILTIN_STRATEGIES)


# -- in-process: loading the application ---------------------------------------------------------


@pytest.fixture
def importable(app_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(app_dir))
    for name in ("goodapp", "brokenapp", "syntaxapp"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return app_dir


def _body(app: object) -> bytes:
    environ: dict[str, object] = {}
    setup_testing_defaults(environ)
    return b"".join(app(environ, lambda status, headers, exc_info=None: None))  # type: ignore[operator]


@pytest.mark.parametrize(
    ("spec", "body"),
    [
        ("goodapp", b"good app"),
        ("goodapp:app", b"good app"),
        ("goodapp:holder.app", b"good app"),
        ("goodapp:create_app()", b"hi"),
        ("goodapp:create_app('hello', suffix='!')", b"hello!"),
    ],
)
def test_load_app(importable: Path, spec: str, body: bytes) -> None:
    assert _body(loader.load_app(spec)) == body


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nosuchmodule_xyz:app", "cannot import 'nosuchmodule_xyz': no module named 'nosuchmodule_xyz'"),
        ("goodapp.sub:app", "no module named 'goodapp.sub'"),
        ("brokenapp:app",
         "error while importing 'brokenapp': ModuleNotFoundError: No module named 'no_such_dependency_abc'"),
        ("syntaxapp:app", r"error while importing 'syntaxapp': SyntaxError: .*syntaxapp.py, line 1"),
        ("goodapp:missing", "'goodapp' has no attribute 'missing'"),
        ("goodapp:holder.missing", "'goodapp.holder' has no attribute 'missing'"),
        ("goodapp:NOT_CALLABLE", "goodapp:NOT_CALLABLE is an int, not callable"),
        ("goodapp:holder.app.__name__", "is a str, not callable"),
        ("goodapp:NOTHING", "is None, not a WSGI application"),
        ("goodapp:NOT_CALLABLE()", "is an int, not a factory"),
        ("goodapp:failing_factory()",
         "calling the factory 'goodapp:failing_factory\\(\\)' failed: RuntimeError: the factory broke"),
        ("goodapp:create_app(1, 2, 3)", "failed: TypeError"),
        ("goodapp:failing_factory", "takes no arguments.*'goodapp:failing_factory\\(\\)'"),
    ],
)
def test_load_app_errors(importable: Path, spec: str, message: str) -> None:
    with pytest.raises(loader.AppLoadError, match=message):
        loader.load_app(spec)


@pytest.fixture
def restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("goodapp", "pkg", "pkg.web", "pkg.helpers"):
        monkeypatch.delitem(sys.modules, name, raising=False)


def test_load_app_from_a_file(app_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              restore_sys_path: None) -> None:
    monkeypatch.chdir(tmp_path)
    assert _body(loader.load_app(f"{app_dir}/goodapp.py:create_app('from a file')")) == b"from a file"
    assert sys.path[0] == str(app_dir)  # its directory is importable, as for the file itself
    # a file inside a package imports as part of it, so that its relative imports work
    package = tmp_path / "site" / "pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("BODY = b'from a package'\n")
    (package / "web.py").write_text(textwrap.dedent("""
        from .helpers import BODY

        def app(environ, start_response):
            start_response("200 OK", [("Content-Length", str(len(BODY)))])
            return [BODY]
    """))
    assert _body(loader.load_app("site/pkg/web.py:app")) == b"from a package"
    assert sys.modules["pkg.web"].__file__ == str(package / "web.py")


def test_load_app_from_a_file_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_sys_path: None) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "json.py").write_text("def app(environ, start_response): return []\n")
    (tmp_path / "my-app.py").write_text("")
    (tmp_path / "dir.py").mkdir()
    cases = [
        ("nothere.py:app", "cannot import 'nothere.py': no such file"),
        ("./dir.py:app", "cannot import './dir.py': is a directory"),
        ("./my-app.py:app", "'my-app' is not a valid module name; rename the file"),
        ("./json.py:app", "cannot import './json.py' as module 'json': that name is already another module"),
        ("sub/app:app", "cannot import 'sub/app': no such file"),
    ]
    for spec, message in cases:
        with pytest.raises(loader.AppLoadError, match=re.escape(message)):
            loader.load_app(spec)


# -- in-process: the demo app --------------------------------------------------------------------


def _call_demo(path: str, method: str = "GET", body: bytes = b"", query: str = "") -> tuple[str, bytes]:
    environ: dict[str, object] = {}
    setup_testing_defaults(environ)
    environ.update(PATH_INFO=path, REQUEST_METHOD=method, QUERY_STRING=query, **{"wsgi.input": io.BytesIO(body)})
    environ["gearshift.strategy"] = "thread"
    if body:
        environ["CONTENT_LENGTH"] = str(len(body))
        environ["CONTENT_TYPE"] = "text/plain"
    status: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # wsgiref.validate reports problems as warnings too
        result = validator(demo.app)(environ, lambda s, h, exc_info=None: status.append(s) or (lambda data: None))
        try:
            data = b"".join(result)
        finally:
            result.close()  # type: ignore[attr-defined]
    return status[0], data


@pytest.mark.parametrize(
    ("path", "method", "body", "query", "status", "contains"),
    [
        ("/", "GET", b"", "", "200 OK", b"served by strategy <strong>thread</strong>"),
        ("/", "HEAD", b"", "", "200 OK", b""),
        ("/json", "GET", b"", "", "200 OK", b'"strategy": "thread"'),
        ("/stream", "GET", b"", "", "200 OK", b"line 5 of 5"),
        ("/slow", "GET", b"", "seconds=0.05", "200 OK", b"slept 0.0"),
        ("/slow", "GET", b"", "seconds=31", "400 Bad Request", b"from 0 to 30"),
        ("/slow", "GET", b"", "seconds=nan", "400 Bad Request", b""),
        ("/echo", "POST", b"hello body", "", "200 OK", b"hello body"),
        ("/echo", "GET", b"", "", "405 Method Not Allowed", b"POST"),
        ("/nowhere", "GET", b"", "", "404 Not Found", b"/nowhere"),
    ],
)
def test_demo_app_is_valid_wsgi(path: str, method: str, body: bytes, query: str, status: str, contains: bytes) -> None:
    got_status, data = _call_demo(path, method, body, query)
    assert got_status == status
    assert contains in data


def test_demo_fail_raises() -> None:
    with pytest.raises(RuntimeError, match="/fail"):
        _call_demo("/fail")


# -- subprocess: serving ---------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", BUILTIN_STRATEGIES)
def test_serves_the_demo_under_each_builtin_strategy(strategy: str) -> None:
    with GearshiftProcess(["-b", "127.0.0.1:0", "-s", strategy]) as server:
        (url,) = server.wait_ready()
        address = server.address()
        assert url == f"http://127.0.0.1:{address[1]}" and address[1] != 0
        status, _, body = request(address, "/json")
        facts = json.loads(body)
        assert status == 200 and facts["strategy"] == strategy
        if strategy == "fork":
            assert facts["pid"] != server.pid and facts["multiprocess"]
        else:
            assert facts["pid"] == server.pid
        assert (facts["thread"] != "MainThread") == (strategy in ("thread", "threadpool"))
        status, headers, page = request(address, "/")
        assert status == 200 and headers["content-type"].startswith("text/html") and strategy.encode() in page
        status, _, streamed = request(address, "/stream")
        assert status == 200 and streamed.count(b"\n") == demo.STREAM_LINES
        assert request(address, "/fail")[0] == 500
        assert server.stop(signal.SIGTERM) == 0
    assert "Traceback" not in server.stderr.split("/fail")[0]  # only the app's own error is logged
    expected = f"gearshift 0.1.0: serving {url} with strategy {strategy}"
    assert expected in server.stderr and "Ctrl+C to quit" in server.stderr
    if strategy == "fork":
        assert "(max_children=40)" in server.stderr
    if strategy == "threadpool":
        assert "(threads=8)" in server.stderr


def test_banner_shows_every_listener_and_all_of_them_serve(tmp_path: Path) -> None:
    path = str(tmp_path / "gs.sock")
    inherited = socket.create_server(("127.0.0.1", 0))
    try:
        fd = inherited.fileno()
        args = ["-b", "127.0.0.1:0", "-b", f"unix:{path}", "--fd", str(fd), "-s", "thread", "--daemon-threads"]
        with GearshiftProcess(args, pass_fds=[fd]) as server:
            urls = server.wait_ready(3)
            assert urls[0] == f"http://127.0.0.1:{inherited.getsockname()[1]}"  # --fd first
            assert urls[2] == f"http+unix:{path}"
            assert "with strategy thread (daemon_threads=True)" in server.stderr
            inherited.close()
            for address in (server.address(0), server.address(1), path):
                assert request(address, "/json")[0] == 200
            assert server.stop() == 0
        assert not os.path.exists(path)  # the command removes the Unix sockets it created
    finally:
        inherited.close()


def test_options_from_environment(app_dir: Path) -> None:
    env = clean_env(GEARSHIFT_STRATEGY="fork", GEARSHIFT_MAX_CHILDREN="3", GEARSHIFT_BIND="127.0.0.1:0",
                    GEARSHIFT_APP="goodapp:create_app('from env')")
    with GearshiftProcess([], env=env, cwd=app_dir) as server:
        server.wait_ready()
        assert "with strategy fork (max_children=3)" in server.stderr
        assert request(server.address(), "/")[2] == b"from env"
        assert server.stop() == 0


def test_console_script_imports_from_the_current_directory(app_dir: Path) -> None:
    script = Path(sys.executable).parent / "gearshift"
    if not script.exists():
        pytest.skip("the gearshift console script is not installed next to this Python")
    args = ["goodapp:create_app('console')", "-b", "127.0.0.1:0", "-s", "sync"]
    with GearshiftProcess(args, command=[str(script)], cwd=app_dir) as server:
        assert request(server.address(), "/")[2] == b"console"
        assert server.stop(signal.SIGINT) == 0


def test_access_log_to_stderr() -> None:
    with GearshiftProcess(["-b", "127.0.0.1:0", "--access-log", "-", "-s", "sync"]) as server:
        request(server.address(), "/json?x=1")
        line = server.wait_for(r'"GET /json\?x=1 HTTP/1.1" 200 \d+')[0].string
        assert line.startswith("127.0.0.1 - - [")  # the bare common log format, no log prefix
        assert server.stop() == 0


def test_access_log_to_a_file_from_fork_children(tmp_path: Path) -> None:
    log_path = tmp_path / "access.log"
    with GearshiftProcess(["-b", "127.0.0.1:0", "-s", "fork", "--access-log", str(log_path)]) as server:
        address = server.address()
        for _ in range(3):
            assert request(address, "/json")[0] == 200
        assert server.stop() == 0
    lines = log_path.read_text().splitlines()
    assert len(lines) == 3 and all('"GET /json HTTP/1.1" 200' in line for line in lines)
    assert "GET /json" not in server.stderr


def test_http_options_reach_the_server() -> None:
    args = ["-b", "127.0.0.1:0", "-s", "sync", "--max-body-size", "10", "--max-request-line", "64",
            "--keep-alive-timeout", "0"]
    with GearshiftProcess(args) as server:
        address = server.address()
        assert request(address, "/echo", "POST", b"0123456789")[0] == 200
        assert request(address, "/echo", "POST", b"0123456789!")[0] == 413
        assert request(address, "/json?" + "x" * 64)[0] == 414
        assert server.stop() == 0


def test_access_log_on_stderr_by_default_and_no_access_log() -> None:
    with GearshiftProcess(["-b", "127.0.0.1:0", "-s", "sync"]) as server:
        request(server.address(), "/json")
        server.wait_for(r'^127\.0\.0\.1 - - \[.*\] "GET /json HTTP/1\.1" 200 ')
        assert server.stop() == 0
    with GearshiftProcess(["-b", "127.0.0.1:0", "-s", "sync", "--no-access-log"]) as server:
        request(server.address(), "/json")
        assert server.stop() == 0
    assert "GET /json" not in server.stderr


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """cert.pem and key.pem, other_key.pem (not cert.pem's), both.pem (cert then key) and
    encrypted_key.pem (key.pem with a passphrase), made with the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    files = {name: directory / f"{name}.pem" for name in ("cert", "key", "other_key", "both", "encrypted_key")}
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(files["key"]), "-out", str(files["cert"])],
        check=True, capture_output=True, timeout=60,
    )
    subprocess.run([openssl, "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                    "-out", str(files["other_key"])], check=True, capture_output=True, timeout=60)
    subprocess.run([openssl, "pkey", "-in", str(files["key"]), "-aes256", "-passout", "pass:secret",
                    "-out", str(files["encrypted_key"])], check=True, capture_output=True, timeout=60)
    files["both"].write_text(files["cert"].read_text() + files["key"].read_text())
    return files


def _tls_context(certfile: Path | str, keyfile: Path | str | None = None) -> ssl.SSLContext | None:
    return cli.ssl_context_from(argparse.Namespace(certfile=str(certfile), keyfile=keyfile and str(keyfile)))


def test_tls_certificate_and_key_load(tls_files: dict[str, Path]) -> None:
    assert isinstance(_tls_context(tls_files["cert"], tls_files["key"]), ssl.SSLContext)
    assert isinstance(_tls_context(tls_files["both"]), ssl.SSLContext)  # the key in the same file


def test_tls_errors_say_which_file_and_what_is_wrong(tls_files: dict[str, Path], tmp_path: Path) -> None:
    cert, key = tls_files["cert"], tls_files["key"]
    der = tmp_path / "cert.der"
    der.write_bytes(ssl.PEM_cert_to_DER_cert(cert.read_text()))
    cases = [
        # OpenSSL alone says "[SSL] PEM lib (_ssl.c:...)" for most of these
        ((cert, None), f"--certfile {cert} holds no private key: give the key's file with --keyfile"),
        ((tmp_path / "missing.pem", None), f"--certfile {tmp_path / 'missing.pem'}: no such file or directory"),
        ((key, key), f"--certfile {key}: not a PEM certificate"),
        ((der, key), f"--certfile {der}: not a PEM certificate"),
        ((cert, tmp_path / "nokey.pem"), f"--keyfile {tmp_path / 'nokey.pem'}: no such file or directory"),
        ((cert, cert), f"--keyfile {cert}: not a PEM private key"),
        ((cert, tls_files["other_key"]),
         f"the private key in --keyfile {tls_files['other_key']} does not match the certificate in {cert}"),
        ((cert, tls_files["encrypted_key"]), f"--keyfile {tls_files['encrypted_key']}: the private key is encrypted"),
    ]
    for (certfile, keyfile), message in cases:
        with pytest.raises(cli.CommandError) as caught:
            _tls_context(certfile, keyfile)
        assert str(caught.value).startswith(message), (certfile, keyfile, str(caught.value))


def test_certificate_without_its_key_is_one_clear_line(tls_files: dict[str, Path]) -> None:
    result = run_gearshift(["-b", "127.0.0.1:0", "--certfile", str(tls_files["cert"])])
    assert_error(result, 1, f"--certfile {tls_files['cert']} holds no private key: give the key's file with --keyfile")
    assert "PEM lib" not in result.stderr


def test_https(tls_files: dict[str, Path]) -> None:
    cert, key = tls_files["cert"], tls_files["key"]
    args = ["-b", "127.0.0.1:0", "--certfile", str(cert), "--keyfile", str(key), "-s", "thread"]
    with GearshiftProcess(args) as server:
        (url,) = server.wait_ready()
        assert url.startswith("https://127.0.0.1:")
        context = ssl.create_default_context(cafile=str(cert))
        status, _, body = request(server.address(), "/json", context=context)
        assert status == 200 and json.loads(body)["strategy"] == "thread"
        assert server.stop() == 0


def test_ipv6() -> None:
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 loopback")
    with GearshiftProcess(["-b", "[::1]:0", "-s", "sync"]) as server:
        (url,) = server.wait_ready()
        assert url.startswith("http://[::1]:")
        assert request(server.address(), "/json")[0] == 200
        assert server.stop() == 0


# -- subprocess: stopping ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "signum"),
    [("fork", signal.SIGTERM), ("fork", signal.SIGINT), ("thread", signal.SIGTERM), ("thread", signal.SIGINT),
     ("threadpool", signal.SIGTERM), ("threadpool", signal.SIGINT),
     ("sync", signal.SIGTERM)],
    ids=lambda value: getattr(value, "name", value),
)
def test_signal_stops_gracefully(strategy: str, signum: signal.Signals) -> None:
    with GearshiftProcess(["-b", "127.0.0.1:0", "-s", strategy]) as server:
        address = server.address()
        # 2 s: long enough for the in-flight check to see it accepted on a loaded machine
        slow = BackgroundRequest(address, "/slow?seconds=2")
        children = _wait_until_in_flight(server, strategy)
        server.send(signum)
        if strategy != "sync":  # sync's loop is busy with the request: it closes right after it
            assert connection_refused(address, within=0.8), "still accepting after the signal"
        slow.join(10)
        assert slow.error is None and slow.result is not None, slow.error
        assert slow.result[0] == 200 and slow.result[2].startswith(b"slept 2.0")
        assert server.wait() == 0
        assert f"{signum.name}: stopped accepting" in server.stderr
        assert "Traceback" not in server.stderr
        assert not [pid for pid in children if is_alive(pid)], "a child outlived the server"
        assert port_is_free(*address)


def _wait_until_in_flight(server: GearshiftProcess, strategy: str) -> list[int]:
    """Wait until the server has accepted the slow request's connection (the server itself, or
    for fork the child serving it, holds it); for fork, return the children."""
    port = server.address()[1]

    def holders() -> list[int]:
        pids = holding_a_connection(server.pid, port)
        return [pid for pid in pids if pid != server.pid] if strategy == "fork" else pids

    deadline = time.monotonic() + 10
    while not (found := holders()):
        assert time.monotonic() < deadline, f"the request was not accepted within 10 s:\n{server.stderr}"
        time.sleep(0.01)
    return found if strategy == "fork" else []


def test_second_sigint_exits_at_once_and_kills_children() -> None:
    with GearshiftProcess(["-b", "127.0.0.1:0", "-s", "fork"]) as server:
        address = server.address()
        slow = BackgroundRequest(address, "/slow?seconds=20")
        children = _wait_until_in_flight(server, "fork")
        assert children, server.stderr
        server.send(signal.SIGINT)
        server.wait_for("SIGINT: stopped accepting", timeout=5)
        started = time.monotonic()
        server.send(signal.SIGINT)
        code = server.wait(5)
        took = time.monotonic() - started
        assert code == 128 + signal.SIGINT and took < 3, (code, took, server.stderr)
        assert "second SIGINT: exiting at once, killed 1 worker" in server.stderr, server.stderr
        assert not [pid for pid in children if is_alive(pid)], (children, server.stderr)
        slow.join(5)
        assert slow.result is None, slow.result  # the connection died with the child


def test_graceful_timeout_bounds_the_drain() -> None:
    with GearshiftProcess(["-b", "127.0.0.1:0", "-s", "fork", "--graceful-timeout", "0.5"]) as server:
        slow = BackgroundRequest(server.address(), "/slow?seconds=20")
        children = _wait_until_in_flight(server, "fork")
        started = time.monotonic()
        assert server.stop(signal.SIGTERM, timeout=10) == 0
        assert time.monotonic() - started < 5
        assert "drain timeout" in server.stderr
        assert not [pid for pid in children if is_alive(pid)]
        slow.join(5)


# -- subprocess: the other signals ---------------------------------------------------------------


@pytest.mark.parametrize("strategy", BUILTIN_STRATEGIES)
def test_hup_and_usr2_are_logged_and_ignored(strategy: str) -> None:
    with GearshiftProcess(["-b", "127.0.0.1:0", "-s", strategy]) as server:
        address = server.address()
        for count, signum in enumerate((signal.SIGHUP, signal.SIGUSR2, signal.SIGHUP), 1):
            server.send(signum)  # one at a time: two of the same pending at once are delivered once
            server.wait_for(r"WARNING: SIG(HUP|USR2): strategy '\w+' does not support reload; ignored", count=count)
            assert request(address, "/json")[0] == 200
        assert f"SIGUSR2: strategy '{strategy}' does not support reload; ignored" in server.stderr
        assert server.stop() == 0


@pytest.mark.parametrize("strategy", ["thread", "threadpool", "fork"])
def test_usr1_reopens_the_access_log(tmp_path: Path, strategy: str) -> None:
    log_path, rotated = tmp_path / "access.log", tmp_path / "access.log.1"
    with GearshiftProcess(["-b", "127.0.0.1:0", "-s", strategy, "--access-log", str(log_path)]) as server:
        address = server.address()
        assert request(address, "/json?before")[0] == 200
        _wait_for_text(log_path, "GET /json?before")  # written once the response is sent
        os.rename(log_path, rotated)  # what logrotate does, then its postrotate script sends USR1
        server.send(signal.SIGUSR1)
        server.wait_for(f"INFO: SIGUSR1: reopened the access log {log_path}")
        assert request(address, "/json?after")[0] == 200
        assert server.stop() == 0
    old, new = rotated.read_text().splitlines(), log_path.read_text().splitlines()
    assert len(old) == 1 and "GET /json?before" in old[0], old
    assert len(new) == 1 and "GET /json?after" in new[0], new


def _wait_for_text(path: Path, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in (path.read_text() if path.exists() else ""):
        assert time.monotonic() < deadline, f"no {text!r} in {path} within {timeout} s"
        time.sleep(0.01)


def test_usr1_without_an_access_log_file() -> None:
    with GearshiftProcess(["-b", "127.0.0.1:0", "-s", "sync", "--access-log", "-"]) as server:
        address = server.address()
        server.send(signal.SIGUSR1)
        server.wait_for("SIGUSR1: no access-log file to reopen")
        assert request(address, "/json")[0] == 200
        assert server.stop() == 0


@pytest.mark.parametrize("strategy", ["thread", "threadpool", "fork"])
def test_sigquit_is_a_fast_stop(strategy: str) -> None:
    with GearshiftProcess(["-b", "127.0.0.1:0", "-s", strategy]) as server:
        address = server.address()
        slow = BackgroundRequest(address, "/slow?seconds=30")
        children = _wait_until_in_flight(server, strategy)
        server.send(signal.SIGQUIT)
        # far less than the 30 s drain a SIGTERM would allow, and the 30 s the request takes
        assert server.wait(20) == 0, server.stderr
        note = ", killed 1 worker" if strategy == "fork" else ""
        assert f"WARNING: SIGQUIT: fast stop: stopped accepting{note}; in-flight requests are cut off" in server.stderr
        assert "gearshift 0.1.0: stopped" in server.stderr and "Traceback" not in server.stderr
        slow.join(10)
        assert slow.result is None, slow.result
        assert not [pid for pid in children if is_alive(pid)]
        assert port_is_free(*address)


def test_fork_children_leave_the_signals_to_their_parent() -> None:
    with GearshiftProcess(["-b", "127.0.0.1:0", "-s", "fork"]) as server:
        address = server.address()
        slow = BackgroundRequest(address, "/slow?seconds=3")
        children = _wait_until_in_flight(server, "fork")
        assert children, server.stderr
        for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT):
            os.kill(children[0], signum)  # as `killall -HUP gearshift` does: children match too
        slow.join(15)
        assert slow.error is None and slow.result is not None and slow.result[0] == 200, (slow.error, server.stderr)
        assert "SIGHUP" not in server.stderr and "SIGQUIT" not in server.stderr  # the child said nothing
        assert request(address, "/json")[0] == 200
        assert server.stop() == 0


SLOW_IMPORT = """
import os, sys, time
sys.stderr.write("importing slowapp\\n")
sys.stderr.flush()
while not os.path.exists(os.environ["SLOWAPP_GO"]):
    time.sleep(0.01)

def app(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]
"""


def test_signals_while_the_application_imports(tmp_path: Path) -> None:
    write_module(tmp_path, "slowapp", SLOW_IMPORT)
    go = tmp_path / "go"
    env = clean_env(SLOWAPP_GO=str(go))
    with GearshiftProcess(["slowapp:app", "-b", "127.0.0.1:0", "-s", "sync"], cwd=tmp_path, env=env) as server:
        server.wait_for("importing slowapp")
        server.send(signal.SIGHUP)  # acted on once serving begins
        go.touch()
        server.wait_ready()
        server.wait_for("SIGHUP: strategy 'sync' does not support reload; ignored")
        assert request(server.address(), "/")[2] == b"ok"
        assert server.stop() == 0
    go.unlink()
    with GearshiftProcess(["slowapp:app", "-b", "127.0.0.1:0", "-s", "sync"], cwd=tmp_path, env=env) as server:
        server.wait_for("importing slowapp")
        server.send(signal.SIGTERM)
        assert server.wait() == 128 + signal.SIGTERM
        assert "gearshift: error: SIGTERM before serving began: not started" in server.stderr
        assert "Traceback" not in server.stderr


# -- subprocess: Unix socket permissions, files as MODULE, warnings --------------------------------


def test_umask_sets_the_mode_of_the_unix_sockets(tmp_path: Path) -> None:
    paths = [tmp_path / "first.sock", tmp_path / "second.sock"]
    binds = [arg for path in paths for arg in ("-b", f"unix:{path}")]
    for args, env, mode in [(["--umask", "077"], {}, 0o700), ([], {"GEARSHIFT_UMASK": "007"}, 0o770)]:
        with GearshiftProcess([*binds, "-s", "sync", *args], env=clean_env(**env)) as server:
            server.wait_ready(2)
            assert [stat.S_IMODE(os.stat(path).st_mode) for path in paths] == [mode, mode]
            assert request(str(paths[1]), "/json")[0] == 200
            assert server.stop() == 0


def test_module_given_as_a_file(app_dir: Path, tmp_path: Path) -> None:
    specs = [("./goodapp.py:create_app('file')", app_dir), (f"{app_dir}/goodapp.py:create_app('file')", tmp_path)]
    for spec, cwd in specs:
        with GearshiftProcess([spec, "-b", "127.0.0.1:0", "-s", "sync"], cwd=cwd) as server:
            assert request(server.address(), "/")[2] == b"file"
            assert server.stop() == 0


def test_misspelt_variable_is_warned_about() -> None:
    result = run_gearshift(["-b", "localhost"], env=clean_env(GEARSHIFT_MAX_CHILDRN="3"))
    assert_error(result, 2, "bad bind address 'localhost'")
    assert ("WARNING: GEARSHIFT_MAX_CHILDRN is not a gearshift setting and is ignored; "
            "did you mean GEARSHIFT_MAX_CHILDREN?") in result.stderr


# -- subprocess: errors --------------------------------------------------------------------------


ERROR_CASES = [
    # (id, arguments, extra environment, exit status, message)
    ("module-not-found", ["nosuchmodule_xyz:app"], {}, 1, "no module named 'nosuchmodule_xyz'"),
    ("import-error-inside", ["brokenapp:app"], {}, 1,
     "error while importing 'brokenapp': ModuleNotFoundError: No module named 'no_such_dependency_abc'"),
    ("syntax-error", ["syntaxapp:app"], {}, 1, "SyntaxError"),
    ("attribute-missing", ["goodapp:missing"], {}, 1, "'goodapp' has no attribute 'missing'"),
    ("not-callable", ["goodapp:NOT_CALLABLE"], {}, 1, "goodapp:NOT_CALLABLE is an int, not callable"),
    ("factory-fails", ["goodapp:failing_factory()"], {}, 1, "RuntimeError: the factory broke"),
    ("app-file-missing", ["nothere.py:app"], {}, 1, "cannot import 'nothere.py': no such file"),
    ("bad-app-syntax", ["goodapp:app[0]"], {}, 2, "is not a name or a call"),
    ("unknown-strategy", ["-s", "nope"], {}, 2,
     "unknown strategy 'nope'; available strategies: fork, prefork, sync, thread, threadpool"),
    ("bad-option-value", ["-s", "fork", "--max-children", "0"], {}, 2, ": --max-children must be a whole number >= 1"),
    ("bad-option-value-from-env", ["-s", "fork"], {"GEARSHIFT_MAX_CHILDREN": "0"}, 2,
     ": GEARSHIFT_MAX_CHILDREN must be a whole number >= 1, not 0"),
    ("bad-threads", ["--threads", "0"], {}, 2, ": --threads must be a whole number >= 1, not 0"),
    ("bad-max-queue", ["--max-queue", "-1"], {}, 2,
     ": --max-queue must be a whole number >= 0 or None for no limit, not -1"),
    ("bad-max-threads", ["-s", "thread"], {"GEARSHIFT_MAX_THREADS": "0"}, 2,
     ": GEARSHIFT_MAX_THREADS must be a whole number >= 1 or None for no limit, not 0"),
    ("option-of-another-strategy", ["-s", "thread", "--max-children", "4"], {}, 2,
     "--max-children (GEARSHIFT_MAX_CHILDREN) does not apply to strategy 'thread', whose options are: "
     "block_on_close, daemon_threads, max_threads"),
    ("threadpool-option-for-thread", ["-s", "thread", "--threads", "4"], {}, 2,
     "--threads (GEARSHIFT_THREADS) does not apply to strategy 'thread'"),
    ("max-threads-for-the-default", ["--max-threads", "4"], {}, 2,
     "--max-threads (GEARSHIFT_MAX_THREADS) does not apply to strategy 'threadpool', whose options are: "
     "max_queue, threads"),
    ("flag-of-another-strategy", ["-s", "sync"], {"GEARSHIFT_DAEMON_THREADS": "1"}, 2,
     "--daemon-threads (GEARSHIFT_DAEMON_THREADS) does not apply to strategy 'sync', whose options are: none"),
    ("bad-http-option", ["--keep-alive-timeout", "-1"], {}, 2,
     ": --keep-alive-timeout must be a number of seconds >= 0"),
    ("not-a-number", ["--max-children", "lots"], {}, 2, "argument --max-children: invalid int value: 'lots'"),
    ("unknown-option", ["--bogus"], {}, 2, "unrecognized arguments: --bogus"),
    ("misspelt-option", ["--max-chidren", "4"], {}, 2,
     "unrecognized arguments: --max-chidren; did you mean --max-children?"),
    ("bad-env-value", [], {"GEARSHIFT_MAX_CHILDREN": "lots"}, 2, "GEARSHIFT_MAX_CHILDREN: invalid value 'lots'"),
    ("bad-bind", ["-b", "localhost"], {}, 2, "bad bind address 'localhost'"),
    ("ipv6-without-brackets", ["-b", "::1:8000"], {}, 2, "put an IPv6 address in brackets"),
    ("negative-graceful-timeout", ["--graceful-timeout", "-1"], {}, 2, "--graceful-timeout must be >= 0"),
    ("nan-graceful-timeout", ["--graceful-timeout", "nan"], {}, 2, "--graceful-timeout must be >= 0, not nan"),
    ("keyfile-alone", ["--keyfile", "k.pem"], {}, 2, "--keyfile needs --certfile"),
    ("certfile-missing", ["--certfile", "missing.pem"], {}, 1, "--certfile missing.pem: no such file or directory"),
    ("certfile-not-a-certificate", ["--certfile", "goodapp.py"], {}, 1, "--certfile goodapp.py: not a PEM certificate"),
    ("access-log-without-value", ["--access-log"], {}, 2, "expected one argument (a file name, or - for stderr)"),
    ("access-log-or-app", ["--access-log", "goodapp"], {}, 2,
     "--access-log takes a file name (or - for stderr) and no MODULE:APP was given: is 'goodapp' the application?"),
    ("bad-umask", ["--umask", "8"], {}, 2, "argument --umask: expected an octal number from 0 to 777"),
    ("bad-umask-env", [], {"GEARSHIFT_UMASK": "0o1000"}, 2, "GEARSHIFT_UMASK: invalid value '0o1000'"),
    ("access-log-unwritable", ["--access-log", "/nonexistent-dir/access.log"], {}, 1,
     "cannot open access log /nonexistent-dir/access.log: no such file or directory"),
    ("fd-not-open", ["--fd", "987"], {}, 1, "--fd 987: descriptor 987: bad file descriptor"),
]


@pytest.mark.parametrize(("args", "environ", "status", "message"), [case[1:] for case in ERROR_CASES],
                         ids=[case[0] for case in ERROR_CASES])
def test_errors_are_one_line_and_an_exit_status(app_dir: Path, args: list[str], environ: dict[str, str],
                                                status: int, message: str) -> None:
    result = run_gearshift(["-b", "127.0.0.1:0", *args], env=clean_env(**environ), cwd=app_dir)
    assert_error(result, status, message)


def test_port_in_use() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_gearshift(["-b", f"127.0.0.1:{port}"])
    assert_error(result, 1, f"cannot listen on 127.0.0.1:{port}: address already in use")


def test_permission_denied() -> None:
    command = list(GEARSHIFT)
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv to drop CAP_NET_BIND_SERVICE")
        command = [setpriv, "--bounding-set", "-net_bind_service", *command]
    elif int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text()) <= 80:
        pytest.skip("port 80 is not privileged here")
    result = run_gearshift(["-b", "127.0.0.1:80"], command=command)
    assert_error(result, 1, "cannot listen on 127.0.0.1:80: permission denied (ports below 1024 need root")


def test_fork_unavailable() -> None:
    code = "import os, sys; del os.fork; from gearshift.cli import main; sys.exit(main(sys.argv[1:]))"
    result = run_gearshift(["-b", "127.0.0.1:0", "-s", "fork"], command=[sys.executable, "-c", code])
    assert_error(result, 1, "strategy 'fork' needs os.fork(), which this platform does not have")


def test_broken_plugin(tmp_path: Path) -> None:
    write_dist_info(tmp_path, "gearshift-broken", "0.0.1", {"broken": "broken_plugin_mod"})
    write_module(tmp_path, "broken_plugin_mod", "raise ImportError('plugin dependency missing')\n")
    result = run_gearshift(["-b", "127.0.0.1:0"], env=clean_env(PYTHONPATH=str(tmp_path)))
    assert_error(result, 1, "cannot load gearshift plugin gearshift-broken 0.0.1 (entry point 'broken'")
    assert "plugin dependency missing" in result.stderr


def test_plugin_option_clash(tmp_path: Path) -> None:
    write_dist_info(tmp_path, "gearshift-clash", "0.0.1", {"clash": "clash_plugin_mod"})
    write_module(tmp_path, "clash_plugin_mod", textwrap.dedent("""
        import gearshift

        @gearshift.hookimpl
        def gearshift_add_options(parser):
            parser.add_argument("--max-children", type=int)
    """))
    result = run_gearshift(["--help"], env=clean_env(PYTHONPATH=str(tmp_path)))
    assert_error(result, 1, "gearshift plugin gearshift-clash 0.0.1 (entry point 'clash' = 'clash_plugin_mod') "
                             "failed in gearshift_add_options()")
    assert "conflicting option string: --max-children" in result.stderr


# -- subprocess: plugins and socket activation ---------------------------------------------------


def test_list_strategies_includes_an_entry_point_strategy(tmp_path: Path) -> None:
    write_dist_info(tmp_path, "gearshift-fake", "1.2.3", {"fake": "fake_strategy_mod"})
    write_module(tmp_path, "fake_strategy_mod", FAKE_STRATEGY)
    result = run_gearshift(["--list-strategies"], env=clean_env(PYTHONPATH=str(tmp_path)))
    assert result.returncode == 0 and result.stderr == ""
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert sorted(rows) == ["fake", "fork", "prefork", "sync", "thread", "threadpool"]
    assert "gearshift-fake 1.2.3 (entry point 'fake' = 'fake_strategy_mod')" in rows["fake"]
    assert rows["fake"].endswith("A fake strategy that tests install through an entry point.")
    assert "built-in" in rows["fork"] and "One child process per request" in rows["fork"]


def test_example_plugin_installs_and_serves(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(EXAMPLE_PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=120, env=clean_env(),
    )
    assert pip.returncode == 0, pip.stderr
    env = clean_env(PYTHONPATH=str(target))
    listing = run_gearshift(["--list-strategies"], env=env)
    assert "gearshift-reversed 0.1.0 (entry point 'reversed' = 'gearshift_reversed')" in listing.stdout
    help_text = run_gearshift(["--help"], env=env).stdout
    assert "--log-every N" in help_text and "[GEARSHIFT_LOG_EVERY]" in help_text
    with GearshiftProcess(["-b", "127.0.0.1:0", "-s", "reversed", "--log-every", "2"], env=env) as server:
        server.wait_ready()
        assert "with strategy reversed (log_every=2)" in server.stderr
        for _ in range(4):
            status, _, body = request(server.address(), "/json")
            assert status == 200 and json.loads(body)["strategy"] == "reversed"
        server.wait_for("reversed: 4 connections served", timeout=5)
        assert server.stop() == 0
    # the plugin's option reaches only its own strategy; its env variable works like any option
    with GearshiftProcess(["-b", "127.0.0.1:0", "-s", "sync"], env={**env, "GEARSHIFT_LOG_EVERY": "1"}) as server:
        assert request(server.address(), "/json")[0] == 200
        assert server.stop() == 0
    assert "connections served" not in server.stderr
    assert_error(run_gearshift(["-s", "reversed", "--log-every", "-1"], env=env), 2, ": --log-every must be")


def test_plugin_settings_get_a_variable_help_and_validation(tmp_path: Path) -> None:
    """A plugin that returns Settings from gearshift_add_options gets what built-in options have."""
    write_dist_info(tmp_path, "gearshift-greeter", "0.1", {"greeter": "greeter_plugin_mod"})
    write_module(tmp_path, "greeter_plugin_mod", GREETER_PLUGIN)
    env = clean_env(PYTHONPATH=str(tmp_path))
    help_text = run_gearshift(["--help"], env=env).stdout
    assert "--greeting WORD" in help_text and "[GEARSHIFT_GREETING]" in help_text and "[GEARSHIFT_LOUD]" in help_text
    args = ["-b", "127.0.0.1:0", "-s", "greeter", "--loud"]
    with GearshiftProcess(args, env={**env, "GEARSHIFT_GREETING": "hello"}) as server:
        server.wait_ready()
        assert "with strategy greeter (greeting=hello, loud=True)" in server.stderr
        assert request(server.address(), "/")[0] == 200
        assert server.stop() == 0
    assert_error(run_gearshift(["-s", "greeter", "--greeting", "h1"], env=env), 2, "--greeting must be letters only")
    assert_error(run_gearshift(["-s", "greeter"], env={**env, "GEARSHIFT_GREETING": "h1"}), 2,
                  "GEARSHIFT_GREETING must be letters only")
    # a declared setting names its strategy's option: given to another strategy, it is an error
    assert_error(run_gearshift(["-s", "sync", "--greeting", "hello"], env=env), 2,
                  "--greeting (GEARSHIFT_GREETING) does not apply to strategy 'sync'")


def test_plugin_options_that_are_not_settings_are_a_plugin_error(tmp_path: Path) -> None:
    write_dist_info(tmp_path, "gearshift-odd", "0.1", {"odd": "odd_plugin_mod"})
    write_module(tmp_path, "odd_plugin_mod", textwrap.dedent("""
        import gearshift

        @gearshift.hookimpl
        def gearshift_add_options(parser):
            return ["--odd"]
    """))
    result = run_gearshift(["--help"], env=clean_env(PYTHONPATH=str(tmp_path)))
    assert_error(result, 1, "gearshift plugin gearshift-odd 0.1 (entry point 'odd' = 'odd_plugin_mod') failed in "
                             "gearshift_add_options(): TypeError: it must return None or a list of")


def test_example_strategy_serves_a_burst_newest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    import socketserver
    import threading

    import gearshift

    monkeypatch.syspath_prepend(str(EXAMPLE_PLUGIN))
    from gearshift_reversed import ReversedStrategy

    order: list[bytes] = []

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            order.append(self.request.recv(1))
            self.request.sendall(b"k")

    server = gearshift.Server(("127.0.0.1", 0), Handler, strategy=ReversedStrategy, log_every=2)
    clients = []
    try:
        for number in b"123":  # all three wait in the backlog before the loop runs
            client = socket.create_connection(server.server_address[:2], timeout=5)
            client.sendall(bytes([number]))
            clients.append(client)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        assert [client.recv(1) for client in clients] == [b"k"] * 3
        server.shutdown()
        thread.join(5)
    finally:
        server.server_close()
        for client in clients:
            client.close()
    assert order == [b"3", b"2", b"1"] and server.strategy.served == 3
    with pytest.raises(ValueError, match="log_every"):
        gearshift.Server(("127.0.0.1", 0), Handler, strategy=ReversedStrategy, log_every=-1)


def test_systemd_socket_activation(app_dir: Path) -> None:
    first, second = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
    try:
        fds = [first.fileno(), second.fileno()]
        args = [",".join(map(str, fds)), "goodapp:env_app", "-s", "thread"]
        with GearshiftProcess(args, command=socket_activation_command(2), cwd=app_dir, pass_fds=fds) as server:
            urls = server.wait_ready(2)
            ports = [first.getsockname()[1], second.getsockname()[1]]
            assert urls == [f"http://127.0.0.1:{port}" for port in ports]
            first.close()
            second.close()
            for port in ports:
                status, _, body = request(("127.0.0.1", port), "/")
                assert status == 200
                assert json.loads(body) == {"LISTEN_FDS": None, "LISTEN_PID": None, "LISTEN_FDNAMES": None}
            assert server.stop() == 0
        assert all(port_is_free("127.0.0.1", port) for port in ports)
    finally:
        first.close()
        second.close()


def test_socket_activation_for_another_process_is_ignored(app_dir: Path) -> None:
    env = clean_env(LISTEN_FDS="1", LISTEN_PID="1")
    with GearshiftProcess(["goodapp:env_app", "-b", "127.0.0.1:0", "-s", "sync"], env=env, cwd=app_dir) as server:
        (url,) = server.wait_ready()
        status, _, body = request(server.address(), "/")
        assert json.loads(body)["LISTEN_FDS"] is None  # unset all the same, as sd_listen_fds() does
        assert server.stop() == 0
