"""The ``gearshift`` command: serve a WSGI application with a strategy chosen by name.

    gearshift [MODULE:APP] [options]        python -m gearshift [MODULE:APP] [options]

A thin layer over a table of settings (:class:`~gearshift.settings.Setting`): :data:`SETTINGS`
plus the settings strategy plugins declare through ``gearshift_add_options`` (the built-in
strategies included). The parser, the ``GEARSHIFT_*`` variables, ``--help`` and the
``make_server()`` call are derived from it. Then the command imports the application
(:mod:`gearshift.loader`), builds the server, and serves until a signal (:mod:`gearshift.signals`).

Exit status: 0 after a requested stop (or ``--help``/``--version``/``--list-strategies``); 2 for
a command line that cannot work whatever the machine (unknown option or strategy, bad value, bad
bind address, malformed ``MODULE:APP``); 1 for everything else (the application cannot be
imported, the port is taken, a plugin is broken, ...). Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import errno
import importlib.util
import json
import logging
import os
import re
import signal
import socket
import stat
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__, demo, process
from .config import find_config
from .core.errors import PluginError, StrategyUnavailableError, UnknownStrategyError, WorkerBootError
from .core.listeners import create_listener
from .core.plugins import available_strategies, hook_implementations, resolve_strategy, strategy_origins
from .core.strategy import CAPABILITIES, Strategy
from .http import make_server
from .http.server import HTTPConfig, WSGIApp, WSGIServer
from .loader import AppLoadError, AppSpecError, load_app, parse_app_spec
from .settings import ENV_PREFIX, FALSE_WORDS, TRUE_WORDS, Setting, SettingError
from .signals import Interrupted, Signals, exit_if_threads_remain

if TYPE_CHECKING:
    import ssl

    from . import metrics as gearshift_metrics

log = logging.getLogger("gearshift")
access_log = logging.getLogger("gearshift.access")

PROG = "gearshift"
DEFAULT_BIND = "127.0.0.1:8000"
DEFAULT_GRACEFUL_TIMEOUT = 30.0
LOG_FORMAT = "%(asctime)s [%(process)d] %(levelname)s: %(message)s"
LOG_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
APP_SPEC = re.compile(r"^[A-Za-z_][\w.]*(:.+)?$")


class UsageError(Exception):
    """The command line cannot work on any machine: exit status 2."""


class CommandError(Exception):
    """The command line is fine but serving failed: exit status 1."""


# -- the settings --------------------------------------------------------------------------------


def _octal(text: str) -> int:
    """``--umask``: an octal number from 0 to 777, with or without a 0o prefix."""
    digits = text.strip().lower().removeprefix("0o")
    if not digits or any(c not in "01234567" for c in digits) or int(digits, 8) > 0o777:
        raise argparse.ArgumentTypeError(f"expected an octal number from 0 to 777, e.g. 007, not {text!r}")
    return int(digits, 8)


def _not_negative(value: float) -> str | None:
    return None if value >= 0 else f"must be >= 0, not {value:g}"  # NaN fails too


WHERE, STRATEGY, HTTP, PROCESS = "where to listen", "strategy", "HTTP limits and timeouts", "process"
PROXY = "behind a proxy"
DEVELOPMENT = "development"


def _yes_no(text: str) -> bool:
    word = text.strip().lower()
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    raise argparse.ArgumentTypeError("expected yes or no (also 1/0, true/false, on/off)")


def _http(name: str, type: Callable[[str], Any], metavar: str, help: str) -> Setting:
    return Setting(name, ("--" + name.replace("_", "-"),), help, type=type, metavar=metavar, group=HTTP,
                   target="server")


#: The command's own settings and the server's; strategies add theirs (gearshift_add_options).
SETTINGS: tuple[Setting, ...] = (
    Setting(
        "app", (), metavar="MODULE:APP", target="command",
        help="the WSGI application: MODULE:NAME, MODULE:NAME.ATTR, MODULE:factory() or "
             "MODULE:factory('arg', key=1) (literal arguments); the current directory is "
             "importable, and MODULE may be the path of a .py file (path/to/app.py:app). "
             "Without it, a built-in demo app is served.",
    ),
    Setting(
        "bind", ("-b", "--bind"), kind="list", metavar="ADDRESS", group=WHERE, target="command",
        help=f"HOST:PORT, [IPV6]:PORT or unix:/PATH; repeat to listen on several (default {DEFAULT_BIND})",
    ),
    Setting(
        "fd", ("--fd",), kind="list", type=int, metavar="N", group=WHERE, target="command",
        help="serve an inherited, already-bound listening socket on descriptor N; repeatable. "
             "systemd socket activation (LISTEN_FDS/LISTEN_PID) is detected without it",
    ),
    Setting(
        "umask", ("--umask",), type=_octal, octal=True, metavar="OCTAL", group=WHERE, target="command",
        help="Unix sockets the command creates get the mode 0777 & ~OCTAL (007: the owner and its "
             "group may connect; default: the process umask)",
    ),
    Setting("certfile", ("--certfile",), "serve HTTPS with this certificate chain (PEM)", metavar="PATH",
            group=WHERE, target="command"),
    Setting("keyfile", ("--keyfile",), "the private key for --certfile, if not in that file", metavar="PATH",
            group=WHERE, target="command"),
    # Behind a proxy; the access log's format and its off switch (shown in the "process" group).
    Setting(
        "forwarded_allow_ips", ("--forwarded-allow-ips",), metavar="LIST", group=PROXY, target="server",
        help="peers whose X-Forwarded-*/Forwarded headers are believed: addresses and CIDR ranges "
             "separated by commas, * for any, unix for Unix-socket peers; '' for none "
             "(default 127.0.0.1,::1,unix)",
    ),
    Setting("root_path", ("--root-path",), metavar="PATH", group=PROXY, target="server",
            help="mount the application under this path: SCRIPT_NAME, removed from the start of PATH_INFO "
                 "(default: none)"),
    Setting("no_access_log", ("--no-access-log",), "do not log requests", kind="flag", group=PROCESS,
            target="command"),
    Setting(
        "access_log_format", ("--access-log-format",), metavar="FORMAT", group=PROCESS, target="server",
        help="the access line: gunicorn's atoms (%%(h)s %%(r)s %%(s)s %%(a)s %%(L)s ...) or json "
             "(default: combined log format and the duration in seconds)",
    ),
    Setting("strategy", ("-s", "--strategy"), "concurrency strategy (default threadpool); see --list-strategies",
            default="threadpool", metavar="NAME", group=STRATEGY, target="command"),
    Setting(
        "preload", ("--preload",), kind="flag", group=STRATEGY, target="command",
        help="import the application once, before the worker processes start (they share its memory "
             "copy-on-write), instead of in each worker; SIGHUP then restarts workers on the same code. "
             "For strategies with worker processes (prefork)",
    ),
    _http("keep_alive_timeout", float, "SECONDS",
          "close idle keep-alive connections after this long; 0 disables keep-alive (default 5)"),
    _http("head_timeout", float, "SECONDS", "total time a client has to send a request head; 408 past it (default 10)"),
    _http("body_timeout", float, "SECONDS", "longest wait for request-body bytes (default 10)"),
    _http("min_body_rate", float, "BYTES_PER_S",
          "slowest request body, averaged over the waits for it; 0: none (default 500)"),
    _http("send_timeout", float, "SECONDS", "longest wait for the client to take response bytes (default 10)"),
    _http("min_send_rate", float, "BYTES_PER_S",
          "slowest a client may take a response, averaged over the waits; 0: none (default 500)"),
    _http("send_buffer", int, "BYTES",
          "response bytes kept in memory per slow client before a temporary file (default 65536)"),
    _http("send_spool", int, "BYTES",
          "response bytes kept per slow client before the app's thread waits (default 8388608)"),
    _http("max_request_line", int, "BYTES", "longest request line; longer gets 414 (default 8190)"),
    _http("max_header_size", int, "BYTES", "longest header line (default 8190)"),
    _http("max_headers", int, "N", "most header lines (default 100)"),
    _http("max_header_block", int, "BYTES", "largest total of the header lines (default 65536)"),
    _http("max_body_size", int, "BYTES", "largest request body (default unlimited)"),
    _http("buffer_request_body", _yes_no, "yes|no",
          "threadpool: receive each request body in full before the app runs; no for apps that stream "
          "uploads (default yes)"),
    _http("max_body_in_memory", int, "BYTES",
          "threadpool: request body bytes kept in memory, the rest in a temporary file (default 65536)"),
    Setting(
        "graceful_timeout", ("--graceful-timeout",), type=float, default=DEFAULT_GRACEFUL_TIMEOUT, metavar="SECONDS",
        check=_not_negative, group=PROCESS, target="server",
        help="on SIGTERM/SIGINT, how long in-flight requests may take to finish (default 30); "
             "SIGQUIT stops at once",
    ),
    Setting("log_level", ("--log-level",), "level of the 'gearshift' logger (default info)", type=str.lower,
            default="info", choices=LOG_LEVELS, group=PROCESS, target="command"),
    Setting(
        "metrics_bind", ("--metrics-bind",), metavar="HOST:PORT", group=PROCESS, target="command",
        help="serve Prometheus metrics at http://HOST:PORT/metrics, apart from the application (needs "
             "gearshift[prometheus]; default: off)",
    ),
    Setting(
        "access_log", ("--access-log",), metavar="PATH", group=PROCESS, target="command",
        default="-",
        help="log one line per request to PATH (appended; SIGUSR1 reopens it), or to stderr for "
             "'-' (default -; --no-access-log for none)",
    ),
    Setting("config", ("--config",), metavar="PATH", group=PROCESS, target="command",
            help="read settings from this TOML file: a gearshift.toml, or a pyproject.toml's [tool.gearshift] "
                 "(default: whichever of the two is in the --chdir directory or the current one)"),
    Setting("chdir", ("--chdir",), metavar="DIR", group=PROCESS, target="command",
            help="change to DIR before reading the configuration file there and importing the application"),
    Setting("pid", ("--pid",), metavar="FILE", group=PROCESS, target="command",
            help="write the server's pid to FILE once it listens, and remove it at exit; refuse to start "
                 "while FILE names a running process"),
    Setting("user", ("--user",), metavar="USER", group=PROCESS, target="command",
            help="started as root: become USER (a name or a uid) once listening, before importing the application"),
    Setting("group", ("--group",), metavar="GROUP", group=PROCESS, target="command",
            help="started as root: become GROUP (a name or a gid; default: USER's group) once listening"),
    # --reload (gearshift.reload): the listeners stay in this process, the server restarts in a child.
    Setting("reload", ("--reload",), "restart the server when a watched file changes (needs gearshift[reload])",
            kind="flag", group=DEVELOPMENT, target="command"),
    Setting("reload_dir", ("--reload-dir",), "a directory to watch, recursively; repeatable (default: the "
            "current directory)", kind="list", metavar="DIR", group=DEVELOPMENT, target="command"),
    Setting("reload_include", ("--reload-include",), "also watch files whose name matches this glob pattern; "
            "repeatable (default *.py)", kind="list", metavar="PATTERN", group=DEVELOPMENT, target="command"),
    Setting("reload_exclude", ("--reload-exclude",), "ignore files and directories whose name matches this glob "
            "pattern; repeatable (default .*, *.py[cod], __pycache__, ...)", kind="list", metavar="PATTERN",
            group=DEVELOPMENT, target="command"),
)
GROUPS = (WHERE, STRATEGY, HTTP, PROCESS, DEVELOPMENT)
#: Options that are actions rather than settings: not read from the environment.
ACTIONS = ("-h", "--help", "--version", "--list-strategies", "--print-config", "--check-config")


# -- entry point ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None, *,
         under_reloader: bool = False) -> int:
    """Run the command; return its exit status. ``environ`` defaults to ``os.environ``.

    ``under_reloader``: this process is the server that ``--reload`` runs (see
    :mod:`gearshift.reload`), which binds nothing: its listeners are the reloader's, at LISTEN_FDS.
    """
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
        if args.print_config:
            sys.stdout.write(format_config(args))
            return 0
        if under_reloader:
            args.bind = args.fd = None  # its listeners are the reloader's, at LISTEN_FDS
        elif args.reload and not args.check_config:
            from .reload import run_reloader  # watchfiles is imported only for --reload

            # The reloader only binds and watches: the server it runs does the rest (--chdir,
            # --pid, --user, importing the application) as the command without --reload would.
            return run_reloader(args, list(sys.argv[1:] if argv is None else argv), environ)
        elif not args.reload:
            for name in ("reload_dir", "reload_include", "reload_exclude"):
                if name in args.given:
                    raise UsageError(f"{args.given[name]} needs --reload")
        if args.chdir is not None:
            process.change_directory(args.chdir, source_name(args, "chdir"))
            _make_cwd_importable()
        if args.check_config:
            return check_config(args, environ)
        return serve(args, environ, under_reloader)
    except (UsageError, AppSpecError) as exc:
        _error(str(exc), hint=True)
        return 2
    except (CommandError, AppLoadError, PluginError, WorkerBootError, process.ProcessSetupError) as exc:
        _error(str(exc))
        return 1
    except KeyboardInterrupt:  # Ctrl+C before the signal handlers are in place
        _error("interrupted")
        return 130
    except Interrupted as exc:
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


class Parser(argparse.ArgumentParser):
    """The command's parser: errors become :class:`UsageError` (one line, exit 2), and it keeps
    the table of settings it was made from."""

    def __init__(self) -> None:
        super().__init__(
            prog=PROG,
            description="Serve a WSGI application; the concurrency model is a strategy chosen by name.",
            epilog=(
                "Every option can also be set with an environment variable GEARSHIFT_<NAME> (shown in "
                "brackets); the command line wins. Flags take 1/0, true/false, yes/no or on/off; "
                "repeatable options take several values separated by spaces or commas. "
                "MODULE:APP can be given as GEARSHIFT_APP. A configuration file (gearshift.toml, or "
                "[tool.gearshift] in pyproject.toml; keys are the options' names) comes below the "
                "environment. Signals: SIGTERM and SIGINT stop gracefully, "
                "SIGQUIT at once; SIGUSR1 reopens the access log; under prefork SIGHUP reloads and "
                "SIGTTIN/SIGTTOU add or remove a worker; otherwise SIGHUP and SIGUSR2 are logged and ignored."
            ),
            allow_abbrev=False,  # plugins add options: an abbreviation must not change meaning
        )
        self.settings: list[Setting] = []
        self.groups: dict[str, Any] = {}

    def error(self, message: str) -> NoReturn:
        if message == "argument --access-log: expected one argument":
            message += " (a file name, or - for stderr)"
        raise UsageError(message)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise _Exit(status)

    def add_setting(self, setting: Setting) -> None:
        self._check_name(setting.name)
        if not setting.flags:
            setting.add_to(self)
        else:
            if setting.group not in self.groups:
                self.groups[setting.group] = self.add_argument_group(setting.group)
            setting.add_to(self.groups[setting.group])
        self.settings.append(setting)

    def adopt(self, action: argparse.Action) -> None:
        """Make an option a plugin added itself a setting: read from the environment, and None
        when not given, like every other."""
        if not action.option_strings:
            return
        setting = Setting.from_action(action)
        self._check_name(setting.name)
        if action.help != argparse.SUPPRESS:
            action.help = f"{action.help or ''} [{setting.env_name}]".lstrip()
        self.set_defaults(**{action.dest: None})
        self.settings.append(setting)


    def _check_name(self, name: str) -> None:
        if name in Arguments.RESERVED or any(known.name == name for known in self.settings):
            raise ValueError(f"a setting named {name!r} exists already")


class _PluginParser:
    """What a plugin's ``gearshift_add_options(parser)`` gets: the command's parser, noting the
    options a plugin adds with ``add_argument()`` so that they become settings too."""

    def __init__(self, target: Any, added: list[argparse.Action]) -> None:
        self._target = target
        self._added = added

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action: argparse.Action = self._target.add_argument(*args, **kwargs)
        self._added.append(action)
        return action

    def add_argument_group(self, *args: Any, **kwargs: Any) -> _PluginParser:
        return _PluginParser(self._target.add_argument_group(*args, **kwargs), self._added)

    def add_mutually_exclusive_group(self, *args: Any, **kwargs: Any) -> _PluginParser:
        return _PluginParser(self._target.add_mutually_exclusive_group(*args, **kwargs), self._added)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


def build_parser() -> Parser:
    """The command's parser: :data:`SETTINGS`, then the settings of the strategy plugins."""
    parser = Parser()
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    for title in GROUPS:
        parser.groups[title] = parser.add_argument_group(title)
    for setting in SETTINGS:
        parser.add_setting(setting)
    parser.groups[STRATEGY].add_argument(
        "--list-strategies", action="store_true", help="list available strategies and exit"
    )
    parser.groups[PROCESS].add_argument(
        "--print-config", action="store_true",
        help="print every setting, its value and where it came from, and exit (binds nothing, imports nothing)",
    )
    parser.groups[PROCESS].add_argument(
        "--check-config", action="store_true",
        help="read the configuration and import the application, bind nothing, and exit: 0 if it would start",
    )
    _add_plugin_settings(parser)  # the strategies' own options follow, in the "strategy" group
    return parser


