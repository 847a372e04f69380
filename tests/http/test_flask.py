"""A real Flask application end to end on every strategy: JSON, multipart upload, streaming."""

from __future__ import annotations

import json
import os
import uuid

import pytest
from client import STRATEGIES, Client, server_process

pytest.importorskip("flask")
pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module", params=STRATEGIES)
def server(request):
    with server_process(request.param, {}, app="flask_app:app") as proc:
        yield proc


def test_json(server):
    with Client(server.port) as c:
        body = json.dumps({"a": [1, 2, 3], "b": "é"}).encode()
        r = c.request("POST", "/json", {"Content-Type": "application/json"}, body=body)
        assert r.status == 200
        assert json.loads(r.body) == {"received": {"a": [1, 2, 3], "b": "é"}, "strategy": server.strategy}
        assert c.request("GET", "/missing").status == 404  # same connection, kept alive


def test_form_upload(server):
    content = os.urandom(200_000)
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nreport\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"data.bin\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + content + f"\r\n--{boundary}--\r\n".encode()
    with Client(server.port) as c:
        r = c.request("POST", "/upload", {"Content-Type": f"multipart/form-data; boundary={boundary}"}, body=body)
    assert r.status == 200, r.body
    assert json.loads(r.body) == {"name": "report", "filename": "data.bin", "size": len(content),
                                  "checksum": sum(content) % 65521}


def test_streaming(server):
    with Client(server.port) as c:
        r = c.request("GET", "/stream")
        assert r.status == 200 and r.headers["Transfer-Encoding"] == "chunked"
        assert r.body == b"".join(b"line %d\n" % i for i in range(5))
