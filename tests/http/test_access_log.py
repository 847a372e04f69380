"""The access log and the proxy settings through the real ``gearshift`` command, in a subprocess:
on by default, ``--no-access-log``, every atom of ``--access-log-format``, ``json``, escaping
(a client cannot forge a field or a line), refused requests, and ``--forwarded-allow-ips`` /
``--root-path`` as a user would give them."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
from pathlib import Path

import pytest
from cli_helpers import GearshiftProcess, clean_env, run_gearshift
from hypothesis import given
from hypothesis import strategies as st

pytestmark = pytest.mark.timeout(60)

HERE = Path(__file__).resolve().parent
UA = 'curl/8 "quoted" \\ back'


def exchange(address: tuple[str, int], raw: bytes) -> bytes:
    """Send ``raw`` on a new connection; what the server answered, up to its close."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(raw)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def get(address: tuple[str, int], target: str = "/json", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: example.org", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return exchange(address, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))


def access_lines(server: GearshiftProcess) -> list[str]:
    """stderr lines that are not the gearshift logger's own (those have a level)."""
    return [line for line in server.stderr.splitlines() if not re.search(r"\] (DEBUG|INFO|WARNING|ERROR): ", line)]


def test_on_by_default_with_user_agent_and_duration() -> None:
    with GearshiftProcess(["-b", "127.0.0.1:0", "-s", "sync"]) as server:
        get(server.address(), "/json?x=1", {"User-Agent": "probe/1.0", "Referer": "https://example.org/a"})
        match = server.wait_for(r'"GET /json\?x=1 HTTP/1\.1" 200 \d+ ')[0]
        assert server.stop() == 0
    line = match.string.rstrip("\n")
    assert re.fullmatch(r'127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "GET /json\?x=1 HTTP/1\.1" '
                        r'200 \d+ "https://example\.org/a" "probe/1\.0" \d+\.\d{6}s', line), line


@pytest.mark.parametrize("how", [{"args": ["--no-access-log"]}, {"env": {"GEARSHIFT_NO_ACCESS_LOG": "1"}}])
def test_no_access_log(how: dict[str, object]) -> None:
    args = ["-b", "127.0.0.1:0", "-s", "sync", *how.get("args", [])]  # type: ignore[misc]
    with GearshiftProcess(args, env=clean_env(**how.get("env", {}))) as server:  # type: ignore[arg-type]
        assert get(server.address()).startswith(b"HTTP/1.1 200")
        assert server.stop() == 0
    assert "GET /json" not in server.stderr


def test_every_atom() -> None:
    atoms = [*"hlutrmUqHsBbfaTMDLp", "{x-test}i", "{content-type}o", "{REQUEST_METHOD}e", "{missing}i"]
    fmt = "|".join(f"%({atom})s" for atom in atoms) + "|100%%"
    auth = "Basic " + base64.b64encode(b"alice:secret").decode()
    with GearshiftProcess(["-b", "127.0.0.1:0", "-s", "thread", "--access-log-format", fmt]) as server:
        get(server.address(), "/json?a=b", {"User-Agent": "ua", "X-Test": "t1", "Authorization": auth})
        line = server.wait_for(r"\|100%$")[0].string.rstrip("\n")
        assert server.stop() == 0
    fields = dict(zip(atoms, line.split("|"), strict=False))
    assert fields["h"] == "127.0.0.1" and fields["l"] == "-" and fields["u"] == "alice"
    assert re.fullmatch(r"\[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\]", fields["t"])
    assert fields["r"] == "GET /json?a=b HTTP/1.1"
    assert (fields["m"], fields["U"], fields["q"]) == ("GET", "/json", "a=b")
    assert (fields["H"], fields["s"]) == ("HTTP/1.1", "200")
    assert fields["B"] == fields["b"] and int(fields["B"]) > 0
    assert (fields["f"], fields["a"], fields["{x-test}i"], fields["{missing}i"]) == ("-", "ua", "t1", "-")
    assert fields["{content-type}o"].startswith("application/json") and fields["{REQUEST_METHOD}e"] == "GET"
    assert fields["T"] == "0" and fields["M"].isdigit() and fields["D"].isdigit()
    assert re.fullmatch(r"\d+\.\d{6}", fields["L"]) and int(fields["D"]) >= int(fields["M"]) * 1000
    assert re.fullmatch(r"<\d+>", fields["p"])


def test_json_escapes_what_the_client_sent() -> None:
    with GearshiftProcess(["-b", "127.0.0.1:0", "-s", "sync", "--access-log-format", "json"]) as server:
        address = server.address()
        # A quote, a backslash and obs-text in a header; a newline and a quote in the path (%0A, %22).
        get(address, "/json%0A%22forged%22:1?q=%22", {"User-Agent": UA + ', "status": 999', "X-Latin": "\xe9"})
        server.wait_for(r'"status": 404')  # the demo app has no such page
        assert server.stop() == 0
    [line] = [line for line in access_lines(server) if line.startswith("{")]
    record = json.loads(line)
    assert record["path"] == '/json\n"forged":1' and record["query"] == "q=%22"
    assert record["user_agent"] == UA + ', "status": 999' and record["status"] == 404
    assert record["remote_addr"] == "127.0.0.1" and record["method"] == "GET" and record["bytes"] > 0
    assert set(record) == {"time", "remote_addr", "request", "method", "path", "query", "protocol", "status",
                           "bytes", "duration", "referer", "user_agent", "user"}