def _add_plugin_settings(parser: Parser) -> None:
    """Every plugin's ``gearshift_add_options``: the settings it returns, and the options it adds
    to the parser itself (which reach only a strategy that takes them)."""
    for origin, add_options in hook_implementations("gearshift_add_options"):
        added: list[argparse.Action] = []
        try:
            declared = add_options(parser=_PluginParser(parser, added))
            if declared is not None and (
                not isinstance(declared, (list, tuple)) or not all(isinstance(s, Setting) for s in declared)
            ):
                raise TypeError(f"it must return None or a list of gearshift.settings.Setting, not {declared!r}")
            for setting in declared or ():
                parser.add_setting(setting)
            for action in added:
                parser.adopt(action)
        except Exception as exc:
            raise PluginError(
                f"gearshift plugin {origin} failed in gearshift_add_options(): {type(exc).__name__}: {exc}"
            ) from exc


class Arguments(argparse.Namespace):
    """The parsed command: an attribute per setting (its value, or its default), ``given`` (how
    each given setting was given: its flag, its variable or its file and key, for error
    messages), ``sources`` (where each setting's value came from, for ``--print-config``),
    ``config_file`` (the file read, if any), ``settings`` (the table), ``warnings`` and
    ``notes`` (for the log, once it is set up)."""

    RESERVED = frozenset({"settings", "given", "sources", "warnings", "notes", "list_strategies", "print_config",
                          "check_config", "config_file"})

    def __init__(self, settings: Sequence[Setting] = ()) -> None:
        super().__init__()
        self.settings = tuple(settings)
        self.given: dict[str, str] = {}
        self.sources: dict[str, str] = {}
        self.warnings: list[str] = []
        self.notes: list[str] = []
        self.list_strategies = False
        self.print_config = False
        self.check_config = False
        self.config_file: str | None = None  # how messages name it


