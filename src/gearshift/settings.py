"""The ``gearshift`` command's settings: one :class:`Setting` per option, declared once.

A setting says everything the command needs to know about one option: its flags, its
``GEARSHIFT_*`` environment variable (derived from its name), its key in a configuration file
(its name; see :mod:`gearshift.config`), how its text becomes a value,
its default, its help, what it must satisfy, and where its value goes (the command itself,
``make_server()``, or the selected strategy). The command's parser, its environment and configuration-file
reading, its ``--help`` and the ``make_server()`` call are all derived from the table of settings
(``cli.SETTINGS`` plus what strategy plugins declare through ``gearshift_add_options``).

This module is what a plugin imports to declare its strategy's options::

    from gearshift.settings import Setting

    @gearshift.hookimpl
    def gearshift_add_options(parser):
        return [Setting("log_every", ("--log-every",), "log every N connections", type=int, metavar="N")]
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

ENV_PREFIX = "GEARSHIFT_"
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})

#: Where a setting's value goes. ``command``: the command uses it itself; ``server``: a
#: ``make_server()`` keyword that always applies; ``strategy``: an option of the selected
#: strategy, an error if given to a strategy that does not take it; ``if-accepted``: passed only
#: to a strategy that takes it (options a plugin adds with ``parser.add_argument``, which say
#: nothing of the strategy they belong to).
Target = Literal["command", "server", "strategy", "if-accepted"]


class SettingError(ValueError):
    """A value that the setting refuses; the message names where the value came from."""


@dataclass(frozen=True)
class Setting:
    """One option of the ``gearshift`` command.

    ``name`` is its Python name: the attribute the command reads, the environment variable
    ``GEARSHIFT_<NAME>``, and the keyword it is passed to ``make_server()`` as (unless
    ``keyword`` says otherwise). ``flags`` are its command-line spellings; none makes it the
    positional argument. ``kind`` is ``"value"`` (one value), ``"flag"`` (no value; in the
    environment 1/0, true/false, yes/no, on/off) or ``"list"`` (repeatable; in the environment
    several values separated by spaces or commas; the command line replaces the environment's).
    ``type`` turns one text into a value (raising ``ValueError`` or
    ``argparse.ArgumentTypeError``); ``octal`` says a TOML integer is the number itself
    (``umask = 0o007``) rather than text for ``type`` (which reads ``"7"`` for 0o007, but
    ``"18"`` for 0o022); ``check`` returns a complaint such as ``"must be >= 0"``
    about a converted value, or None. ``group`` is its section of ``--help``; ``target`` says
    where its value goes (see :data:`Target`): a plugin's settings are its strategy's options.
    """

    name: str
    flags: tuple[str, ...]
    help: str
    type: Callable[[str], Any] = str
    default: Any = None
    metavar: str | None = None
    choices: tuple[object, ...] | None = None
    kind: Literal["value", "flag", "list"] = "value"
    check: Callable[[Any], str | None] | None = None
    group: str = "strategy"
    target: Target = "strategy"
    keyword: str | None = None  # the make_server() keyword, when it is not ``name``
    octal: bool = False

    @property
    def env_name(self) -> str:
        return env_name(self.name)

    @property
    def shown_as(self) -> str:
        """The spelling errors use: the longest flag."""
        return max(self.flags, key=len) if self.flags else self.name.upper()

    @property
    def passed_as(self) -> str:
        return self.keyword or self.name

    def add_to(self, container: Any) -> argparse.Action:
        """Add this setting to an argparse parser or argument group. Every option defaults to
        None, meaning "not given": the environment and ``default`` fill in after parsing."""
        env = f" [{self.env_name}]" if self.flags else ""
        if not self.flags:
            action: argparse.Action = container.add_argument(
                self.name, nargs="?", metavar=self.metavar, help=self.help
            )
            return action
        kwargs: dict[str, Any] = {"dest": self.name, "default": None, "help": self.help + env}
        if self.kind == "flag":
            kwargs.update(action="store_const", const=True)
        else:
            kwargs.update(type=self.type, metavar=self.metavar, choices=self.choices)
            if self.kind == "list":
                kwargs["action"] = "append"
        action = container.add_argument(*self.flags, **kwargs)
        return action

    def from_env(self, environ: Mapping[str, str]) -> Any:
        """The value ``GEARSHIFT_<NAME>`` gives, or None if it gives none. A flag's false
        value is False, not None: it is given, and hides what a configuration file says."""
        name = self.env_name
        raw = environ.get(name, "").strip()
        if not raw:
            return None
        if self.kind == "flag":
            word = raw.lower()
            if word not in TRUE_WORDS | FALSE_WORDS:
                raise SettingError(f"{name}={raw!r}: expected 1/0, true/false, yes/no or on/off")
            return word in TRUE_WORDS
        if self.kind == "list":
            return self.convert_list(raw, name)
        return self.convert(raw, name)

    def from_file(self, value: object, source: str) -> Any:
        """The value a TOML configuration file gives (``source`` names the file and key): a
        flag takes a boolean, a list an array or a string like the environment's, a value a
        string or, for numbers, a TOML number; each then goes through :meth:`convert`."""
        if self.kind == "flag":
            if not isinstance(value, bool):
                raise SettingError(f"{source}: expected true or false, not {_toml(value)}")
            return value
        if self.kind == "list":
            if isinstance(value, str):
                return self.convert_list(value, source)
            if not isinstance(value, list):
                raise SettingError(f"{source}: expected an array (or a string), not {_toml(value)}")
            return [self.convert(self._file_text(item, source), source) for item in value]
        return self.convert(self._file_text(value, source), source)

    def _file_text(self, value: object, source: str) -> str:
        numeric = self.type in (int, float)
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            if numeric:
                raise SettingError(f"{source}: expected a number, not {_toml(value)}")
            return "true" if value else "false"  # a yes/no value (buffer_request_body = false)
        if isinstance(value, int) and self.octal:
            return format(value, "o")
        if isinstance(value, (int, float)):
            return str(value)
        kind = "a string or a number" if numeric else "a string"
        raise SettingError(f"{source}: expected {kind}, not {_toml(value)}")

    def convert_list(self, text: str, source: str) -> list[Any]:
        """Several values in one text, separated by spaces or commas."""
        return [self.convert(item, source) for item in re.split(r"[\s,]+", text) if item]

    def convert(self, text: str, source: str) -> Any:
        try:
            value = self.type(text)
        except argparse.ArgumentTypeError as exc:
            raise SettingError(f"{source}: invalid value {text!r}: {exc}") from None
        except (ValueError, TypeError):
            raise SettingError(f"{source}: invalid value {text!r}") from None
        if self.choices is not None and value not in self.choices:
            raise SettingError(f"{source}: invalid choice {text!r} (choose from {', '.join(map(str, self.choices))})")
        return value

    @classmethod
    def from_action(cls, action: argparse.Action) -> Setting:
        """The setting for an option a plugin added with ``parser.add_argument()``: its value
        reaches a strategy that takes its ``dest``, and its variable is read like any other."""
        kind: Literal["value", "flag"] = "flag" if action.nargs == 0 else "value"
        return cls(
            name=action.dest, flags=tuple(action.option_strings), help=action.help or "",
            type=action.type if callable(action.type) else str, default=action.default,
            choices=tuple(action.choices) if action.choices is not None else None, kind=kind,
            target="if-accepted",
        )


def _toml(value: object) -> str:
    """A value as the TOML file spelt it, for errors."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return repr(value)


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper().replace("-", "_")
