"""The ``gearshift`` command: serve a WSGI application with a strategy chosen by name.

    gearshift [MODULE:APP] [options]        python -m gearshift [MODULE:APP] [options]

This module is deliberately thin: it parses the command line (and ``GEARSHIFT_*`` environment
variables), imports the application, builds a server with :func:`gearshift.make_server`, and
turns SIGINT/SIGTERM into a graceful stop. Everything that serves lives in the library.

Exit status: 0 after a graceful stop (or ``--help``/``--version``/``--list-strategies``); 2 for
a command line that cannot work whatever the machine (unknown option or strategy, bad value, bad
bind address, malformed ``MODULE:APP``); 1 for everything else (the application cannot be
imported, the port is taken, a plugin is broken, ...). Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import errno
import importlib
import inspect
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

from . import __version__
from .core.errors import PluginError, StrategyUnavailableError, UnknownStrategyError
from .core.listeners import create_listener
from .core.plugins import available_strategies, hook_implementations, resolve_strategy, strategy_origins

if TYPE_CHECKING:
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
    except KeyboardInterrupt:  # Ctrl+C before the signal handlers are in place (a slow import)
        _error("interrupted")
        return 130
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


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors become :class:`UsageError` (one line, exit 2)."""

    def error(self, message: str) -> NoReturn:
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
            "MODULE:APP can be given as GEARSHIFT_APP."
        ),
        allow_abbrev=False,  # plugins add options: an abbreviation must not change meaning
    )
    parser.add_argument(
        "app", nargs="?", metavar="MODULE:APP",
        help="the WSGI application: MODULE:NAME, MODULE:NAME.ATTR, MODULE:factory() or "
             "MODULE:factory('arg', key=1) (literal arguments); the current directory is "
             "importable. Without it, a built-in demo app is served.",
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
        help="on SIGTERM/SIGINT, how long in-flight requests may take to finish (default 30)",
    )
    proc.add_argument("--log-level", default="info", type=str.lower, choices=LOG_LEVELS,
                      help="level of the 'gearshift' logger (default info)")
    proc.add_argument(
        "--access-log", nargs="?", const="-", metavar="PATH",
        help="log one line per request in common log format to PATH, or to stderr for '-' or no "
             "value (default off)",
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


def env_name(dest: str) -> str:
    return ENV_PREFIX + dest.upper().replace("-", "_")


def parse_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, environ: Mapping[str, str]
) -> argparse.Namespace:
    """Parse ``argv`` over values taken from ``GEARSHIFT_*`` variables: the command line wins."""
    namespace = argparse.Namespace()
    from_env: dict[str, int] = {}  # dest of a repeatable option -> how many values the env gave
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
    args = parser.parse_args(argv, namespace)
    for dest, count in from_env.items():
        values = getattr(args, dest)
        if len(values) > count:  # given on the command line too: those replace the env's
            setattr(args, dest, values[count:])
    if args.app is None:
        args.app = environ.get(env_name("app"), "").strip() or None
    if args.app is None and args.access_log and args.access_log != "-" and _looks_like_app(args.access_log):
        # "gearshift --access-log myapp:app": the flag's optional value swallowed MODULE:APP
        args.app, args.access_log = args.access_log, "-"
    if not hasattr(args, "_plugin_dests"):
        args._plugin_dests = []
    return args


def _looks_like_app(text: str) -> bool:
    return bool(APP_SPEC.match(text)) and ":" in text and "/" not in text


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
    module: str
    path: tuple[str, ...] | None  # None: look for "app" or "application"
    call: tuple[tuple[Any, ...], dict[str, Any]] | None = None


def parse_app_spec(text: str) -> AppSpec:
    module, sep, expr = text.partition(":")
    module = module.strip()
    if not module or not all(part.isidentifier() for part in module.split(".")):
        hint = ""
        if module.endswith(".py") or "/" in module:
            dotted = module.removesuffix(".py").strip("/").replace("/", ".")
            hint = f"; did you mean '{dotted}{sep}{expr}'?"
        raise UsageError(f"invalid application {text!r}: expected MODULE:APP, e.g. myapp:app{hint}")
    if not sep:
        return AppSpec(text, module, None)
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
    return AppSpec(text, module, tuple(reversed(path)), call)


def load_app(text: str) -> Callable[..., Any]:
    """Import the WSGI application named by ``MODULE:APP``; CommandError says what went wrong."""
    spec = parse_app_spec(text)
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
            raise CommandError(f"{spec.module}:{dotted} is a {type(obj).__name__}, not a factory to call")
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
            f"{spec.module}:{dotted} is a {type(obj).__name__}, not callable: MODULE:APP must name a WSGI application"
        )
    if spec.call is None and _takes_no_arguments(obj):
        raise CommandError(
            f"{spec.module}:{dotted} takes no arguments, so it is not a WSGI application; "
            f"if it is a factory, call it: '{spec.module}:{dotted}()'"
        )
    return obj