#: The source of a setting nobody gave.
DEFAULT = "default"


def parse_args(parser: Parser, argv: Sequence[str] | None, environ: Mapping[str, str]) -> Arguments:
    """Each setting's value: from the command line, else from ``GEARSHIFT_<NAME>``, else from the
    configuration file, else its default. A flag given false (in the environment or the file)
    stops the search there, and leaves the setting at its default."""
    parsed, extras = parser.parse_known_args(argv)
    if extras:
        raise UsageError(_unrecognized(parser, extras))
    args = Arguments(parser.settings)
    args.list_strategies, args.print_config = parsed.list_strategies, parsed.print_config
    args.check_config = parsed.check_config
    try:
        command_line = {
            setting.name: (value, setting.shown_as)
            for setting in parser.settings if (value := getattr(parsed, setting.name, None)) is not None
        }
        environment = {
            setting.name: (value, setting.env_name)
            for setting in parser.settings if (value := setting.from_env(environ)) is not None
        }
        # Which file to read is the one thing decided before reading it.
        above_file = {**environment, **command_line}
        config, config_origin = above_file.get("config", (None, "--config"))
        chdir = above_file.get("chdir", (None, ""))[0]
        config_file = find_config(config, config_origin, chdir)
        in_file = config_file.values(parser.settings) if config_file is not None else {}
    except SettingError as exc:
        raise UsageError(str(exc)) from None
    for setting in parser.settings:
        name = setting.name
        layer = next((layer for layer in (command_line, environment, in_file) if name in layer), {})
        value, source = layer.get(name, (None, DEFAULT))
        args.sources[name] = config_file.label if layer is in_file and config_file is not None else source
        if value is None or value is False and setting.kind == "flag":
            value = setting.default
        else:
            args.given[name] = source
            problem = setting.check(value) if setting.check is not None else None
            if problem:
                raise UsageError(f"{source} {problem}")
        setattr(args, name, value)
    if config_file is not None:
        args.notes += config_file.notes
        args.config_file = config_file.label
    if args.app is None and args.access_log not in (None, "-") and _looks_like_app(args.access_log):
        # "gearshift --access-log hello": a log file named hello, or the app hello with the
        # access log on stderr? Neither guess is safe, and serving the demo would hide it.
        value = args.access_log
        raise UsageError(
            f"{source_name(args, 'access_log')} takes a file name (or - for stderr) and no MODULE:APP was "
            f"given: is {value!r} the application? Write '--access-log - {value}' to log to stderr, or "
            f"'--access-log ./{value}' for a file of that name"
        )
    args.warnings = _unknown_variables(parser.settings, environ)
    return args


