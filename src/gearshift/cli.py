"""The ``gearshift`` command: serve a WSGI application with a strategy chosen by name.

    gearshift [MODULE:APP] [options]        python -m gearshift [MODULE:APP] [options]

This module is deliberately thin: it parses the command line (and ``GEARSHIFT_*`` environment
variables), imports the application, builds a server with :func:`gearshift.make_server`, and
turns the signals an operator sends into what a server is expected to do with them (see
:class:`_Signals`). Everything that serves lives in the library.

Exit status: 0 after a requested stop (or ``--help``/``--version``/``--list-strategies``); 2 for
a command line that cannot work whatever the machine (unknown option or strategy, bad value, bad
bind address, malformed ``MODULE:APP``); 1 for everything else (the application cannot be
imported, the port is taken, a plugin is broken, ...). Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import difflib
import errno
import importlib
import importlib.util
import inspect
import logging
import os
import re
import signal
import socket
import stat
import sys
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, cast

from . import __version__
from .core.errors import PluginError, StrategyUnavailableError, UnknownStrategyError
from .core.listeners import create_listener
from .core.plugins import available_strategies, hook_implementations, resolve_strategy, strategy_origins

if TYPE_CHECKING:
    import io
    import ssl

log = logging.getLogger("gearshift")
access_log = logging.getLogger("gearshift.access")

PROG = "gearshift"
ENV_PREFIX = "GEARSHIFT_"
DEFAULT_BIND = "127.0.0.1:8000"
DEFAULT_STRATEGY = "thread"
DEFAULT_GRACEFUL_TIMEOUT = 30.0
LOG_FORMAT = "%(asctime)s [%(process)d] %(levelname)s: %(message)s"
LOG_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
#: Strategy options the command has flags for; given explicitly, they always reach the server,
#: so a flag the selected strategy does not take is an error rather than silently ignored.
BUILTIN_STRATEGY_OPTIONS = ("max_children", "daemon_threads")
#: HTTP options of make_server(), by argparse dest.
HTTP_OPTIONS = (
    "keep_alive_timeout", "head_timeout", "body_timeout", "min_body_rate", "send_timeout", "min_send_rate",
    "max_request_line", "max_header_size", "max_headers", "max_header_block", "max_body_size",
)
#: Options that are not read from the environment: they are actions, not settings.
NOT_FROM_ENV = frozenset({"help", "version", "list_strategies"})
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})
APP_SPEC = re.compile(r"^[A-Za-z_][\w.]*(:.+)?$")


class UsageError(Exception):
    """The command line cannot work on any machine: exit status 2."""


class CommandError(Exception):
    """The command line is fine but serving failed: exit status 1."""


# -- entry point ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run the command; return its exit status. ``environ`` defaults to ``os.environ``."""
    environ = os.environ if environ is None else environ
    debug = False
    try:
        _make_cwd_importable()
        parser = build_parser()
        args = parse_args(parser, argv, environ)
        debug = args.log_level == "debug"
        if args.list_strategies:
            sys.stdout.write(format_strategies())
            return 0
        return serve(args, environ)
    except UsageError as exc:
        _error(str(exc), hint=True)
        return 2
    except (CommandError, PluginError) as exc:
        _error(str(exc))
        return 1
    except KeyboardInterrupt:  # Ctrl+C before the signal handlers are in place
        _error("interrupted")
        return 130
    except _Interrupted as exc:
        _error(f"{signal.Signals(exc.signum).name} before serving began: not started")
        return 128 + exc.signum
    except _Exit as exc:
        return exc.status
    except Exception as exc:  # a bug in gearshift or in a plugin: still one line unless debugging
        if debug:
            traceback.print_exc()
        hint = "" if debug else " (run with --log-level debug for the traceback)"
        _error(f"unexpected {type(exc).__name__}: {exc}{hint}")
        return 1


