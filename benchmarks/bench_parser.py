"""Time ``RequestParser.feed`` for a browser-like GET and a small POST (one request per feed, on
one keep-alive parser), optionally against another version of ``parser.py``, alternating.

    .venv/bin/python benchmarks/bench_parser.py
    git show <rev>:src/gearshift/http/parser.py > /tmp/parser_old.py
    .venv/bin/python benchmarks/bench_parser.py --against /tmp/parser_old.py --rounds 8

The figure is the best of many short repeats (µs per request): on a shared machine the minimum
is the steadiest estimate of the parser's own cost.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import timeit
from types import ModuleType

import gearshift.http.parser

GET = (
    b"GET /static/app.js?v=3 HTTP/1.1\r\nHost: example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Connection: keep-alive\r\nCookie: session=abc123; theme=dark\r\nUpgrade-Insecure-Requests: 1\r\n"
    b"Sec-Fetch-Dest: document\r\nSec-Fetch-Mode: navigate\r\nSec-Fetch-Site: none\r\nSec-Fetch-User: ?1\r\n"
    b"Priority: u=0, i\r\n\r\n"
)
POST = (
    b"POST /api/items HTTP/1.1\r\nHost: example.com\r\nContent-Type: application/json\r\n"
    b"Content-Length: 27\r\nAccept: */*\r\nUser-Agent: curl/8.5.0\r\n\r\n"
    b'{"name": "x", "count": 12}\n'
)


def load(path: str) -> ModuleType:
    # A name inside the package, so that the file's relative import of .errors works.
    spec = importlib.util.spec_from_file_location("gearshift.http._bench_parser_other", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def per_request(module: ModuleType, raw: bytes) -> float:
    parser = module.RequestParser()
    feed, requests = parser.feed, parser.requests

    def one() -> None:
        feed(raw)
        requests.popleft()

    return min(timeit.repeat(one, number=500, repeat=60)) / 500 * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", metavar="PARSER_PY", help="another parser.py to time in the same run")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    modules = {"current": gearshift.http.parser}
    if args.against:
        modules["other"] = load(args.against)
    results: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for name, module in modules.items():
            for label, raw in (("GET", GET), ("POST", POST)):
                results.setdefault((label, name), []).append(per_request(module, raw))
    for (label, name), times in sorted(results.items()):
        print(f"{label:5} {name:8} best {min(times):6.2f} µs   median {statistics.median(times):6.2f} µs")


if __name__ == "__main__":
    main()