def source_name(args: argparse.Namespace, name: str) -> str:
    """How the user gave setting ``name``: its flag or its environment variable."""
    given: dict[str, str] = getattr(args, "given", {})
    return given.get(name) or "--" + name.replace("_", "-")


def _unrecognized(parser: Parser, extras: list[str]) -> str:
    message = f"unrecognized arguments: {' '.join(extras)}"
    options = [flag for setting in parser.settings for flag in setting.flags] + list(ACTIONS)
    for extra in extras:
        if extra.startswith("-") and extra != "-":
            close = difflib.get_close_matches(extra.partition("=")[0], options, n=1, cutoff=0.6)
            if close:
                return f"{message}; did you mean {close[0]}?"
            break
    return message


def _unknown_variables(settings: Sequence[Setting], environ: Mapping[str, str]) -> list[str]:
    """One warning per ``GEARSHIFT_*`` variable that no setting reads (a misspelling, usually)."""
    known = {setting.env_name for setting in settings}
    # Compared without the prefix, which every name shares and would make any two look alike.
    suffixes = sorted(k.removeprefix(ENV_PREFIX) for k in known)
    warnings = []
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in known:
            close = difflib.get_close_matches(name.removeprefix(ENV_PREFIX), suffixes, n=1, cutoff=0.6)
            hint = f"; did you mean {ENV_PREFIX}{close[0]}?" if close else f" (see '{PROG} --help' for the variables)"
            warnings.append(f"{name} is not a gearshift setting and is ignored{hint}")
    return warnings


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