def _import(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            hint = ""
            if module_name.endswith(".py"):
                hint = f"; MODULE is a module name, not a file: did you mean {module_name.removesuffix('.py')!r}?"
            raise CommandError(
                f"cannot import {module_name!r}: no module named {missing!r} "
                f"(looked in the current directory, {os.getcwd()}, and sys.path){hint}"
            ) from None
        raise CommandError(f"error while importing {module_name!r}: {_one_line(exc)}") from None
    except SystemExit as exc:
        raise CommandError(f"importing {module_name!r} called sys.exit({exc.code!r})") from None
    except Exception as exc:
        raise CommandError(f"error while importing {module_name!r}: {_one_line(exc)}") from None


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

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(args.certfile, args.keyfile)
    except OSError as exc:
        names = " / ".join(filter(None, (args.certfile, args.keyfile)))
        detail = exc.strerror or getattr(exc, "reason", None) or str(exc)
        raise CommandError(f"cannot load the TLS certificate {names}: {detail}") from None
    return context


def serve(args: argparse.Namespace, environ: Any) -> int:
    if args.graceful_timeout < 0:
        raise UsageError(f"--graceful-timeout must be >= 0, not {args.graceful_timeout:g}")
    try:
        strategy = resolve_strategy(args.strategy)
    except UnknownStrategyError as exc:
        raise UsageError(str(exc)) from None
    setup_logging(args.log_level, args.access_log)
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

    server = build_server(app, strategy, binds, options, ssl_context)
    try:
        return run(server, args, app_note)
    finally:
        server.drain_timeout = args.graceful_timeout
        server.server_close()  # already done after a graceful stop; this is for errors


def build_server(app: Any, strategy: type[Any], binds: list[Bind], options: dict[str, Any],
                 ssl_context: ssl.SSLContext | None) -> Any:
    """make_server() on the first address, add_listener() for the others: the ones the command
    creates are handed over (``own=True``), so the server removes their Unix socket files and
    stops listening on them when it closes; inherited descriptors (``fd://``) are only borrowed."""
    from .http import make_server

    first, rest = binds[0], binds[1:]
    try:
        if first.fd is not None:
            server = make_server("", 0, app, strategy, ssl_context=ssl_context, fd=first.fd, **options)
        elif first.path is not None:
            server = make_server(f"unix:{first.path}", 0, app, strategy, ssl_context=ssl_context, **options)
        else:
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
                    sock = create_listener(bind.path if bind.path is not None else (bind.host, bind.port))
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


def run(server: Any, args: argparse.Namespace, app_note: str) -> int:
    """Serve until SIGINT/SIGTERM, then drain in-flight requests within --graceful-timeout."""
    scheme = "https" if getattr(server, "ssl_context", None) is not None else "http"
    log.info("gearshift %s: %s", __version__, app_note)
    for sock in server.listeners:
        log.info(
            "gearshift %s: serving %s with strategy %s%s \u2014 Ctrl+C to quit",
            __version__, describe_listener(sock, scheme), server.strategy.name, banner_options(server),
        )
    stopper = _Stopper(server)
    stopper.install()
    try:
        server.serve_forever()
        if stopper.signum is not None:
            log.info(
                "%s: stopped accepting; waiting up to %g s for in-flight requests (send it again to quit at once)",
                signal.Signals(stopper.signum).name, args.graceful_timeout,
            )
        server.drain_timeout = args.graceful_timeout
        server.server_close()
        log.info("gearshift %s: stopped", __version__)
        return 0
    finally:
        stopper.uninstall()


class _Stopper:
    """SIGINT/SIGTERM handlers: the first asks the loop to stop (the main code drains); a second
    one exits at once, killing the strategy's child processes."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, server: Any) -> None:
        self.server = server
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum
            self.server.shutdown()  # on the loop's own thread: only sets a flag and wakes the loop
            return
        self._force_exit(signum)

    def _force_exit(self, signum: int) -> NoReturn:
        killed = 0
        with contextlib.suppress(Exception):
            killed = self.server.strategy.terminate()
        with contextlib.suppress(OSError):
            # os.write, not logging: the interrupted frame may hold the logging lock
            note = f", killed {killed} worker{'s' if killed != 1 else ''}" if killed else ""
            os.write(2, f"{PROG}: second {signal.Signals(signum).name}: exiting at once{note}\n".encode())
        os._exit(128 + signum)
