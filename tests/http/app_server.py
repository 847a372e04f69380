"""Run ``make_server`` on the test app in this process's main thread (as a user would), print
the port, and stop cleanly on SIGTERM. Used by the HTTP tests so that every strategy, ``fork``
included, runs in a single-threaded process of its own.

    python app_server.py STRATEGY [JSON_OPTIONS [MODULE:APP]]
"""

import json
import logging
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import importlib  # noqa: E402

from recording_observer import register_from_environment  # noqa: E402

import gearshift  # noqa: E402

logging.basicConfig(level=logging.DEBUG if os.environ.get("GEARSHIFT_TEST_DEBUG") else logging.INFO,
                    format="%(process)d %(levelname)s %(name)s: %(message)s")


def main() -> None:
    strategy = sys.argv[1]
    options = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    module, _, name = (sys.argv[3] if len(sys.argv) > 3 else "apps:app").partition(":")
    app = getattr(importlib.import_module(module), name)
    register_from_environment()
    server = gearshift.make_server("127.0.0.1", 0, app, strategy=strategy, **options)
    signal.signal(signal.SIGTERM, lambda *_: server.shutdown())
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


main()