# -- --list-strategies ---------------------------------------------------------------------------


def format_strategies() -> str:
    """The ``--list-strategies`` table: name, the flags, a column per capability (so that a user
    sees what choosing a strategy gives up), origin, one-line description."""
    strategies = available_strategies()
    origins = strategy_origins()
    header = ("NAME", "MULTITHREAD", "MULTIPROCESS", *(c.upper() for c in CAPABILITIES), "ORIGIN", "DESCRIPTION")
    rows = [header]
    for name, cls in strategies.items():
        flags = (cls.multithread, cls.multiprocess, *(c not in cls.lacks for c in CAPABILITIES))
        rows.append((name, *("yes" if flag else "no" for flag in flags), origins.get(name, "?"), cls.description()))
    widths = [max(len(row[column]) for row in rows) for column in range(len(header) - 1)]
    lines = ["  ".join([*(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)), row[-1]]).rstrip()
             for row in rows]
    return "\n".join(lines) + "\n"


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


def strategy_options(args: Arguments, strategy: type[Strategy]) -> dict[str, Any]:
    """The given strategy settings, for the selected strategy: a declared setting it does not
    take is an error; an option a plugin added with ``add_argument`` reaches it only if it
    takes it (such options do not say which strategy they are for)."""
    accepted = strategy.option_defaults()
    takes_any = strategy.accepts_any_option()
    options = {}
    for setting in args.settings:
        value = getattr(args, setting.name, None)
        if setting.target not in ("strategy", "if-accepted") or value is None:
            continue
        if setting.passed_as in accepted or takes_any:
            options[setting.passed_as] = value
        elif setting.target == "strategy":
            raise UsageError(
                f"{setting.shown_as} ({setting.env_name}) does not apply to strategy {strategy.name!r}, "
                f"whose options are: {', '.join(sorted(accepted)) or 'none'}"
            )
    return options


