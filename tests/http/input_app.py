"""The app of the ``wsgi.input`` tests: applies the reads named in ``X-Ops`` (see ``input_ops``)
to ``wsgi.input`` and answers with what each returned, then the rest of the body."""

from __future__ import annotations

import hashlib
import json

from input_ops import apply_ops


def app(environ, start_response):
    path = environ["PATH_INFO"]
    stream = environ["wsgi.input"]
    if path == "/ops":
        ops = environ.get("HTTP_X_OPS", "").split()
        results = apply_ops(stream, [*ops, "r"])
        data = json.dumps([[piece.hex() for piece in result] for result in results]).encode()
    elif path == "/once":  # the one read(CONTENT_LENGTH) that frameworks do (X-Size if chunked)
        body = stream.read(int(environ.get("CONTENT_LENGTH") or environ["HTTP_X_SIZE"]))
        data = json.dumps({"size": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                           "rest": len(stream.read())}).encode()
    elif path == "/partial":  # reads a part of the body and answers
        body = stream.read(int(environ.get("QUERY_STRING") or 0))
        data = b"read %d" % len(body)
    else:  # never touches the body
        data = b"after"
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(data)))])
    return [data]
