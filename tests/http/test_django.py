"""A real Django project (``django_project``) served by ``make_server`` on every strategy:
``request.body`` at 1 KB, 1 MB and 10 MB, a 5 MB multipart upload through ``request.FILES``, a
``StreamingHttpResponse``, and curl's ``Expect: 100-continue`` uploads. Every view answers with
the sha256 of what it received, and the client compares it with what it sent."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import subprocess
import uuid

import pytest
from client import STRATEGIES, ServerProcess
from django_project.content import stream_chunks

pytest.importorskip("django")
pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module", params=STRATEGIES)
def server(request):
    # The server process imports django_project.wsgi, which sets DJANGO_SETTINGS_MODULE there.
    proc = ServerProcess(request.param, {}, app="django_project.wsgi:application")
    try:
        yield proc
    finally:
        log = proc.stop()
    assert "Traceback" not in log, log


def sha256(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def json_document(size: int) -> tuple[bytes, str]:
    data = os.urandom(size // 2).hex()
    return json.dumps({"data": data}).encode(), data


def post(
    port: int, path: str, body: bytes, content_type: str
) -> tuple[http.client.HTTPResponse, bytes, http.client.HTTPConnection]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", path, body=body, headers={"Content-Type": content_type})
    response = conn.getresponse()
    return response, response.read(), conn


@pytest.mark.parametrize("size", [1024, 1024 * 1024, 10 * 1024 * 1024], ids=["1KB", "1MB", "10MB"])
def test_request_body(server, size):
    body, data = json_document(size)
    response, answer, conn = post(server.port, "/json", body, "application/json")
    try:
        assert response.status == 200, answer[:500]
        assert json.loads(answer) == {"size": len(body), "sha256": sha256(body), "data_sha256": sha256(data),
                                      "strategy": server.strategy}
        # The connection is still in step: the next request on it is served.
        body, data = json_document(100)
        conn.request("POST", "/json", body=body, headers={"Content-Type": "application/json"})
        again = conn.getresponse()
        assert again.status == 200 and json.loads(again.read())["sha256"] == sha256(body)
    finally:
        conn.close()


def multipart(name: str, filename: str, content: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\n{name}\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def test_multipart_upload(server):
    content = os.urandom(5 * 1024 * 1024)
    body, content_type = multipart("report", "data.bin", content)
    response, answer, conn = post(server.port, "/upload", body, content_type)
    conn.close()
    assert response.status == 200, answer[:500]
    assert json.loads(answer) == {"name": "report", "filename": "data.bin", "size": len(content),
                                  "sha256": sha256(content)}


def test_streaming_response(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", "/stream?count=40&size=65536")
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("Transfer-Encoding") == "chunked"
        assert sha256(response.read()) == sha256(b"".join(stream_chunks(40, 65536)))
    finally:
        conn.close()


@pytest.mark.skipif(not os.path.exists("/usr/bin/curl"), reason="needs /usr/bin/curl")
def test_curl_100_continue_uploads(server, tmp_path):
    url = f"http://127.0.0.1:{server.port}"
    body, data = json_document(5 * 1024 * 1024)
    document = tmp_path / "document.json"
    document.write_bytes(body)
    content = os.urandom(5 * 1024 * 1024)
    upload = tmp_path / "upload.bin"
    upload.write_bytes(content)

    def curl(*args: str) -> dict:
        command = ["/usr/bin/curl", "-sS", "--fail", "--max-time", "60", "-H", "Expect: 100-continue", *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
        assert (done.returncode, done.stderr) == (0, ""), done
        return json.loads(done.stdout)

    sent = ["-H", "Content-Type: application/json", "--data-binary", f"@{document}"]
    assert curl(*sent, f"{url}/json") == {"size": len(body), "sha256": sha256(body), "data_sha256": sha256(data),
                                          "strategy": server.strategy}
    assert curl("-F", "name=report", "-F", f"file=@{upload}", f"{url}/upload") == {
        "name": "report", "filename": "upload.bin", "size": len(content), "sha256": sha256(content)}
    # A view that never reads the body: curl gets the answer, and no broken pipe.
    assert curl(*sent, f"{url}/ignore") == {"ignored": True}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_fresh_project_admin_login_page(strategy):
    """The page benchmarks/bench_django.py measures: the admin login of a fresh startproject
    (``fresh_settings``: the admin, sessions, CSRF and messages middleware, templates), served
    twice on one connection, the second time by a process that has done its first request."""
    proc = ServerProcess(strategy, {}, app="django_project.fresh_wsgi:application")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=30)
        try:
            for _ in range(2):
                conn.request("GET", "/admin/login/")
                response = conn.getresponse()
                page = response.read()
                assert response.status == 200, page[:500]
                assert b'name="csrfmiddlewaretoken"' in page and b'name="password"' in page
                assert "csrftoken=" in (response.getheader("Set-Cookie") or "")
        finally:
            conn.close()
    finally:
        log = proc.stop()
    assert "Traceback" not in log, log