def server_options(args: Arguments) -> dict[str, Any]:
    """The given ``make_server()`` settings (HTTP limits, the graceful timeout), by keyword."""
    return {
        setting.passed_as: getattr(args, setting.name)
        for setting in args.settings
        if setting.target == "server" and getattr(args, setting.name) is not None
    }


def ssl_context_from(args: argparse.Namespace) -> ssl.SSLContext | None:
    if args.certfile is None:
        if args.keyfile is not None:
            raise UsageError("--keyfile needs --certfile")
        return None
    import ssl  # only for HTTPS: a process that serves plain HTTP does not load OpenSSL

    certfile, keyfile = args.certfile, args.keyfile
    cert_flag, key_flag = source_name(args, "certfile"), source_name(args, "keyfile")
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
        raise CommandError(
            f"{key_source}: the private key is encrypted, and gearshift does not ask for passphrases"
        ) from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise CommandError(
                f"the private key in {key_source} does not match the certificate in {certfile}"
            ) from None
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


def serve(args: Arguments, environ: Any, under_reloader: bool = False) -> int:
    strategy = _strategy(args)
    setup_logging(args.log_level, None if args.no_access_log else args.access_log)
    for warning in args.warnings:
        log.warning("%s", warning)
    for note in args.notes:
        log.info("%s", note)
    signals = Signals()
    signals.install()
    if under_reloader:
        # Ctrl+C reaches the whole process group; the reloader decides, and stops this process
        # with SIGTERM (a second stop signal here would cut off the in-flight requests).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return _serve(args, environ, strategy, signals)
    finally:
        signals.uninstall()


def _serve(args: Arguments, environ: Any, strategy: type[Strategy], signals: Signals) -> int:
    pid_file = process.PidFile(args.pid, source_name(args, "pid")) if args.pid is not None else None
    if pid_file is not None:
        pid_file.check()  # before binding: a live server keeps its port and its file
    identity = _identity(args)
    ssl_context = ssl_context_from(args)  # as root: a key only root may read is fine
    binds = binds_from(args, environ)
    _check_preload(args, strategy)
    # A strategy with worker processes imports the application in each of them (after the
    # fork, so that a reload imports it afresh), unless it is preloaded here. With --user it
    # is imported once the process is that user: root binds, the application never runs as root.
    in_workers = args.app is not None and strategy.worker_processes and not args.preload
    if args.app is None:
        app: WSGIApp = demo.app
        app_note = "no MODULE:APP given: serving the built-in demo app"
    elif in_workers or identity is not None:
        parse_app_spec(args.app)  # a malformed MODULE:APP is a usage error before binding
        app = _imported_elsewhere
        app_note = f"{args.app} is imported by each worker process" if in_workers else f"loaded {args.app}"
    else:
        app = load_app(args.app)
        app_note = f"loaded {args.app}"
    options = {**server_options(args), **strategy_options(args, strategy)}
    try:
        server = build_server(app, strategy, binds, options, ssl_context, umask=args.umask)
    except UsageError as exc:
        raise UsageError(_name_options(str(exc), args)) from None
    metrics = None
    try:
        if pid_file is not None:
            pid_file.write()
        if identity is not None:
            process.hand_over([bind.path for bind in binds if bind.path is not None], identity)
            process.drop_privileges(identity)  # prefork's workers, forked later, inherit it
        if in_workers:
            spec = args.app

            def import_app() -> None:
                server.app = load_app(spec)

            server.setup_worker = import_app  # type: ignore[method-assign]
        elif app is _imported_elsewhere:
            server.app = load_app(args.app)
        if args.metrics_bind is not None:
            # After the drop: under prefork its directory must be writable by the workers.
            metrics = enable_metrics(server, args)
        return run(server, app_note, signals)
    finally:
        server.server_close()  # already done after a graceful stop; this is for errors
        if metrics is not None:
            metrics.close()  # after the workers are gone: they write to its directory until then
        if pid_file is not None:
            pid_file.remove()