def test_the_text_format_escapes_quotes_and_controls() -> None:
    fmt = '"%(U)s" "%(a)s" %(s)s'
    with GearshiftProcess(["-b", "127.0.0.1:0", "-s", "sync", "--access-log-format", fmt]) as server:
        get(server.address(), "/a%0Ab", {"User-Agent": UA})
        server.wait_for(r" 404$")
        assert server.stop() == 0
    lines = [line for line in access_lines(server) if line.endswith(" 404")]
    assert lines == ['"/a\\x0ab" "curl/8 \\"quoted\\" \\\\ back" 404']


def test_a_refused_request_is_logged_with_what_was_received() -> None:
    with GearshiftProcess(["-b", "127.0.0.1:0", "-s", "threadpool"]) as server:
        address = server.address()
        assert exchange(address, b"GET /x\x01y HTTP/1.1\r\nHost: t\r\n\r\n").startswith(b"HTTP/1.1 400")
        assert exchange(address, b"\x16\x03\x01\x02\x00\x01\x00").startswith(b"HTTP/1.1 400")  # a TLS hello
        server.wait_for(r'"GET /x\\x01y HTTP/1\.1" 400 ')
        server.wait_for(r'"\\x16\\x03\\x01\\x02\\x00\\x01\\x00" 400 ')
        assert server.stop() == 0


def test_a_bad_format_is_one_line_naming_the_atom() -> None:
    result = run_gearshift(["--access-log-format", "%(h)s %(zz)s"])
    assert result.returncode == 2
    assert result.stderr.startswith("gearshift: error: --access-log-format: unknown atom %(zz)s; the atoms are ")
    assert len(result.stderr.splitlines()) == 1


def test_a_bad_allow_list_is_one_line_naming_the_entry() -> None:
    result = run_gearshift(["--forwarded-allow-ips", "127.0.0.1,10.0.0.1/8"])
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("gearshift: error: --forwarded-allow-ips: '10.0.0.1/8' is not an IP address")
    result = run_gearshift([], env=clean_env(GEARSHIFT_FORWARDED_ALLOW_IPS="nginx"))
    assert result.returncode == 2
    assert result.stderr.startswith("gearshift: error: GEARSHIFT_FORWARDED_ALLOW_IPS: 'nginx' is not an IP address")


def test_proxy_headers_and_root_path_through_the_command() -> None:
    pytest.importorskip("flask")
    env = clean_env(PYTHONPATH=str(HERE))
    proxied = {"X-Forwarded-For": "198.51.100.1", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "shop.example"}
    with GearshiftProcess(["flask_app:app", "-b", "127.0.0.1:0", "-s", "sync", "--root-path", "/shop"],
                          env=env, cwd=HERE) as server:
        address = server.address()
        body = get(address, "/shop/where", proxied).partition(b"\r\n\r\n")[2]
        assert json.loads(body) == {"path": "/shop/where", "external": "https://shop.example/shop/where"}
        server.wait_for(r'^198\.51\.100\.1 - - .*"GET /shop/where HTTP/1\.1" 200')
        assert server.stop() == 0
    # Not trusted: the peer's own address and scheme.
    with GearshiftProcess(["flask_app:app", "-b", "127.0.0.1:0", "-s", "sync", "--forwarded-allow-ips", "10.0.0.0/8"],
                          env=env, cwd=HERE) as server:
        body = get(server.address(), "/where", proxied).partition(b"\r\n\r\n")[2]
        assert json.loads(body) == {"path": "/where", "external": "http://example.org/where"}
        server.wait_for(r'^127\.0\.0\.1 - - .*"GET /where HTTP/1\.1" 200')
        assert server.stop() == 0


def test_the_environment_variables() -> None:
    env = clean_env(GEARSHIFT_ACCESS_LOG_FORMAT="%(h)s %(s)s via-env", GEARSHIFT_FORWARDED_ALLOW_IPS="*")
    with GearshiftProcess(["-b", "127.0.0.1:0", "-s", "sync"], env=env) as server:
        get(server.address(), headers={"X-Forwarded-For": "192.0.2.9"})
        server.wait_for(r"^192\.0\.2\.9 200 via-env$")
        assert server.stop() == 0
    assert os.environ.get("GEARSHIFT_ACCESS_LOG_FORMAT") is None


# -- the formatter, in-process ---------------------------------------------------------------------


def test_format_errors_name_the_problem() -> None:
    from gearshift.http.accesslog import compile_format

    for fmt, message in [("%(zz)s", r"unknown atom %\(zz\)s"), ("100% %(h)s", "a lone '%' at offset 3"),
                         ("%({}i)s", "names no header")]:
        with pytest.raises(ValueError, match=message):
            compile_format(fmt)


@given(st.text(max_size=30))
def test_an_escaped_value_has_no_quote_control_or_non_ascii_left_bare(value: str) -> None:
    from gearshift.http.accesslog import escape

    escaped = escape(value)
    assert escaped.isascii() and escaped.isprintable()
    assert '"' not in escaped.replace('\\"', "") and "\n" not in escaped
    if "\\" not in escaped:  # nothing needed escaping: the value is logged as it is
        assert escaped == value
