"""Forwarding headers (X-Forwarded-*, Forwarded) and root_path, over real sockets.

The untrusted peer is a real one: Linux routes all of 127.0.0.0/8 to the loopback interface,
so a client bound to 127.0.0.2 reaches a server on 127.0.0.1 as a peer outside the default
allow list (127.0.0.1, ::1, unix). The parsers of the allow list and of ``Forwarded`` are
checked with hypothesis.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from wsgiref.validate import validator

import pytest
from client import Response, _FileSocket, serving
from hypothesis import example, given
from hypothesis import strategies as st

import gearshift
from gearshift.http.proxy import AllowList, parse_allow_list, parse_forwarded

pytestmark = pytest.mark.timeout(30)

KEYS = ("REMOTE_ADDR", "REMOTE_PORT", "wsgi.url_scheme", "HTTP_HOST", "SERVER_NAME", "SERVER_PORT",
        "SCRIPT_NAME", "PATH_INFO")


def environ_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = json.dumps({key: environ.get(key) for key in KEYS}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


APP = validator(environ_app)  # every rewritten environ must still be a valid PEP 3333 one


@contextmanager
def server(host: str = "127.0.0.1", **options: Any) -> Iterator[Any]:
    with gearshift.make_server(host, 0, APP, strategy="sync", **options) as srv, serving(srv):
        yield srv


def ask(srv: Any, headers: dict[str, str] | None = None, target: str = "/x", source: str = "127.0.0.1",
        host: str = "example.org") -> dict[str, Any]:
    """One request from ``source`` (or over the server's Unix socket); the environ it saw."""
    address = srv.server_address
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(10)
        sock.connect(address)
    else:
        sock = socket.create_connection(address, timeout=10, source_address=(source, 0))
    with sock, sock.makefile("rb") as file:
        lines = [f"GET {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        import http.client

        r = http.client.HTTPResponse(_FileSocket(file), method="GET")  # type: ignore[arg-type]
        r.begin()
        response = Response(r.status, r.headers, r.read(), r.version)
    assert response.status == 200, response
    result: dict[str, Any] = json.loads(response.body)
    return result


SPOOF = {
    "X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Port": "8443", "X-Forwarded-Prefix": "/evil",
}


def test_a_trusted_proxy_sets_the_client_scheme_host_port_and_prefix() -> None:
    with server() as srv:
        env = ask(srv, {**SPOOF, "X-Forwarded-Port": "443", "X-Forwarded-Host": "www.example.com"})
    assert env["REMOTE_ADDR"] == "203.0.113.7" and env["REMOTE_PORT"] == ""
    assert env["wsgi.url_scheme"] == "https"
    assert (env["HTTP_HOST"], env["SERVER_NAME"], env["SERVER_PORT"]) == ("www.example.com", "www.example.com", "443")
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/evil", "/x")


def test_an_untrusted_peer_changes_nothing() -> None:
    with server() as srv:
        plain = ask(srv, source="127.0.0.2")
        spoofed = ask(srv, SPOOF, source="127.0.0.2")
        forwarded = ask(srv, {"Forwarded": 'for=203.0.113.7;proto=https;host="evil.example"'}, source="127.0.0.2")
    assert plain["REMOTE_ADDR"] == "127.0.0.2"
    for env in (spoofed, forwarded):
        assert {k: v for k, v in env.items() if k != "REMOTE_PORT"} == \
               {k: v for k, v in plain.items() if k != "REMOTE_PORT"}
        assert env["REMOTE_PORT"].isdigit()


def test_an_empty_allow_list_trusts_nobody_not_even_loopback() -> None:
    with server(forwarded_allow_ips="") as srv:
        env = ask(srv, SPOOF)
    assert env["REMOTE_ADDR"] == "127.0.0.1" and env["wsgi.url_scheme"] == "http" and env["SCRIPT_NAME"] == ""


def test_a_cidr_range_and_star() -> None:
    with server(forwarded_allow_ips="127.0.0.0/30") as srv:
        assert ask(srv, SPOOF, source="127.0.0.2")["REMOTE_ADDR"] == "203.0.113.7"
        assert ask(srv, SPOOF, source="127.0.0.5")["REMOTE_ADDR"] == "127.0.0.5"
    with server(forwarded_allow_ips=["*"]) as srv:
        assert ask(srv, SPOOF, source="127.0.0.9")["REMOTE_ADDR"] == "203.0.113.7"


def test_a_chain_takes_the_first_untrusted_hop_from_the_right() -> None:
    # client 198.51.100.1 -> CDN edge 10.1.2.3 -> nginx on 127.0.0.1; the client claimed 6.6.6.6.
    chain = "6.6.6.6, 198.51.100.1, 10.1.2.3"
    with server(forwarded_allow_ips="127.0.0.1, 10.0.0.0/8") as srv:
        assert ask(srv, {"X-Forwarded-For": chain})["REMOTE_ADDR"] == "198.51.100.1"
        # Every hop trusted: the leftmost is the client.
        assert ask(srv, {"X-Forwarded-For": "10.9.9.9, 10.1.2.3"})["REMOTE_ADDR"] == "10.9.9.9"
        # Repeated header lines are one list, in order.
        assert ask(srv, {"X-Forwarded-For": "6.6.6.6, 198.51.100.1",
                         "X-FORWARDED-FOR": "10.1.2.3"})["REMOTE_ADDR"] == "198.51.100.1"
    with server() as srv:  # the CDN not trusted: its address is the client as far as we know
        assert ask(srv, {"X-Forwarded-For": chain})["REMOTE_ADDR"] == "10.1.2.3"


def test_forwarded_rfc7239_takes_the_clients_hop() -> None:
    header = 'for=6.6.6.6;proto=http, for="[2001:db8::17]:4711";proto=https;host=shop.example, for=10.0.0.2'
    with server(forwarded_allow_ips="127.0.0.1,10.0.0.0/8") as srv:
        env = ask(srv, {"Forwarded": header})
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("2001:db8::17", "4711")
    assert (env["wsgi.url_scheme"], env["HTTP_HOST"], env["SERVER_PORT"]) == ("https", "shop.example", "443")


def test_x_forwarded_wins_over_forwarded() -> None:
    with server() as srv:
        env = ask(srv, {"Forwarded": "for=6.6.6.6;proto=https", "X-Forwarded-For": "198.51.100.1"})
    assert env["REMOTE_ADDR"] == "198.51.100.1" and env["wsgi.url_scheme"] == "http"


def test_the_rightmost_proto_and_host_of_a_list_are_taken() -> None:
    with server() as srv:
        env = ask(srv, {"X-Forwarded-Proto": "http, https", "X-Forwarded-Host": "evil.example, good.example:8080"})
    assert env["wsgi.url_scheme"] == "https"
    assert (env["HTTP_HOST"], env["SERVER_NAME"], env["SERVER_PORT"]) == ("good.example:8080", "good.example", "8080")


@pytest.mark.parametrize("headers", [
    {"X-Forwarded-For": "not-an-address"},
    {"X-Forwarded-For": "198.51.100.1, garbage"},
    {"X-Forwarded-Proto": "gopher"},
    {"X-Forwarded-Host": "bad host/with/slashes"},
    {"X-Forwarded-Port": "99999"},
    {"X-Forwarded-Port": "https"},
    {"X-Forwarded-Prefix": "no-leading-slash"},
    {"Forwarded": "for=198.51.100.1;proto"},
    {"Forwarded": 'for="unterminated'},
    {"Forwarded": "for=198.51.100.1;for=6.6.6.6"},
    {"Forwarded": "for=unknown"},
])
def test_bad_values_are_ignored(headers: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="gearshift")
    with server() as srv:
        plain = ask(srv)
        env = ask(srv, headers)
    assert {k: v for k, v in env.items() if k != "REMOTE_PORT"} == \
           {k: v for k, v in plain.items() if k != "REMOTE_PORT"}
    assert any("ignoring" in r.getMessage() or "no IP address" in r.getMessage() for r in caplog.records)


def test_a_forwarded_port_goes_into_the_host() -> None:
    with server() as srv:
        env = ask(srv, {"X-Forwarded-Proto": "https", "X-Forwarded-Port": "8443"}, host="example.org")
        default = ask(srv, {"X-Forwarded-Proto": "https"}, host="example.org")
    assert (env["HTTP_HOST"], env["SERVER_PORT"]) == ("example.org:8443", "8443")
    assert (default["HTTP_HOST"], default["SERVER_PORT"]) == ("example.org", "443")


def test_unix_socket_peers_are_trusted_by_default_and_can_be_excluded() -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = str(Path(directory) / "s.sock")
        with server("unix:" + path) as srv:
            assert ask(srv, SPOOF)["REMOTE_ADDR"] == "203.0.113.7"
        with server("unix:" + path, forwarded_allow_ips="127.0.0.1") as srv:
            assert ask(srv, SPOOF)["REMOTE_ADDR"] == ""


def test_an_ipv4_mapped_peer_matches_its_ipv4_entry() -> None:
    allow = AllowList("127.0.0.1")
    assert allow.trusts_peer(("::ffff:127.0.0.1", 1, 0, 0)) and not allow.trusts_peer(("::1", 1, 0, 0))
    assert not allow.trusts_peer("") and AllowList("unix").trusts_peer("")


@pytest.mark.parametrize(("value", "named"), [
    ("127.0.0.1, 10.0.0.1/8", "'10.0.0.1/8'"), ("localhost", "'localhost'"), ("::1/200", "'::1/200'"),
])
def test_a_bad_allow_list_is_refused_naming_the_entry(value: str, named: str) -> None:
    with pytest.raises(ValueError, match=f"forwarded_allow_ips: {named} is not an IP address") as info:
        gearshift.make_server("127.0.0.1", 0, APP, forwarded_allow_ips=value)
    if "10.0.0.1/8" in value:
        assert "did you mean 10.0.0.0/8?" in str(info.value)


# -- root_path ---------------------------------------------------------------------------------


def test_root_path_moves_its_prefix_from_path_info_to_script_name() -> None:
    with server(root_path="/app/") as srv:
        assert [ask(srv, target=t)["SCRIPT_NAME"] for t in ("/app/x", "/app", "/apple", "/x")] == ["/app"] * 4
        assert [ask(srv, target=t)["PATH_INFO"] for t in ("/app/x", "/app", "/apple", "/x")] == \
               ["/x", "", "/apple", "/x"]
        # The proxy removed its own prefix and said so: it goes first.
        env = ask(srv, {"X-Forwarded-Prefix": "/public/"}, target="/app/x")
        assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/public/app", "/x")


def test_a_bad_root_path_is_refused() -> None:
    with pytest.raises(ValueError, match="root_path must be empty or a path starting with /"):
        gearshift.make_server("127.0.0.1", 0, APP, root_path="app")


def test_flask_url_for_sees_the_prefixes() -> None:
    pytest.importorskip("flask")
    from flask_app import app as flask_app

    with gearshift.make_server("127.0.0.1", 0, flask_app, strategy="sync", root_path="/app") as srv, serving(srv):
        sock = socket.create_connection(srv.server_address, timeout=10)
        with sock, sock.makefile("rb") as file:
            sock.sendall(b"GET /app/where HTTP/1.1\r\nHost: example.org\r\nX-Forwarded-Proto: https\r\n"
                         b"X-Forwarded-Prefix: /public\r\nConnection: close\r\n\r\n")
            body = file.read().partition(b"\r\n\r\n")[2]
    assert json.loads(body) == {"path": "/public/app/where", "external": "https://example.org/public/app/where"}


# -- the parsers, with hypothesis ----------------------------------------------------------------


@given(st.lists(st.tuples(st.ip_addresses(), st.integers(0, 128)), max_size=5), st.ip_addresses())
@example([(ipaddress.IPv4Address("0.0.0.0"), 0)], ipaddress.IPv6Address("::ffff:0:0"))  # mapped: IPv4
def test_the_allow_list_trusts_exactly_its_networks(entries: list[tuple[Any, int]], probe: Any) -> None:
    networks = [ipaddress.ip_network(f"{address}/{min(bits, address.max_prefixlen)}", strict=False)
                for address, bits in entries]
    allow = AllowList(", ".join(str(n) for n in networks))
    # A dual-stack listener sees an IPv4 client as ::ffff:a.b.c.d: it is judged as that IPv4 address.
    mapped = getattr(probe, "ipv4_mapped", None)
    address = probe if mapped is None else mapped
    expected = any(address.version == n.version and address in n for n in networks)
    assert allow.trusts(str(probe)) is expected
    assert set(parse_allow_list([str(n) for n in networks])) == {str(n) for n in networks}


@given(st.text(max_size=40))
def test_the_allow_list_parser_accepts_or_names_the_bad_entry(text: str) -> None:
    try:
        parse_allow_list(text)
    except ValueError as exc:
        assert str(exc).startswith("forwarded_allow_ips: ")


_TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
token = st.text(_TCHAR, min_size=1, max_size=8)
value = st.one_of(token, st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=12))
element = st.dictionaries(token.map(str.lower), value, min_size=1, max_size=4)


def _serialise(elements: list[dict[str, str]]) -> str:
    def quote(v: str) -> str:
        if v and all(c in _TCHAR for c in v):
            return v
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return ", ".join(";".join(f"{k}={quote(v)}" for k, v in e.items()) for e in elements)


@given(st.lists(element, min_size=1, max_size=4))
def test_forwarded_round_trips(elements: list[dict[str, str]]) -> None:
    assert parse_forwarded(_serialise(elements)) == elements


@given(st.text(max_size=60))
def test_forwarded_parses_or_raises_value_error(text: str) -> None:
    try:
        parsed = parse_forwarded(text)
    except ValueError:
        return
    assert all(isinstance(e, dict) and e for e in parsed)
