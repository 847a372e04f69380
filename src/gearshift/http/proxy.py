"""Behind a reverse proxy: which peers to believe, and what their forwarding headers say.

A proxy in front of gearshift (nginx, HAProxy, a load balancer) is the peer of every
connection, so ``REMOTE_ADDR`` is the proxy's address and ``wsgi.url_scheme`` is ``http`` even
for an HTTPS site. The proxy says what it received in headers: ``X-Forwarded-For``, ``-Proto``,
``-Host``, ``-Port``, ``-Prefix``, or RFC 7239 ``Forwarded``. Anyone can send those headers, so
they are believed only from a peer in ``forwarded_allow_ips`` (by default the loopback
addresses and Unix-socket peers, as gunicorn and uvicorn do): from any other peer they are
ordinary headers that change nothing.

Decisions (and why):

* **The client of a chain** of proxies is found by walking ``X-Forwarded-For`` (or the
  ``for=`` of ``Forwarded``) from the right, skipping every address that is itself trusted,
  and taking the first one that is not (uvicorn's rule). werkzeug's ``ProxyFix(x_for=N)``
  takes the N-th entry from the right instead: that trusts a count, so a request that reaches
  the server through fewer proxies than configured (an internal client, a second route) lets
  its sender choose its address. Walking by address needs every proxy of the chain in the
  allow list, and is right whatever route a request took. If every entry is trusted, the
  leftmost is the client.
* **Proto, host, port and prefix** from ``X-Forwarded-*`` take the rightmost value when a
  proxy appended to a list: the nearest proxy, which is the trusted one, wrote it; a value
  further left may come from the client. In ``Forwarded`` they come from the element of the
  client's hop (the proxy that received the client's request recorded what it saw).
* **Both kinds present:** ``X-Forwarded-*`` wins and ``Forwarded`` is ignored, since the
  proxies in common use (nginx, HAProxy, cloud load balancers) set ``X-Forwarded-*`` and pass a
  client's ``Forwarded`` through untouched: preferring it would let any client spoof through
  them. A proxy that sets ``Forwarded`` must be made to drop a client's ``X-Forwarded-*``.
* **Bad values are ignored** (with a debug log line), field by field: an address that is no IP
  address, a proto other than http/https, a host that is not ``host[:port]``, a port that is
  not a number from 1 to 65535, a prefix that does not start with ``/`` or holds controls, a
  ``Forwarded`` header that does not parse. The request is served as if that field were absent:
  a 400 would let one proxy misconfiguration, or one client, take a site down, and a bad value
  is never copied into the environ, where an application would trust it.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("gearshift")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The default: the loopback addresses and Unix-socket peers.
DEFAULT_FORWARDED_ALLOW_IPS = "127.0.0.1,::1,unix"
#: The entry that trusts connections over a Unix socket (they have no address to match).
UNIX = "unix"

_SCHEMES = {"http": "80", "https": "443"}
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+;=%]*)(?::([0-9]{1,5}))?\Z")
_PREFIX = re.compile(r"/[\x21-\x7e]*\Z")
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# A value: a token (with ":" and brackets too, which some proxies leave unquoted) or a quoted-string.
_FORWARDED_PAIR = re.compile(
    rf'[ \t]*({_TOKEN})=([!#$%&\'*+\-.^_`|~0-9A-Za-z:\[\]]+|"(?:[^"\\\x00-\x1f\x7f]|\\[\t\x20-\x7e])*")[ \t]*'
)


class AllowList:
    """The peers whose forwarding headers are believed: addresses, networks, ``*`` (any TCP
    peer), ``unix`` (Unix-socket peers). ``AllowList("10.0.0.0/8, 127.0.0.1")``."""

    def __init__(self, entries: str | Iterable[str]) -> None:
        self.entries = parse_allow_list(entries)
        self.any = "*" in self.entries
        self.unix = UNIX in self.entries or self.any
        self._networks: list[Network] = [e for e in self.entries.values() if e is not None]
        self._cache: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.entries)

    def __repr__(self) -> str:
        return f"AllowList({','.join(self.entries)!r})"

    def trusts_peer(self, client_address: Any) -> bool:
        """Whether this connection's peer (a socket address) may set forwarding headers."""
        if type(client_address) is tuple:
            return self.trusts(client_address[0])
        return self.unix

    def trusts(self, host: str) -> bool:
        """Whether the address ``host`` is trusted (False for what is no IP address)."""
        if self.any:
            return True
        known = self._cache.get(host)
        if known is not None:
            return known
        address = ip_address(host)
        trusted = address is not None and any(address in network for network in self._networks)
        if len(self._cache) < 1024:  # bounded: X-Forwarded-For entries are client-chosen
            self._cache[host] = trusted
        return trusted


