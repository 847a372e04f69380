"""A little language of reads on a binary stream, applied alike to ``wsgi.input`` (by the app in
``input_app.py``) and to ``io.BytesIO`` (by the tests, as the reference a buffered file defines).

An op is a short string: ``r7`` read(7), ``r`` read(), ``rN`` read(None), ``r-1`` read(-1);
``l7`` readline(7), ``l`` readline(), ``lN`` readline(None); ``n`` next() (``[]`` at the end);
``I`` iterate the rest; ``s7`` readlines(7), ``s`` readlines(). Each op's result is the list of
byte strings it returned.
"""

from __future__ import annotations

from typing import Any


def _arg(text: str) -> int | None:
    return None if text == "N" else int(text)


def apply_op(stream: Any, op: str) -> list[bytes]:
    kind, arg = op[0], op[1:]
    if kind == "r":
        return [stream.read(_arg(arg))] if arg else [stream.read()]
    if kind == "l":
        return [stream.readline(_arg(arg))] if arg else [stream.readline()]
    if kind == "n":
        try:
            return [next(iter(stream))]
        except StopIteration:
            return []
    if kind == "I":
        return list(stream)
    if kind == "s":
        return stream.readlines(int(arg)) if arg else stream.readlines()
    raise ValueError(f"unknown op {op!r}")


def apply_ops(stream: Any, ops: list[str]) -> list[list[bytes]]:
    return [apply_op(stream, op) for op in ops]