def enable_metrics(server: WSGIServer, args: Arguments) -> gearshift_metrics.Metrics:
    """``--metrics-bind``: :func:`gearshift.metrics.enable`, its errors in the command's words."""
    flag = source_name(args, "metrics_bind")
    try:
        bind = parse_bind(args.metrics_bind)
    except UsageError as exc:
        raise UsageError(f"{flag}: {exc}") from None
    if bind.path is not None or bind.host is None or bind.port is None:
        raise UsageError(f"{flag} takes HOST:PORT or [IPV6]:PORT (Prometheus scrapes over TCP), not {bind.text!r}")
    from . import metrics as gearshift_metrics

    try:
        return gearshift_metrics.enable(server, (bind.host, bind.port))
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None
    except gearshift_metrics.MetricsError as exc:
        raise CommandError(f"{flag}: {exc}") from None
    except OSError as exc:
        raise CommandError(f"{flag}: {_listen_error(bind, exc)}") from None


def _strategy(args: Arguments) -> type[Strategy]:
    try:
        return resolve_strategy(args.strategy)
    except UnknownStrategyError as exc:
        raise UsageError(str(exc)) from None


def _identity(args: Arguments) -> process.Identity | None:
    return process.resolve_identity(args.user, args.group, (source_name(args, "user"), source_name(args, "group")))


def binds_from(args: Arguments, environ: Any, socket_activation: bool = True) -> list[Bind]:
    """Where to listen: socket activation's descriptors (unless ``socket_activation`` is false:
    reading them takes them out of the environment), ``--fd``, then ``--bind``."""
    binds = []
    for fd in listen_fds(environ) if socket_activation else []:
        check_fd(fd, "socket activation (LISTEN_FDS)")
        binds.append(Bind(f"socket activation fd {fd}", fd=fd))
    for fd in args.fd or []:
        check_fd(fd, f"--fd {fd}")
        binds.append(Bind(f"--fd {fd}", fd=fd))
    return binds + [parse_bind(text) for text in args.bind or ([] if binds else [DEFAULT_BIND])]


def _check_preload(args: Arguments, strategy: type[Strategy]) -> None:
    if args.preload and not strategy.worker_processes:
        raise UsageError(
            f"{source_name(args, 'preload')} does not apply to strategy {strategy.name!r}, which serves from "
            f"the process that imports the application"
        )


def _imported_elsewhere(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
    """The application of a server whose real one is imported later (after dropping privileges)
    or elsewhere (in each worker process): it never serves."""
    raise RuntimeError("the application is imported after binding, or in each worker process")


# -- --check-config and --print-config -----------------------------------------------------------


def check_config(args: Arguments, environ: Any) -> int:
    """What serving would check before accepting, short of binding: the strategy and its
    options, the addresses, the TLS files, the pid file, the user, and the application, which
    is imported (in this process, whatever the strategy)."""
    strategy = _strategy(args)
    if args.pid is not None:
        process.PidFile(args.pid, source_name(args, "pid")).check()
    _identity(args)
    ssl_context = ssl_context_from(args)
    binds = binds_from(args, environ, socket_activation=False)
    _check_preload(args, strategy)
    app = load_app(args.app) if args.app is not None else demo.app
    options = {**server_options(args), **strategy_options(args, strategy)}
    http_options = dict(options)
    try:
        config = HTTPConfig.from_options(http_options)
        # Unbound (bind_and_activate=False): the options and the strategy are checked as
        # make_server() checks them, and no address is touched.
        server = WSGIServer(("127.0.0.1", 0), app, strategy, config=config, ssl_context=ssl_context,
                            umask=args.umask, bind_and_activate=False, **http_options)
    except (TypeError, ValueError) as exc:
        raise UsageError(_name_options(str(exc), args)) from None
    server.server_close()
    what = args.app if args.app is not None else "the built-in demo app"
    where = ", ".join(bind.text for bind in binds)
    settings = f"; settings from {args.config_file}" if args.config_file is not None else ""
    sys.stdout.write(f"{PROG}: configuration ok: {what} on {where} with strategy {strategy.name}{settings}\n")
    return 0


def format_config(args: Arguments) -> str:
    """``--print-config``: one line per setting, ``name = value  # source``, the value as a
    configuration file would spell it; "not set" leaves the built-in default (see ``--help``)."""
    rows = [(setting.name, _as_toml(setting, getattr(args, setting.name)), args.sources[setting.name])
            for setting in args.settings]
    name_width = max(len(name) for name, _, _ in rows)
    value_width = min(40, max(len(value) for _, value, _ in rows))
    return "".join(f"{name:<{name_width}} = {value:<{value_width}}  # {source}\n" for name, value, source in rows)


def _as_toml(setting: Setting, value: Any) -> str:
    if value is None:
        return "false" if setting.kind == "flag" else "(not set)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if setting.octal and isinstance(value, int):
        return f"0o{value:03o}"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_as_toml(setting, item) for item in value) + "]"
    return json.dumps(str(value))


