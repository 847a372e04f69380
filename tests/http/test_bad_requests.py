"""The team's request corpus (``corpus.py``) over real sockets, on every strategy.

Every malformed request gets its status and a closed connection, the server keeps serving, and
it logs no traceback for any of it. Every tricky-but-valid request reaches the application as
the client meant it.
"""

from __future__ import annotations

import json
from urllib.parse import unquote_to_bytes

import pytest
from client import STRATEGIES, Client, raw_exchange, server_process, status_of
from corpus import MALFORMED, VALID, VALID_PIPELINES

from gearshift.http.errors import HTTPError
from gearshift.http.parser import RequestParser

pytestmark = pytest.mark.timeout(60)

DEFAULT_CASES = [case for case in MALFORMED if case.limits is None]
LIMIT_CASES = [case for case in MALFORMED if case.limits is not None]


@pytest.fixture(scope="module", params=STRATEGIES)
def server(request):
    with server_process(request.param) as proc:
        yield proc


def needs_eof(raw: bytes) -> bool:
    """Cases the parser refuses only once the client closes (a body cut short) are sent with a
    half-close; the others must be refused without the server waiting for anything more."""
    try:
        RequestParser().feed(raw)
    except HTTPError:
        return False
    return True


def assert_still_serving(port):
    with Client(port) as c:
        assert c.request("GET", "/length?n=2").body == b"xx"


def test_every_malformed_request_gets_its_status(server):
    wrong = []
    for case in DEFAULT_CASES:
        raw = raw_exchange(server.port, case.raw, half_close=needs_eof(case.raw))
        if not raw.startswith(b"HTTP/1.1 ") or status_of(raw) != case.status:
            wrong.append((case.name, case.status, raw[:80]))
        elif b"Connection: close" not in raw.split(b"\r\n\r\n")[0]:
            wrong.append((case.name, "no Connection: close", raw[:80]))
    assert not wrong, wrong
    assert_still_serving(server.port)


@pytest.mark.parametrize("case", LIMIT_CASES, ids=lambda case: case.name)
def test_malformed_with_limits(case):
    with server_process("sync", case.limits) as proc:
        assert status_of(raw_exchange(proc.port, case.raw)) == case.status
        assert_still_serving(proc.port)


def test_tricky_valid_requests_reach_the_app(server):
    wrong = []
    for case in VALID:
        raw = case.raw.replace(b"Connection: keep-alive", b"X-Was: keep-alive")
        with Client(server.port) as c:
            c.send(raw)
            r = c.response(case.method)
        if case.method == "HEAD" or r.status != 404:
            wrong.append((case.name, r.status, r.body[:80]))
            continue
        seen = json.loads(r.body)
        expected_path = "" if case.path == b"*" else unquote_to_bytes(case.path).decode("latin-1")
        if (seen["method"], seen["path"], seen["query"], seen["body"]) != (
            case.method, expected_path, case.query.decode("latin-1"), case.body.decode("latin-1")
        ):
            wrong.append((case.name, seen))
    assert not wrong, wrong


def test_valid_pipelines(server):
    for pipeline in VALID_PIPELINES:
        with Client(server.port) as c:
            c.send(pipeline.raw)
            statuses = [c.response().status for _ in range(pipeline.count)]
        assert all(status < 500 for status in statuses), (pipeline.name, statuses)


def test_no_traceback_logged_for_client_errors(server):
    assert_still_serving(server.port)
    assert "Traceback" not in server.log()