def parse_allow_list(entries: str | Iterable[str]) -> dict[str, Network | None]:
    """Each entry of ``forwarded_allow_ips``, by its text: a network for an address or CIDR
    range, None for ``*`` and ``unix``. Raises ``ValueError`` naming the bad entry."""
    if isinstance(entries, str):
        items = [item for item in re.split(r"[\s,]+", entries) if item]
    else:
        items = []
        for entry in entries:
            if not isinstance(entry, str):
                raise ValueError(f"forwarded_allow_ips entries must be strings, not {entry!r}")
            items += [item for item in re.split(r"[\s,]+", entry) if item]
    parsed: dict[str, Network | None] = {}
    for item in items:
        if item in ("*", UNIX):
            parsed[item] = None
            continue
        text = item[1:-1] if item.startswith("[") and item.endswith("]") else item
        try:
            parsed[item] = ipaddress.ip_network(text, strict=True)
        except ValueError:
            hint = ""
            try:
                network = ipaddress.ip_network(text, strict=False)
                hint = f" (it has host bits set: did you mean {network}?)"
            except ValueError:
                pass
            raise ValueError(
                f"forwarded_allow_ips: {item!r} is not an IP address, a CIDR range (10.0.0.0/8), "
                f"'*' (any peer) or 'unix' (Unix-socket peers){hint}"
            ) from None
    return parsed


