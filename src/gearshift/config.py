"""The ``gearshift`` command's configuration file: ``gearshift.toml``, or ``[tool.gearshift]`` in
``pyproject.toml``.

    # gearshift.toml                         # pyproject.toml
    app = "mysite.wsgi:application"          [tool.gearshift]
    bind = ["unix:/run/mysite/web.sock"]     app = "mysite.wsgi:application"
    threads = 16                             max-queue = 64

The keys are the settings' names (:class:`~gearshift.settings.Setting`), ``_`` or ``-`` alike,
and the values go through the same conversions and checks as the command line and the
environment (:meth:`Setting.from_file`). This module finds and reads the file; the command merges
its values with the command line's and the environment's in one place (``cli.parse_args``).

The file is looked for in the directory given by ``--chdir`` (from the command line or the
environment), else in the current one; ``--config PATH`` (``GEARSHIFT_CONFIG``) names it instead.
When a directory holds both, ``gearshift.toml`` is read, as tools with a file of their own do
(ruff's ``ruff.toml`` over ``pyproject.toml``), and a log line says so.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .settings import Setting, SettingError

DEDICATED = "gearshift.toml"
PYPROJECT = "pyproject.toml"
#: Settings a file cannot give: which file to read is decided before any is read.
NOT_IN_A_FILE = frozenset({"config"})


@dataclass(frozen=True)
class ConfigFile:
    """One configuration file's gearshift table: top-level keys of a ``gearshift.toml``, or the
    ``[tool.gearshift]`` table of a ``pyproject.toml``."""

    path: str
    table: dict[str, Any]
    pyproject: bool = False
    #: Info lines for the log: which file was read, and which was passed over.
    notes: tuple[str, ...] = field(default=())

    @property
    def label(self) -> str:
        """How messages and ``--print-config`` name the file."""
        return f"{self.path} [tool.gearshift]" if self.pyproject else self.path

    def values(self, settings: Sequence[Setting]) -> dict[str, tuple[Any, str]]:
        """Each key's setting name -> (its converted value, how errors name it). An unknown key
        is an error naming the closest setting."""
        by_name = {setting.name: setting for setting in settings}
        values: dict[str, tuple[Any, str]] = {}
        for key, raw in self.table.items():
            name = key.replace("-", "_")
            source = f"{self.label}: {key}"
            if name in NOT_IN_A_FILE:
                raise SettingError(f"{source}: a configuration file cannot name another (use --config or "
                                   f"GEARSHIFT_CONFIG)")
            setting = by_name.get(name)
            if setting is None:
                close = difflib.get_close_matches(name, sorted(by_name), n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else " ('gearshift --print-config' lists the settings)"
                raise SettingError(f"{self.label}: unknown setting {key!r}{hint}")
            if name in values:
                raise SettingError(f"{source}: {setting.name!r} is set twice in this file (once with '-', once '_')")
            value = setting.from_file(raw, source)
            if name == "chdir" and isinstance(value, str):
                # Relative to the file, wherever gearshift was started: the file moves with its project.
                value = os.path.join(os.path.dirname(self.path), value)
            values[name] = (value, source)
        return values


def find_config(explicit: str | None, explicit_origin: str, directory: str | None) -> ConfigFile | None:
    """The configuration file to read: ``explicit`` (named by ``explicit_origin``, the flag or
    the variable), which must exist, else the one in ``directory`` (default: the current one),
    if any."""
    if explicit is not None:
        pyproject = os.path.basename(explicit) == PYPROJECT
        table = _read(explicit, pyproject, f"{explicit_origin} {explicit}")
        if table is None:
            return None
        return ConfigFile(explicit, table, pyproject, notes=(f"settings from {_label(explicit, pyproject)}",))
    dedicated, pyproject_path = (os.path.join(directory or "", name) for name in (DEDICATED, PYPROJECT))
    project_table = _read(pyproject_path, True, None) if os.path.exists(pyproject_path) else None
    if os.path.exists(dedicated):
        notes = [f"settings from {dedicated}"]
        if project_table is not None:
            notes.append(f"{pyproject_path} has a [tool.gearshift] table too: ignored, {dedicated} wins")
        return ConfigFile(dedicated, _read(dedicated, False, None) or {}, notes=tuple(notes))
    if project_table is not None:
        return ConfigFile(pyproject_path, project_table, True, notes=(f"settings from {_label(pyproject_path, True)}",))
    return None


def _label(path: str, pyproject: bool) -> str:
    return ConfigFile(path, {}, pyproject).label


def _read(path: str, pyproject: bool, origin: str | None) -> dict[str, Any] | None:
    """The gearshift table of the file at ``path``; None for a pyproject.toml without one."""
    where = origin or path
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except FileNotFoundError:
        raise SettingError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise SettingError(f"{where}: is a directory, not a TOML file") from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise SettingError(f"{where}: {reason[:1].lower()}{reason[1:]}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SettingError(f"{path}: not valid TOML: {exc}") from None
    if not pyproject:
        return document
    table = document.get("tool", {}).get("gearshift") if isinstance(document.get("tool"), dict) else None
    if table is not None and not isinstance(table, dict):
        raise SettingError(f"{path}: tool.gearshift must be a table ([tool.gearshift]), not a value")
    return table
