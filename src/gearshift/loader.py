"""Loading the WSGI application named by ``MODULE:APP``, as the ``gearshift`` command does.

    load_app("myapp:app")              load_app("myapp:create_app('prod', debug=False)")
    load_app("path/to/app.py:app")     load_app("myapp")  # its "app" or "application"

:func:`load_app` raises :class:`AppLoadError` with a one-line message saying what went wrong
(and :class:`AppSpecError`, a subclass, when the text itself is malformed, whatever is installed).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import os
import sys
from dataclasses import dataclass
from typing import Any, cast

from .core.errors import GearshiftError
from .http.server import WSGIApp


class AppLoadError(GearshiftError):
    """The application cannot be loaded: the module does not import, the name is missing, ..."""


class AppSpecError(AppLoadError, ValueError):
    """``MODULE:APP`` is malformed: no installation could make it work."""



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
        raise AppSpecError(f"invalid application {text!r}: expected MODULE:APP, e.g. myapp:app or myapp.py:app")
    if not sep:
        return AppSpec(text, module, None, file=file)
    try:
        node = ast.parse(expr.strip(), mode="eval").body
    except SyntaxError:
        raise AppSpecError(f"invalid application {text!r}: {expr!r} is not a name or a call") from None
    call = None
    if isinstance(node, ast.Call):
        if any(kw.arg is None for kw in node.keywords) or any(isinstance(a, ast.Starred) for a in node.args):
            raise AppSpecError(f"invalid application {text!r}: */** arguments are not supported")
        try:
            args = tuple(ast.literal_eval(arg) for arg in node.args)
            kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg is not None}
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise AppSpecError(
                f"invalid application {text!r}: factory arguments must be literals (strings, numbers, ...)"
            ) from None
        call = (args, kwargs)
        node = node.func
    path: list[str] = []
    while isinstance(node, ast.Attribute):
        path.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        raise AppSpecError(f"invalid application {text!r}: {expr!r} is not a name or a call")
    path.append(node.id)
    return AppSpec(text, module, tuple(reversed(path)), call, file)


def load_app(text: str) -> WSGIApp:
    """Import the WSGI application named by ``MODULE:APP`` (see the module's docstring)."""
    spec = parse_app_spec(text)
    if spec.file is not None:
        name, filename = _importable_name(spec.file)
        spec = dataclasses.replace(spec, module=name)
        module = _import(name)
        loaded = getattr(module, "__file__", None)
        if loaded is None or os.path.realpath(loaded) != filename:
            raise AppLoadError(
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
            raise AppLoadError(
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
            raise AppLoadError(f"{owner!r} has no attribute {attr!r} (from {text!r})") from None
        except Exception as exc:
            dotted = ".".join(path[:depth])
            raise AppLoadError(f"getting {dotted!r} from {spec.module!r} failed: {_one_line(exc)}") from None
    dotted = ".".join(path)
    if spec.call is not None:
        if not callable(obj):
            raise AppLoadError(f"{spec.module}:{dotted} is {_a(type(obj).__name__)}, not a factory to call")
        args, kwargs = spec.call
        try:
            obj = obj(*args, **kwargs)
        except Exception as exc:
            raise AppLoadError(f"calling the factory {text!r} failed: {_one_line(exc)}") from None
        dotted += "(...)"
    if obj is None:
        raise AppLoadError(f"{spec.module}:{dotted} is None, not a WSGI application")
    if not callable(obj):
        raise AppLoadError(
            f"{spec.module}:{dotted} is {_a(type(obj).__name__)}, not callable: MODULE:APP must name a WSGI application"
        )
    if spec.call is None and _takes_no_arguments(obj):
        raise AppLoadError(
            f"{spec.module}:{dotted} takes no arguments, so it is not a WSGI application; "
            f"if it is a factory, call it: '{spec.module}:{dotted}()'"
        )
    return cast(WSGIApp, obj)


def _importable_name(file: str) -> tuple[str, str]:
    """The module name under which ``file`` (a .py path) imports, and its real path; puts the
    directory it imports from first on sys.path. A file inside a package (directories with
    ``__init__.py``) imports as part of it, so that its relative imports work."""
    filename = os.path.realpath(file)
    if not os.path.isfile(filename):
        reason = "is a directory" if os.path.isdir(filename) else "no such file"
        raise AppLoadError(f"cannot import {file!r}: {reason}")
    if not filename.endswith(".py"):
        raise AppLoadError(f"cannot import {file!r}: MODULE is a module name or the path of a .py file")
    directory, name = os.path.split(filename.removesuffix(".py"))
    if name == "__init__":  # a package's own file: import the package
        directory, name = os.path.split(directory)
    parts = [name]
    while os.path.isfile(os.path.join(directory, "__init__.py")):
        directory, package = os.path.split(directory)
        parts.append(package)
    dotted = ".".join(reversed(parts))
    if not all(part.isidentifier() for part in parts):
        raise AppLoadError(f"cannot import {file!r}: {dotted!r} is not a valid module name; rename the file")
    if directory not in (os.path.realpath(entry or os.curdir) for entry in sys.path):
        sys.path.insert(0, directory)
    return dotted, filename


def _import(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise AppLoadError(
                f"cannot import {module_name!r}: no module named {missing!r} "
                f"(looked in the current directory, {os.getcwd()}, and sys.path)"
            ) from None
        raise AppLoadError(f"error while importing {module_name!r}: {_one_line(exc)}") from None
    except SystemExit as exc:
        raise AppLoadError(f"importing {module_name!r} called sys.exit({exc.code!r})") from None
    except Exception as exc:
        raise AppLoadError(f"error while importing {module_name!r}: {_one_line(exc)}") from None


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
