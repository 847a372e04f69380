"""The bytes the streaming view sends; plain Python, so the tests compute them without Django."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator


def stream_chunks(count: int, size: int) -> Iterator[bytes]:
    for i in range(count):
        yield hashlib.sha256(b"%d" % i).digest() * (size // 32)