class _Exit(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Interrupted(BaseException):
    """A stop signal before the server was serving (a slow import): a BaseException, like
    KeyboardInterrupt, so that the application's ``except Exception`` does not swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _error(message: str, hint: bool = False) -> None:
    suffix = f" (see '{PROG} --help')" if hint else ""
    sys.stderr.write(f"{PROG}: error: {message}{suffix}\n")
    sys.stderr.flush()


def _make_cwd_importable() -> None:
    """``python -m`` puts the current directory on sys.path; the console script does not."""
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)


# -- the parser ----------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors become :class:`UsageError` (one line, exit 2)."""

    def error(self, message: str) -> NoReturn:
        if message == "argument --access-log: expected one argument":
            message += " (a file name, or - for stderr)"
        raise UsageError(message)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise _Exit(status)


def build_parser() -> argparse.ArgumentParser:
    """The command's parser, with the options that installed plugins add."""
    parser = _Parser(
        prog=PROG,
        description="Serve a WSGI application; the concurrency model is a strategy chosen by name.",
        epilog=(
            "Every option can also be set with an environment variable GEARSHIFT_<NAME> (shown in "
            "brackets); the command line wins. Flags take 1/0, true/false, yes/no or on/off; "
            "repeatable options take several values separated by spaces or commas. "
            "MODULE:APP can be given as GEARSHIFT_APP. Signals: SIGTERM and SIGINT stop gracefully, "
            "SIGQUIT at once; SIGUSR1 reopens the access log; SIGHUP and SIGUSR2 are logged and ignored."
        ),
        allow_abbrev=False,  # plugins add options: an abbreviation must not change meaning
    )
    parser.add_argument(
        "app", nargs="?", metavar="MODULE:APP",
        help="the WSGI application: MODULE:NAME, MODULE:NAME.ATTR, MODULE:factory() or "
             "MODULE:factory('arg', key=1) (literal arguments); the current directory is "
             "importable, and MODULE may be the path of a .py file (path/to/app.py:app). "
             "Without it, a built-in demo app is served.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    where = parser.add_argument_group("where to listen")
    where.add_argument(
        "-b", "--bind", action="append", metavar="ADDRESS",
        help=f"HOST:PORT, [IPV6]:PORT or unix:/PATH; repeat to listen on several (default {DEFAULT_BIND})",
    )
    where.add_argument(
        "--fd", action="append", type=int, metavar="N",
        help="serve an inherited, already-bound listening socket on descriptor N; repeatable. "
             "systemd socket activation (LISTEN_FDS/LISTEN_PID) is detected without it",
    )
    where.add_argument(
        "--umask", type=_octal, metavar="OCTAL",
        help="Unix sockets the command creates get the mode 0777 & ~OCTAL (007: the owner and its "
             "group may connect; default: the process umask)",
    )
    where.add_argument("--certfile", metavar="PATH", help="serve HTTPS with this certificate chain (PEM)")
    where.add_argument("--keyfile", metavar="PATH", help="the private key for --certfile, if not in that file")

    how = parser.add_argument_group("strategy")
    how.add_argument(
        "-s", "--strategy", default=DEFAULT_STRATEGY, metavar="NAME",
        help=f"concurrency strategy (default {DEFAULT_STRATEGY}); see --list-strategies",
    )
    how.add_argument("--list-strategies", action="store_true", help="list available strategies and exit")
    how.add_argument("--max-children", type=int, metavar="N", help="fork: most child processes at once (default 40)")
    how.add_argument(
        "--daemon-threads", action="store_true", default=None,
        help="thread: do not wait for request threads on shutdown",
    )

    http = parser.add_argument_group("HTTP limits and timeouts")
    http.add_argument("--keep-alive-timeout", type=float, metavar="SECONDS",
                      help="close idle keep-alive connections after this long; 0 disables keep-alive (default 5)")
    http.add_argument("--head-timeout", type=float, metavar="SECONDS",
                      help="total time a client has to send a request head; 408 past it (default 10)")
    http.add_argument("--body-timeout", type=float, metavar="SECONDS",
                      help="longest wait for request-body bytes (default 10)")
    http.add_argument("--min-body-rate", type=float, metavar="BYTES_PER_S",
                      help="slowest request body, averaged over the waits for it; 0: none (default 500)")
    http.add_argument("--send-timeout", type=float, metavar="SECONDS",
                      help="longest wait for the client to take response bytes (default 10)")
    http.add_argument("--min-send-rate", type=float, metavar="BYTES_PER_S",
                      help="slowest a client may take a response, averaged over the waits; 0: none (default 500)")
    http.add_argument("--max-request-line", type=int, metavar="BYTES",
                      help="longest request line; longer gets 414 (default 8190)")
    http.add_argument("--max-header-size", type=int, metavar="BYTES", help="longest header line (default 8190)")
    http.add_argument("--max-headers", type=int, metavar="N", help="most header lines (default 100)")
    http.add_argument("--max-header-block", type=int, metavar="BYTES",
                      help="largest total of the header lines (default 65536)")
    http.add_argument("--max-body-size", type=int, metavar="BYTES", help="largest request body (default unlimited)")

    proc = parser.add_argument_group("process")
    proc.add_argument(
        "--graceful-timeout", type=float, default=DEFAULT_GRACEFUL_TIMEOUT, metavar="SECONDS",
        help="on SIGTERM/SIGINT, how long in-flight requests may take to finish (default 30); "
             "SIGQUIT stops at once",
    )
    proc.add_argument("--log-level", default="info", type=str.lower, choices=LOG_LEVELS,
                      help="level of the 'gearshift' logger (default info)")
    proc.add_argument(
        "--access-log", metavar="PATH",
        help="log one line per request in common log format to PATH (appended; SIGUSR1 reopens "
             "it), or to stderr for '-' (default off)",
    )

    _add_plugin_options(parser)
    for action in parser._actions:  # argparse keeps no public list of its actions
        if action.option_strings and action.dest not in NOT_FROM_ENV and action.help != argparse.SUPPRESS:
            action.help = f"{action.help or ''} [{env_name(action.dest)}]".lstrip()
    return parser


def _add_plugin_options(parser: argparse.ArgumentParser) -> None:
    # Through hook_implementations(): without third-party plugins, pluggy is never imported.
    before = set(map(id, parser._actions))
    for origin, add_options in hook_implementations("gearshift_add_options"):
        try:
            add_options(parser=parser)
        except Exception as exc:
            raise PluginError(
                f"gearshift plugin {origin} failed in gearshift_add_options(): {type(exc).__name__}: {exc}"
            ) from exc
    parser.set_defaults(_plugin_dests=sorted({a.dest for a in parser._actions if id(a) not in before}))


def _octal(text: str) -> int:
    """``--umask``: an octal number from 0 to 777, with or without a 0o prefix."""
    digits = text.strip().lower().removeprefix("0o")
    if not digits or any(c not in "01234567" for c in digits) or int(digits, 8) > 0o777:
        raise argparse.ArgumentTypeError(f"expected an octal number from 0 to 777, e.g. 007, not {text!r}")
    return int(digits, 8)


def env_name(dest: str) -> str:
    return ENV_PREFIX + dest.upper().replace("-", "_")


def parse_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, environ: Mapping[str, str]
) -> argparse.Namespace:
    """Parse ``argv`` over values taken from ``GEARSHIFT_*`` variables: the command line wins."""
    namespace = argparse.Namespace()
    from_env: dict[str, int] = {}  # dest of a repeatable option -> how many values the env gave
    env_values: dict[str, Any] = {}  # dest -> the value the environment gave
    for action in parser._actions:
        if not action.option_strings or action.dest in NOT_FROM_ENV:
            continue
        name = env_name(action.dest)
        raw = environ.get(name, "").strip()
        if not raw:
            continue
        if action.nargs == 0:  # a flag
            word = raw.lower()
            if word in FALSE_WORDS:
                continue
            if word not in TRUE_WORDS:
                raise UsageError(f"{name}={raw!r}: expected 1/0, true/false, yes/no or on/off")
            action(parser, namespace, [], name)
            env_values[action.dest] = getattr(namespace, action.dest)
            continue
        repeatable = isinstance(action, argparse._AppendAction) or action.nargs in ("*", "+")
        items = [item for item in re.split(r"[\s,]+", raw) if item] if repeatable else [raw]
        values = [_convert(action, name, item) for item in items]
        if isinstance(action, argparse._AppendAction):
            for value in values:
                action(parser, namespace, value, name)
            from_env[action.dest] = len(values)
        else:
            action(parser, namespace, values if action.nargs in ("*", "+") else values[0], name)
        env_values[action.dest] = getattr(namespace, action.dest)
    args, extras = parser.parse_known_args(argv, namespace)
    if extras:
        raise UsageError(_unrecognized(parser, extras))
    for dest, count in from_env.items():
        values = getattr(args, dest)
        if len(values) > count:  # given on the command line too: those replace the env's
            setattr(args, dest, values[count:])
    # Options whose value is still the environment's (the same object): errors name the variable.
    args._env_dests = {dest for dest, value in env_values.items() if getattr(args, dest) is value}
    args._flags = {a.dest: max(a.option_strings, key=len) for a in parser._actions if a.option_strings}
    if args.app is None:
        args.app = environ.get(env_name("app"), "").strip() or None
    if args.app is None and args.access_log not in (None, "-") and _looks_like_app(args.access_log):
        # "gearshift --access-log hello": a log file named hello, or the app hello with the
        # access log on stderr? Neither guess is safe, and serving the demo would hide it.
        name = _source_name(args, "access_log")
        value = args.access_log
        raise UsageError(
            f"{name} takes a file name (or - for stderr) and no MODULE:APP was given: is {value!r} "
            f"the application? Write '--access-log - {value}' to log to stderr, or "
            f"'--access-log ./{value}' for a file of that name"
        )
    if not hasattr(args, "_plugin_dests"):
        args._plugin_dests = []
    args._warnings = _unknown_variables(parser, environ)
    return args


def _option_strings(parser: argparse.ArgumentParser) -> list[str]:
    return [s for a in parser._actions for s in a.option_strings if a.help != argparse.SUPPRESS]


def _unrecognized(parser: argparse.ArgumentParser, extras: list[str]) -> str:
    message = f"unrecognized arguments: {' '.join(extras)}"
    for extra in extras:
        if extra.startswith("-") and extra != "-":
            given = extra.partition("=")[0]
            close = difflib.get_close_matches(given, _option_strings(parser), n=1, cutoff=0.6)
            if close:
                return f"{message}; did you mean {close[0]}?"
            break
    return message


def _unknown_variables(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> list[str]:
    """One warning per ``GEARSHIFT_*`` variable that no option reads (a misspelling, usually)."""
    known = {env_name("app")} | {
        env_name(a.dest) for a in parser._actions if a.option_strings and a.dest not in NOT_FROM_ENV
    }
    # Compared without the prefix, which every name shares and would make any two look alike.
    suffixes = sorted(k.removeprefix(ENV_PREFIX) for k in known)
    warnings = []
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in known:
            close = difflib.get_close_matches(name.removeprefix(ENV_PREFIX), suffixes, n=1, cutoff=0.6)
            hint = f"; did you mean {ENV_PREFIX}{close[0]}?" if close else f" (see '{PROG} --help' for the variables)"
            warnings.append(f"{name} is not a gearshift setting and is ignored{hint}")
    return warnings


def _source_name(args: argparse.Namespace, dest: str) -> str:
    """How the user gave option ``dest``: its environment variable or its flag."""
    if dest in getattr(args, "_env_dests", ()):
        return env_name(dest)
    flags: dict[str, str] = getattr(args, "_flags", {})
    return flags.get(dest) or "--" + dest.replace("_", "-")


def _looks_like_app(text: str) -> bool:
    """Could ``text`` be meant as MODULE:APP? Yes for MODULE:EXPR; for a bare (dotted) name,
    only if its top-level module is importable, since ``access.log`` is a fine file name."""
    if "/" in text or not APP_SPEC.match(text):
        return False
    if ":" in text:
        return True
    try:
        return importlib.util.find_spec(text.split(".")[0]) is not None
    except (ImportError, ValueError):
        return False


def _convert(action: argparse.Action, name: str, raw: str) -> Any:
    value: Any = raw
    if callable(action.type):
        try:
            value = action.type(raw)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
            detail = f": {exc}" if isinstance(exc, argparse.ArgumentTypeError) else ""
            raise UsageError(f"{name}: invalid value {raw!r}{detail}") from None
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise UsageError(f"{name}: invalid choice {raw!r} (choose from {choices})")
    return value


# -- --list-strategies ---------------------------------------------------------------------------


def format_strategies() -> str:
    """The ``--list-strategies`` table: name, origin, one-line description."""
    strategies = available_strategies()
    origins = strategy_origins()
    rows = [("NAME", "ORIGIN", "DESCRIPTION")]
    rows += [(name, origins.get(name, "?"), cls.description()) for name, cls in strategies.items()]
    name_width = max(len(row[0]) for row in rows)
    origin_width = max(len(row[1]) for row in rows)
    lines = [f"{n:<{name_width}}  {o:<{origin_width}}  {d}".rstrip() for n, o, d in rows]
    return "\n".join(lines) + "\n"


# -- loading the application ---------------------------------------------------------------------


@dataclass(frozen=True)
class AppSpec:
    """``MODULE:EXPR`` taken apart: the module, the attribute path, and a factory call's arguments."""

    text: str
    module: str  # for a file: its file name without .py, until load_app() finds its package
    path: tuple[str, ...] | None  # None: look for "app" or "application"
    call: tuple[tuple[Any, ...], dict[str, Any]] | None = None
    file: str | None = None  # MODULE given as a path to a .py file


def parse_app_spec(text: str) -> AppSpec:
    module, sep, expr = text.partition(":")
    module = module.strip()
    file = None
    if module.endswith(".py") or "/" in module or os.sep in module:
        file = module
        module = os.path.basename(module).removesuffix(".py")
    elif not module or not all(part.isidentifier() for part in module.split(".")):
        raise UsageError(f"invalid application {text!r}: expected MODULE:APP, e.g. myapp:app or myapp.py:app")
    if not sep:
        return AppSpec(text, module, None, file=file)
    try:
        node = ast.parse(expr.strip(), mode="eval").body
    except SyntaxError:
        raise UsageError(f"invalid application {text!r}: {expr!r} is not a name or a call") from None
    call = None
    if isinstance(node, ast.Call):
        if any(kw.arg is None for kw in node.keywords) or any(isinstance(a, ast.Starred) for a in node.args):
            raise UsageError(f"invalid application {text!r}: */** arguments are not supported")
        try:
            args = tuple(ast.literal_eval(arg) for arg in node.args)
            kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg is not None}
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise UsageError(
                f"invalid application {text!r}: factory arguments must be literals (strings, numbers, ...)"
            ) from None
        call = (args, kwargs)
        node = node.func
    path: list[str] = []
    while isinstance(node, ast.Attribute):
        path.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        raise UsageError(f"invalid application {text!r}: {expr!r} is not a name or a call")
    path.append(node.id)
    return AppSpec(text, module, tuple(reversed(path)), call, file)


def load_app(text: str) -> Callable[..., Any]:
    """Import the WSGI application named by ``MODULE:APP``; CommandError says what went wrong."""
    spec = parse_app_spec(text)
    if spec.file is not None:
        name, filename = _importable_name(spec.file)
        spec = dataclasses.replace(spec, module=name)
        module = _import(name)
        loaded = getattr(module, "__file__", None)
        if loaded is None or os.path.realpath(loaded) != filename:
            raise CommandError(
                f"cannot import {spec.file!r} as module {name!r}: that name is already another module "
                f"({loaded or 'built in'}); rename the file"
            )
    else:
        module = _import(spec.module)
    if spec.path is None:
        for candidate in ("app", "application"):
            if hasattr(module, candidate):
                path: tuple[str, ...] = (candidate,)
                break
        else:
            raise CommandError(
                f"module {spec.module!r} has no 'app' or 'application'; name the object to serve: "
                f"{spec.module}:NAME"
            )
    else:
        path = spec.path
    obj: Any = module
    for depth, attr in enumerate(path, 1):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            owner = ".".join((spec.module, *path[: depth - 1]))
            raise CommandError(f"{owner!r} has no attribute {attr!r} (from {text!r})") from None
        except Exception as exc:
            dotted = ".".join(path[:depth])
            raise CommandError(f"getting {dotted!r} from {spec.module!r} failed: {_one_line(exc)}") from None
    dotted = ".".join(path)
    if spec.call is not None:
        if not callable(obj):
            raise CommandError(f"{spec.module}:{dotted} is {_a(type(obj).__name__)}, not a factory to call")
        args, kwargs = spec.call
        try:
            obj = obj(*args, **kwargs)
        except Exception as exc:
            raise CommandError(f"calling the factory {text!r} failed: {_one_line(exc)}") from None
        dotted += "(...)"
    if obj is None:
        raise CommandError(f"{spec.module}:{dotted} is None, not a WSGI application")
    if not callable(obj):
        raise CommandError(
            f"{spec.module}:{dotted} is {_a(type(obj).__name__)}, not callable: MODULE:APP must name a WSGI application"
        )
    if spec.call is None and _takes_no_arguments(obj):
        raise CommandError(
            f"{spec.module}:{dotted} takes no arguments, so it is not a WSGI application; "
            f"if it is a factory, call it: '{spec.module}:{dotted}()'"
        )
    return cast("Callable[..., Any]", obj)


def _importable_name(file: str) -> tuple[str, str]:
    """The module name under which ``file`` (a .py path) imports, and its real path; puts the
    directory it imports from first on sys.path. A file inside a package (directories with
    ``__init__.py``) imports as part of it, so that its relative imports work."""
    filename = os.path.realpath(file)
    if not os.path.isfile(filename):
        reason = "is a directory" if os.path.isdir(filename) else "no such file"
        raise CommandError(f"cannot import {file!r}: {reason}")
    if not filename.endswith(".py"):
        raise CommandError(f"cannot import {file!r}: MODULE is a module name or the path of a .py file")
    directory, name = os.path.split(filename.removesuffix(".py"))
    if name == "__init__":  # a package's own file: import the package
        directory, name = os.path.split(directory)
    parts = [name]
    while os.path.isfile(os.path.join(directory, "__init__.py")):
        directory, package = os.path.split(directory)
        parts.append(package)
    dotted = ".".join(reversed(parts))
    if not all(part.isidentifier() for part in parts):
        raise CommandError(f"cannot import {file!r}: {dotted!r} is not a valid module name; rename the file")
    if directory not in (os.path.realpath(entry or os.curdir) for entry in sys.path):
        sys.path.insert(0, directory)
    return dotted, filename


def _import(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise CommandError(
                f"cannot import {module_name!r}: no module named {missing!r} "
                f"(looked in the current directory, {os.getcwd()}, and sys.path)"
            ) from None
        raise CommandError(f"error while importing {module_name!r}: {_one_line(exc)}") from None
    except SystemExit as exc:
        raise CommandError(f"importing {module_name!r} called sys.exit({exc.code!r})") from None
    except Exception as exc:
        raise CommandError(f"error while importing {module_name!r}: {_one_line(exc)}") from None


def _a(noun: str) -> str:
    """``noun`` with its indefinite article: "an int", "a str"."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _takes_no_arguments(obj: Any) -> bool:
    try:
        return not inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return False


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        where = f" ({exc.filename}, line {exc.lineno})" if exc.filename else ""
        return f"SyntaxError: {exc.msg}{where}"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- listeners -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bind:
    """One place to listen: a TCP (host, port), a Unix socket path, or an inherited descriptor."""

    text: str
    host: str | None = None
    port: int | None = None
    path: str | None = None
    fd: int | None = None


def parse_bind(text: str) -> Bind:
    """``HOST:PORT``, ``[IPV6]:PORT``, ``:PORT`` (every IPv4 interface) or ``unix:/PATH``."""
    usage = f"bad bind address {text!r}: expected HOST:PORT, [IPV6]:PORT or unix:/PATH"
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        if not path:
            raise UsageError(usage)
        return Bind(text, path=path)
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep or not host:
            raise UsageError(usage)
        try:
            socket.inet_pton(socket.AF_INET6, host.split("%")[0])
        except OSError:
            raise UsageError(f"bad bind address {text!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise UsageError(usage)
        if ":" in host:
            raise UsageError(f"bad bind address {text!r}: put an IPv6 address in brackets, e.g. [::1]:8000")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UsageError(f"bad bind address {text!r}: the port must be a number from 0 to 65535")
    return Bind(text, host=host or "0.0.0.0", port=int(port_text))


def listen_fds(environ: Any) -> list[int]:
    """Descriptors passed by systemd socket activation, if they are meant for this process.

    Reads LISTEN_FDS/LISTEN_PID (as sd_listen_fds(3) does) and removes them, with LISTEN_FDNAMES,
    from ``environ`` so that the application's own child processes do not think they are meant
    for them.
    """
    count, pid = environ.get("LISTEN_FDS"), environ.get("LISTEN_PID")
    if count is None:
        return []
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        with contextlib.suppress(KeyError, TypeError):
            del environ[name]
    if pid is None or not pid.strip().isdigit() or int(pid) != os.getpid():
        log.debug("ignoring LISTEN_FDS=%s: LISTEN_PID=%s is not this process (%d)", count, pid, os.getpid())
        return []
    if not count.strip().isdigit():
        raise CommandError(f"socket activation: LISTEN_FDS={count!r} is not a number")
    return list(range(3, 3 + int(count)))


def check_fd(fd: int, origin: str) -> None:
    """Fail with a clear message unless ``fd`` is a listening stream socket; make it close-on-exec."""
    if fd < 0:
        raise UsageError(f"{origin}: descriptor {fd} is negative")
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise CommandError(f"{origin}: descriptor {fd}: {exc.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise CommandError(f"{origin}: descriptor {fd} is not a socket")
    probe = socket.socket(fileno=os.dup(fd))
    try:
        if probe.type != socket.SOCK_STREAM:
            raise CommandError(f"{origin}: descriptor {fd} is not a stream socket")
        if not probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            probe.listen(1024)  # bound but not listening: listen() on the dup listens on the socket
    except OSError as exc:
        raise CommandError(f"{origin}: descriptor {fd}: {exc.strerror}") from None
    finally:
        probe.close()
    os.set_inheritable(fd, False)


def describe_listener(sock: socket.socket, scheme: str) -> str:
    """The URL a listening socket serves, for the banner."""
    address = sock.getsockname()
    if sock.family == getattr(socket, "AF_UNIX", None):
        name = os.fsdecode(address) if address else "(unnamed)"
        return f"{scheme}+unix:{name}"
    host, port = address[0], address[1]
    if sock.family == socket.AF_INET6:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


# -- serving -------------------------------------------------------------------------------------


def setup_logging(level: str, access_log_target: str | None) -> None:
    """A readable handler on the ``gearshift`` logger; the access log only when asked for."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATE_FORMAT))
    log.handlers[:] = [handler]
    log.setLevel(level.upper())
    log.propagate = False
    for old in access_log.handlers[:]:
        access_log.removeHandler(old)
        old.close()
    access_log.propagate = False
    if access_log_target is None:
        access_log.setLevel(logging.WARNING)
        access_log.addHandler(logging.NullHandler())
        return
    if access_log_target == "-":
        target: logging.Handler = logging.StreamHandler(sys.stderr)
    else:
        try:
            target = logging.FileHandler(access_log_target, mode="a", encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot open access log {access_log_target}: {exc.strerror}") from None
    target.setFormatter(logging.Formatter("%(message)s"))
    access_log.addHandler(target)
    access_log.setLevel(logging.INFO)


def strategy_options(args: argparse.Namespace, strategy: type[Any]) -> dict[str, Any]:
    """The options for the strategy's ``__init__``: built-in flags that were given (an error if
    the strategy does not take them), and plugin options whose dest the selected strategy
    accepts. Options left at None are not passed."""
    accepted = strategy.option_defaults()
    takes_any = strategy.accepts_any_option()
    options = {}
    for dest in BUILTIN_STRATEGY_OPTIONS:
        value = getattr(args, dest, None)
        if value is None:
            continue
        if dest not in accepted and not takes_any:
            flag = "--" + dest.replace("_", "-")
            raise UsageError(
                f"{flag} ({env_name(dest)}) does not apply to strategy {strategy.name!r}, "
                f"whose options are: {', '.join(sorted(accepted)) or 'none'}"
            )
        options[dest] = value
    for dest in args._plugin_dests:
        value = getattr(args, dest, None)
        if value is not None and dest in accepted and dest not in options:
            options[dest] = value
    return options


def ssl_context_from(args: argparse.Namespace) -> ssl.SSLContext | None:
    if args.certfile is None:
        if args.keyfile is not None:
            raise UsageError("--keyfile needs --certfile")
        return None
    import ssl  # only for HTTPS: ssl adds megabytes that a fork()ing server copies per request

    certfile, keyfile = args.certfile, args.keyfile
    cert_flag, key_flag = _source_name(args, "certfile"), _source_name(args, "keyfile")
    # OpenSSL's own errors name neither the file nor the problem ("[SSL] PEM lib"): look first.
    cert_text = _read_pem(cert_flag, certfile)
    if "-----BEGIN CERTIFICATE-----" not in cert_text:
        raise CommandError(f"{cert_flag} {certfile}: not a PEM certificate (no '-----BEGIN CERTIFICATE-----' line)")
    key_text = cert_text if keyfile is None else _read_pem(key_flag, keyfile)
    key_source = f"{cert_flag} {certfile}" if keyfile is None else f"{key_flag} {keyfile}"
    key_head = re.search(r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----(\s*Proc-Type: 4,ENCRYPTED)?", key_text)
    if key_head is None:
        if keyfile is None:
            raise CommandError(f"{cert_flag} {certfile} holds no private key: give the key's file with --keyfile")
        raise CommandError(f"{key_source}: not a PEM private key (no '-----BEGIN ... PRIVATE KEY-----' line)")
    if "ENCRYPTED" in key_head.group(1) or key_head.group(2):
        raise CommandError(
            f"{key_source}: the private key is encrypted, and gearshift does not ask for passphrases; "
            f"decrypt it (openssl pkey -in KEY -out DECRYPTED) and keep that file readable only by the server"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # A password callback that refuses: OpenSSL would otherwise prompt on the terminal.
        context.load_cert_chain(certfile, keyfile, password=_no_passphrase)
    except _PassphraseNeeded:
        raise CommandError(f"{key_source}: the private key is encrypted, and gearshift does not ask for passphrases") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise CommandError(f"the private key in {key_source} does not match the certificate in {certfile}") from None
        detail = exc.reason or exc.strerror or str(exc)
        names = " and ".join(filter(None, (certfile, keyfile)))
        raise CommandError(f"cannot load the TLS certificate {names}: {detail}") from None
    except OSError as exc:
        names = " and ".join(filter(None, (certfile, keyfile)))
        raise CommandError(f"cannot load the TLS certificate {names}: {exc.strerror or exc}") from None
    return context


class _PassphraseNeeded(Exception):
    pass


def _no_passphrase() -> bytes:
    raise _PassphraseNeeded


def _read_pem(flag: str, path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise CommandError(f"{flag} {path}: {reason[:1].lower()}{reason[1:]}") from None


def serve(args: argparse.Namespace, environ: Any) -> int:
    if not args.graceful_timeout >= 0:  # NaN too
        raise UsageError(f"{_source_name(args, 'graceful_timeout')} must be >= 0, not {args.graceful_timeout:g}")
    try:
        strategy = resolve_strategy(args.strategy)
    except UnknownStrategyError as exc:
        raise UsageError(str(exc)) from None
    setup_logging(args.log_level, args.access_log)
    for warning in args._warnings:
        log.warning("%s", warning)
    signals = _Signals()
    signals.install()
    try:
        return _serve(args, environ, strategy, signals)
    finally:
        signals.uninstall()


def _serve(args: argparse.Namespace, environ: Any, strategy: type[Any], signals: _Signals) -> int:
    ssl_context = ssl_context_from(args)
    binds = []
    for fd in listen_fds(environ):
        check_fd(fd, "socket activation (LISTEN_FDS)")
        binds.append(Bind(f"socket activation fd {fd}", fd=fd))
    for fd in args.fd or []:
        check_fd(fd, f"--fd {fd}")
        binds.append(Bind(f"--fd {fd}", fd=fd))
    binds += [parse_bind(text) for text in args.bind or ([] if binds else [DEFAULT_BIND])]

    if args.app is None:
        from .demo import app

        app_note = "no MODULE:APP given: serving the built-in demo app"
    else:
        app = load_app(args.app)
        app_note = f"loaded {args.app}"
    options = strategy_options(args, strategy)
    options.update({dest: getattr(args, dest) for dest in HTTP_OPTIONS if getattr(args, dest) is not None})

    try:
        server = build_server(app, strategy, binds, options, ssl_context, umask=args.umask)
    except UsageError as exc:
        raise UsageError(_name_options(str(exc), args, options)) from None
    try:
        return run(server, args, app_note, signals)
    finally:
        server.graceful_timeout = args.graceful_timeout
        server.server_close()  # already done after a graceful stop; this is for errors


def _name_options(message: str, args: argparse.Namespace, options: Mapping[str, Any]) -> str:
    """The library names options by their Python names (``max_children must be ...``); say
    what the user typed instead: the flag, or the environment variable."""
    for dest in options:
        message = re.sub(rf"(?<![\w-]){re.escape(dest)}(?![\w-])", _source_name(args, dest), message)
    return message


def build_server(app: Any, strategy: type[Any], binds: list[Bind], options: dict[str, Any],
                 ssl_context: ssl.SSLContext | None, umask: int | None = None) -> Any:
    """make_server() on the first address, add_listener() for the others: the ones the command
    creates are handed over (``own=True``), so the server removes their Unix socket files and
    stops listening on them when it closes; inherited descriptors (``fd://``) are only borrowed."""
    from .http import make_server

    first, rest = binds[0], binds[1:]
    try:
        if first.fd is not None:
            server = make_server("", 0, app, strategy, ssl_context=ssl_context, fd=first.fd, **options)
        elif first.path is not None:
            server = make_server(f"unix:{first.path}", 0, app, strategy, ssl_context=ssl_context, umask=umask,
                                 **options)
        else:
            assert first.host is not None and first.port is not None  # a TCP Bind has both
            server = make_server(first.host, first.port, app, strategy, ssl_context=ssl_context, **options)
    except (TypeError, ValueError) as exc:  # UnknownStrategyError too: a bad option or name
        raise UsageError(str(exc)) from None
    except StrategyUnavailableError as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        raise CommandError(_listen_error(first, exc)) from None
    try:
        for bind in rest:
            try:
                if bind.fd is not None:
                    server.add_listener(socket.socket(fileno=bind.fd))
                else:
                    sock = create_listener(bind.path if bind.path is not None else (bind.host, bind.port),
                                           umask=umask)
                    server.add_listener(sock, own=True)
            except OSError as exc:
                raise CommandError(_listen_error(bind, exc)) from None
    except BaseException:
        server.server_close()
        raise
    return server


def _listen_error(bind: Bind, exc: OSError) -> str:
    where = bind.text if bind.fd is not None else f"cannot listen on {bind.text}"
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EADDRINUSE:
        reason = "address already in use (is another server running?)" if bind.path is None else reason
    elif exc.errno in (errno.EACCES, errno.EPERM):
        reason = "permission denied"
        if bind.port is not None and bind.port < 1024:
            reason += " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    elif exc.errno == errno.EADDRNOTAVAIL and exc.strerror:
        reason = exc.strerror
    return f"{where}: {reason[:1].lower()}{reason[1:]}"


def banner_options(server: Any) -> str:
    strategy = server.strategy
    values = {
        name: getattr(strategy, name, default)
        for name, default in type(strategy).option_defaults().items()
        if name not in ("block_on_close", "freeze_gc")  # defaults nobody needs to see at start
    }
    return f" ({', '.join(f'{k}={v}' for k, v in values.items())})" if values else ""


def run(server: Any, args: argparse.Namespace, app_note: str, signals: _Signals | None = None) -> int:
    """Serve until a stop signal; then drain in-flight requests within --graceful-timeout
    (SIGTERM, SIGINT) or cut them off (SIGQUIT)."""
    own_signals = signals is None
    if signals is None:
        signals = _Signals()
        signals.install()
    signals.attach(server)
    scheme = "https" if getattr(server, "ssl_context", None) is not None else "http"
    log.info("gearshift %s: %s", __version__, app_note)
    for sock in server.listeners:
        log.info(
            "gearshift %s: serving %s with strategy %s%s \u2014 Ctrl+C to quit",
            __version__, describe_listener(sock, scheme), server.strategy.name, banner_options(server),
        )
    try:
        server.serve_forever()
        server.graceful_timeout = args.graceful_timeout
        if signals.fast:
            killed = server.strategy.terminate()
            note = f", killed {killed} worker{'s' if killed != 1 else ''}" if killed else ""
            log.warning("SIGQUIT: fast stop: stopped accepting%s; in-flight requests are cut off", note)
            server.graceful_timeout = 0
        elif signals.signum is not None:
            log.info(
                "%s: stopped accepting; waiting up to %g s for in-flight requests (send it again to quit at once)",
                signal.Signals(signals.signum).name, args.graceful_timeout,
            )
        server.server_close()
        signals.run_pending()
        log.info("gearshift %s: stopped", __version__)
        if signals.fast:
            _exit_if_threads_remain(0)
        return 0
    finally:
        signals.detach()
        if own_signals:
            signals.uninstall()


def _exit_if_threads_remain(status: int) -> None:
    """After a fast stop, do not let the interpreter wait for abandoned request threads."""
    main = threading.main_thread()
    if any(t is not main and not t.daemon and t.is_alive() for t in threading.enumerate()):
        for handler in (*log.handlers, *access_log.handlers):
            with contextlib.suppress(Exception):
                handler.flush()
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(status)


def _signal_numbers(*names: str) -> tuple[int, ...]:
    return tuple(getattr(signal, name) for name in names if hasattr(signal, name))


class _Signals:
    """What the command does with the signals an operator sends (see README, "Signals"):

    - TERM, INT: graceful stop: stop accepting, let in-flight requests finish within
      ``--graceful-timeout``, exit 0;
    - QUIT: fast stop: stop accepting, stop the workers at once (gunicorn's meaning), exit 0;
    - a second TERM/INT/QUIT while stopping: exit at once, killing the workers;
    - USR1: reopen the access-log file (logrotate moved it);
    - HUP, USR2: reload and binary upgrade in other servers; no strategy can reload, so they are
      logged and ignored rather than killing the server (their default action).

    Installed before the application is imported: a stop signal during a slow start ends it
    with an error line. The handlers do as little as possible: a stop asks the loop to stop
    (``server.shutdown()`` from the loop's thread only sets a flag), and USR1/HUP/USR2 are queued
    for the loop's next turn (``service_actions``), where logging and reopening files are safe;
    in the handler the interrupted frame may hold the lock of a logging handler or a file.

    Only the process that installed them acts on them. A forked child that kept them (the
    ``fork`` strategy replaces SIGINT and SIGTERM in its children, not these) ignores
    HUP/USR1/USR2/QUIT, since ``killall -HUP gearshift`` reaches the children too and the parent
    is the one that acts, and takes SIGTERM/SIGINT the way it would have without them.
    """

    STOP = _signal_numbers("SIGTERM", "SIGINT", "SIGQUIT")
    QUEUED = _signal_numbers("SIGHUP", "SIGUSR1", "SIGUSR2")

    def __init__(self) -> None:
        self.server: Any = None
        self.signum: int | None = None  # the stop signal received, if any
        self.fast = False
        self._pending: list[int] = []
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()
        self._service_actions: Callable[[], None] | None = None

    def install(self) -> None:
        self._pid = os.getpid()
        for signum in (*self.STOP, *self.QUEUED):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (main() called from a test's thread)
                break

    def uninstall(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def attach(self, server: Any) -> None:
        """Act on stop signals through ``server``, and on queued ones in its loop's turns."""
        self.server = server
        service_actions = server.service_actions
        self._service_actions = service_actions

        # An instance attribute over the method: the loop calls self.service_actions() every
        # turn (at least every poll_interval), and make_server() takes no server class.
        def run_pending_then_service_actions() -> None:
            if self._pending:
                self.run_pending()
            service_actions()

        server.service_actions = run_pending_then_service_actions

    def detach(self) -> None:
        if self._service_actions is not None:
            with contextlib.suppress(AttributeError):
                del self.server.service_actions
            self._service_actions = None

    def run_pending(self) -> None:
        while self._pending:
            signum = self._pending.pop(0)
            name = signal.Signals(signum).name
            if signum == getattr(signal, "SIGUSR1", None):
                self._reopen_access_log(name)
            else:
                self._reload(name)

    def _reload(self, name: str) -> None:
        # Where a strategy that can reload (a pre-forking one) would be asked to; none can yet.
        strategy = getattr(getattr(self.server, "strategy", None), "name", "?")
        log.warning(
            "%s: strategy %r does not support reload; ignored (restart gearshift to load new code)", name, strategy
        )

    def _reopen_access_log(self, name: str) -> None:
        files = [h for h in access_log.handlers if isinstance(h, logging.FileHandler)]
        if not files:
            log.info("%s: no access-log file to reopen", name)
        for handler in files:
            try:
                # Not a with block: the handler keeps the stream open.
                stream = open(  # noqa: SIM115
                    handler.baseFilename, handler.mode, encoding=handler.encoding, errors=handler.errors
                )
            except OSError as exc:
                log.error(
                    "%s: cannot reopen the access log %s: %s; still writing to the old file",
                    name, handler.baseFilename, exc.strerror or exc,
                )
                continue
            # setStream() swaps under the handler's lock, which request threads hold while writing.
            old = handler.setStream(cast("io.TextIOWrapper", stream))
            if old is not None:
                old.close()
            log.info("%s: reopened the access log %s", name, handler.baseFilename)

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:
            self._in_another_process(signum, frame)
            return
        if signum in self.QUEUED:
            self._pending.append(signum)
            return
        if self.server is None:
            raise _Interrupted(signum)
        if self.signum is None:
            self.signum = signum
            self.fast = signum == getattr(signal, "SIGQUIT", None)
            self.server.shutdown()  # on the loop's own thread: only sets a flag and wakes the loop
            return
        self._force_exit(signum)

    def _in_another_process(self, signum: int, frame: Any) -> None:
        if signum not in (signal.SIGTERM, signal.SIGINT):
            return
        previous = self._previous.get(signum)
        if callable(previous):
            previous(signum, frame)
        elif previous in (None, signal.SIG_DFL):
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def _force_exit(self, signum: int) -> NoReturn:
        killed = 0
        with contextlib.suppress(Exception):
            killed = self.server.strategy.terminate()
        with contextlib.suppress(OSError):
            # os.write, not logging: the interrupted frame may hold the logging lock
            name = signal.Signals(signum).name
            what = f"second {name}" if signum == self.signum else f"{name} while stopping"
            note = f", killed {killed} worker{'s' if killed != 1 else ''}" if killed else ""
            os.write(2, f"{PROG}: {what}: exiting at once{note}\n".encode())
        os._exit(128 + signum)