def _name_options(message: str, args: Arguments) -> str:
    """The library names options by their keywords (``max_children must be ...``); say what the
    user typed instead: the flag, or the environment variable."""
    for setting in args.settings:
        if setting.name in args.given and setting.target != "command":
            keyword = re.escape(setting.passed_as)
            given = args.given[setting.name].replace("\\", "\\\\")  # a replacement string, not a pattern
            message = re.sub(rf"(?<![\w-]){keyword}(?![\w-])", given, message)
    return message


def build_server(app: WSGIApp, strategy: type[Strategy], binds: list[Bind], options: dict[str, Any],
                 ssl_context: ssl.SSLContext | None, umask: int | None = None) -> WSGIServer:
    """make_server() on the first address, add_listener() for the others: the ones the command
    creates are handed over (``own=True``), so the server removes their Unix socket files and
    stops listening on them when it closes; inherited descriptors (``fd://``) are only borrowed."""
    first, rest = binds[0], binds[1:]
    # make_server() spells a Unix socket the way --bind does: unix:/PATH
    host = first.text if first.path is not None else first.host or ""
    try:
        server = make_server(host, first.port or 0, app, strategy, ssl_context=ssl_context, fd=first.fd, umask=umask,
                             **options)
    except (TypeError, ValueError) as exc:  # UnknownStrategyError too: a bad option or name
        raise UsageError(str(exc)) from None
    except StrategyUnavailableError as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        raise CommandError(_listen_error(first, exc)) from None
    try:
        for bind in rest:
            server.add_listener(open_listener(bind, umask), own=bind.fd is None)
    except BaseException:
        server.server_close()
        raise
    return server


def open_listener(bind: Bind, umask: int | None = None) -> socket.socket:
    """The listening socket of a ``--bind`` address (created) or of a descriptor (adopted)."""
    try:
        if bind.fd is not None:
            return socket.socket(fileno=bind.fd)
        return create_listener(bind.path if bind.path is not None else (bind.host, bind.port), umask=umask)
    except OSError as exc:
        raise CommandError(_listen_error(bind, exc)) from None


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


def banner_options(server: WSGIServer) -> str:
    strategy = server.strategy
    values = {
        name: getattr(strategy, name, default)
        for name, default in type(strategy).option_defaults().items()
        if name not in ("block_on_close", "freeze_gc")  # defaults nobody needs to see at start
    }
    values = {name: value for name, value in values.items() if value is not None}  # no limit set
    return f" ({', '.join(f'{k}={v}' for k, v in values.items())})" if values else ""


def run(server: WSGIServer, app_note: str | None = None, signals: Signals | None = None) -> int:
    """Serve until a stop signal; then drain in-flight requests within the server's
    ``graceful_timeout`` (SIGTERM, SIGINT) or cut them off (SIGQUIT). Without ``signals``, the
    handlers are installed here and removed on return (:func:`gearshift.serve`)."""
    own_signals = signals is None
    if signals is None:
        signals = Signals()
        signals.attach(server)  # before install(): a stop signal from then on stops the server
        signals.install()
    else:
        signals.attach(server)
    scheme = "https" if getattr(server, "ssl_context", None) is not None else "http"
    if app_note is not None:
        log.info("gearshift %s: %s", __version__, app_note)
    for sock in server.listeners:
        log.info(
            "gearshift %s: serving %s with strategy %s%s \u2014 Ctrl+C to quit",
            __version__, describe_listener(sock, scheme), server.strategy.name, banner_options(server),
        )
    try:
        server.serve_forever()
        if signals.fast:
            killed = server.strategy.terminate()
            note = f", killed {killed} worker{'s' if killed != 1 else ''}" if killed else ""
            log.warning("SIGQUIT: fast stop: stopped accepting%s; in-flight requests are cut off", note)
            server.graceful_timeout = 0
        elif signals.signum is not None:
            timeout = server.graceful_timeout
            how_long = "as long as they take" if timeout is None else f"up to {timeout:g} s"
            log.info(
                "%s: stopped accepting; waiting %s for in-flight requests (send it again to quit at once)",
                signal.Signals(signals.signum).name, how_long,
            )
        server.server_close()
        signals.run_pending()
        log.info("gearshift %s: stopped", __version__)
        if signals.fast:
            exit_if_threads_remain(0)
        return 0
    finally:
        signals.detach()
        if own_signals:
            signals.uninstall()


