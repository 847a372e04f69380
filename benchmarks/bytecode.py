"""Byte-compile the gearshift package the benchmark servers will import.

Why: every peer in a benchmark (the stdlib, waitress, werkzeug, ...) is byte-compiled, because
pip compiles what it installs. gearshift is usually installed editable (``pip install -e .``), and
on a machine with ``PYTHONDONTWRITEBYTECODE=1`` (this one has it) each of its modules would then
be compiled from source at every start. The compiler's garbage stays in the server's heap: about
1 MB here, which the ``fork`` strategy copies on every request, so the comparison would measure
the compiler instead of the server.
"""

from __future__ import annotations

import subprocess
import sys

_COMPILE = (
    "import compileall, os, sys, gearshift; "
    "sys.exit(0 if compileall.compile_dir(os.path.dirname(gearshift.__file__), quiet=1) else 1)"
)


def compile_gearshift(python: str = sys.executable, env: dict[str, str] | None = None) -> None:
    """Write ``__pycache__`` for the gearshift that ``python`` imports with ``env`` (a no-op when
    up to date)."""
    subprocess.run([python, "-c", _COMPILE], check=True, env=env)