def ip_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``text`` as an address (an IPv4-mapped IPv6 one as its IPv4 address), or None."""
    try:
        address = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class ProxyHeaders:
    """Rewrites the environ of a request from a trusted peer after its forwarding headers."""

    def __init__(self, allow: AllowList) -> None:
        self.allow = allow

    def apply(self, environ: dict[str, Any]) -> None:
        """Rewrite ``environ`` (already built from the request) after its forwarding headers."""
        # Spelt out, not any() over a tuple: this runs for every request from a trusted peer.
        if ("HTTP_X_FORWARDED_FOR" in environ or "HTTP_X_FORWARDED_PROTO" in environ
                or "HTTP_X_FORWARDED_HOST" in environ or "HTTP_X_FORWARDED_PORT" in environ
                or "HTTP_X_FORWARDED_PREFIX" in environ):
            self._apply_x_forwarded(environ)
        elif "HTTP_FORWARDED" in environ:
            self._apply_forwarded(environ)

    # -- X-Forwarded-* -------------------------------------------------------------------------

    def _apply_x_forwarded(self, environ: dict[str, Any]) -> None:
        forwarded_for = environ.get("HTTP_X_FORWARDED_FOR")
        if forwarded_for is not None:
            client = self._client([entry.strip() for entry in forwarded_for.split(",")])
            if client is None:
                log.debug("ignoring X-Forwarded-For %r: no valid client address", forwarded_for)
            else:
                set_remote(environ, client, "")
        self._set_location(
            environ, _last(environ.get("HTTP_X_FORWARDED_PROTO")), _last(environ.get("HTTP_X_FORWARDED_HOST")),
            _last(environ.get("HTTP_X_FORWARDED_PORT")),
        )
        prefix = _last(environ.get("HTTP_X_FORWARDED_PREFIX"))
        if prefix is not None:
            set_prefix(environ, prefix)

    def _client(self, hops: list[str]) -> str | None:
        """The client address among ``hops`` (left to right; see the module docstring), as text
        for REMOTE_ADDR; None if the hop to take is no IP address."""
        for hop in reversed(hops):
            address = node_address(hop)
            if address is None:
                return None
            if not self.allow.trusts(address):
                return address
        return node_address(hops[0]) if hops else None

    # -- Forwarded (RFC 7239) ------------------------------------------------------------------

    def _apply_forwarded(self, environ: dict[str, Any]) -> None:
        header = environ["HTTP_FORWARDED"]
        try:
            elements = parse_forwarded(header)
        except ValueError as exc:
            log.debug("ignoring Forwarded %r: %s", header, exc)
            return
        if not elements:
            return
        chosen = elements[0]
        for element in reversed(elements):
            chosen = element
            node = element.get("for")
            address = node_address(node) if node is not None else None
            if address is None or not self.allow.trusts(address):
                break
        node = chosen.get("for")
        if node is not None:
            address = node_address(node)
            if address is not None:
                set_remote(environ, address, node_port(node))
            else:  # "unknown", an obfuscated name (RFC 7239 §6.3): no address to report
                log.debug("Forwarded for=%r is no IP address: REMOTE_ADDR left as is", node)
        self._set_location(environ, chosen.get("proto"), chosen.get("host"), None)

    # -- shared --------------------------------------------------------------------------------

    def _set_location(self, environ: dict[str, Any], proto: str | None, host: str | None, port: str | None) -> None:
        """Scheme, host and port of the URL the client used: ``wsgi.url_scheme``, and
        ``HTTP_HOST``/``SERVER_NAME``/``SERVER_PORT`` consistent with each other."""
        if proto is None and host is None and port is None:
            return
        if proto is not None:
            proto = proto.lower()
            if proto not in _SCHEMES:
                log.debug("ignoring forwarded proto %r: not http or https", proto)
                proto = None
        if port is not None and not _valid_port(port):
            log.debug("ignoring forwarded port %r: not a number from 1 to 65535", port)
            port = None
        if host is not None:
            match = _HOST.match(host)
            if match is None or not match.group(1) or (match.group(2) and not _valid_port(match.group(2))):
                log.debug("ignoring forwarded host %r: not host[:port]", host)
                host = None
        if proto is None and host is None and port is None:  # nothing valid: leave the environ alone
            return
        if proto is not None:
            environ["wsgi.url_scheme"] = proto
        scheme = environ["wsgi.url_scheme"]
        if host is None:
            host = environ.get("HTTP_HOST") or environ["SERVER_NAME"]
        match = _HOST.match(host)
        if match is None:  # the parser checks Host; SERVER_NAME is the server's own
            return
        name, host_port = match.group(1), match.group(2)
        port = port or host_port or _SCHEMES.get(scheme, "80")
        environ["SERVER_NAME"] = name.strip("[]")
        environ["SERVER_PORT"] = port
        environ["HTTP_HOST"] = name if port == _SCHEMES.get(scheme) else f"{name}:{port}"


def set_remote(environ: dict[str, Any], address: str, port: str) -> None:
    environ["REMOTE_ADDR"] = address
    environ["REMOTE_PORT"] = port


def set_prefix(environ: dict[str, Any], prefix: str) -> None:
    """The proxy mounted the application under ``prefix``: it goes before the server's own
    ``SCRIPT_NAME`` (``root_path``), since the proxy removed it before the server saw the path."""
    if not _PREFIX.match(prefix):
        log.debug("ignoring X-Forwarded-Prefix %r: not a path starting with /", prefix)
        return
    environ["SCRIPT_NAME"] = prefix.rstrip("/") + environ["SCRIPT_NAME"]


def _last(value: str | None) -> str | None:
    """The rightmost of a comma-separated list (see the module docstring), None if empty."""
    if value is None:
        return None
    last = value.rpartition(",")[2].strip()
    return last or None


def _valid_port(text: str) -> bool:
    return text.isdigit() and text.isascii() and 0 < int(text) <= 65535


def node_address(node: str) -> str | None:
    """The address of an ``X-Forwarded-For`` entry or a ``for=`` node: ``192.0.2.1``,
    ``192.0.2.1:4711``, ``2001:db8::1``, ``[2001:db8::1]:4711``; None if there is none."""
    if node.startswith("["):
        text, sep, _rest = node[1:].partition("]")
        if not sep:
            return None
    elif node.count(":") == 1:
        text = node.partition(":")[0]
    else:
        text = node
    address = ip_address(text)
    return None if address is None else str(address)


def node_port(node: str) -> str:
    """The port of a ``for=`` node, or "" (RFC 7239 §6: obfuscated ports are not numbers)."""
    if node.startswith("["):
        port = node.rpartition("]")[2].removeprefix(":")
    elif node.count(":") == 1:
        port = node.partition(":")[2]
    else:
        port = ""
    return port if _valid_port(port) else ""


def parse_forwarded(header: str) -> list[dict[str, str]]:
    """RFC 7239 ``Forwarded``: one dict per element (hop), parameter names lowercased, quoted
    values unquoted. Raises ``ValueError`` if the header does not follow the grammar or names a
    parameter twice in one element."""
    elements: list[dict[str, str]] = []
    pos, end = 0, len(header)
    element: dict[str, str] = {}
    while True:
        match = _FORWARDED_PAIR.match(header, pos)
        if match is None:
            raise ValueError(f"malformed at offset {pos}")
        name, value = match.group(1).lower(), match.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        if name in element:
            raise ValueError(f"parameter {name!r} twice in one element")
        element[name] = value
        pos = match.end()
        if pos == end:
            elements.append(element)
            return elements
        separator = header[pos]
        pos += 1
        if separator == ",":
            elements.append(element)
            element = {}
            while pos < end and header[pos] in " \t,":  # empty list elements are allowed
                pos += 1
            if pos == end:
                return elements
        elif separator != ";":
            raise ValueError(f"unexpected {separator!r} at offset {pos - 1}")
