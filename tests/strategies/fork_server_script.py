"""A gearshift ``fork`` server in its own process, for the fork tests.

The tests never fork from the (multi-threaded) pytest process: they run this script with
``sys.executable`` instead. It binds 127.0.0.1 on a free port, prints the port as the first line
of stdout (flushed), and serves in its main thread until SIGTERM, whose handler calls
``server.shutdown()`` then ``server.server_close()`` (which drains in-flight children).

The handler speaks a one-line protocol; the first line a client sends is a command:

``echo TEXT``         reply ``TEXT PID``
``sleep SECS TEXT``   sleep SECS seconds, then reply ``TEXT PID``
``slow SECS TEXT``    reply ``started PID`` at once, sleep SECS seconds, then reply ``TEXT PID``
``wait TOKEN``        reply ``started PID`` at once, read lines until one is ``finish``, then
                      reply ``done TOKEN PID``
``print TEXT``        print ``CHILD TEXT`` on stdout (not flushed), then reply ``TEXT PID``
``resume``            reply ``resume=RESULT PID``, RESULT being what resume_when_readable() returned
``boom``              raise an exception (the child's handle_error logs it on stderr)
``exit``              raise SystemExit
``gc``                reply ``frozen=N PID``, N being gc.get_freeze_count() in the child
                      beyond what the interpreter froze by itself (FROZEN_AT_START)

``PID`` is the process that ran the handler. Options:

``--max-children N``   the fork strategy's max_children (default 40)
``--drain-timeout S``  Server(graceful_timeout=S)
``--poll-interval S``  serve_forever(poll_interval=S) (default 0.1)
``--unflushed TEXT``   after printing the port, write TEXT to stdout without flushing
``--atexit``           register an atexit handler printing ``ATEXIT PID``
``--no-freeze-gc``     the fork strategy's freeze_gc=False
``--record PATH``      append ``handle PID``, ``handle_error PID`` and ``shutdown_request PID``
                       to PATH as the handler and those server methods run
``--debug``            log at DEBUG level (INFO otherwise)

The last line on stdout, after serve_forever() returns, is ``EXIT PID frozen=N``.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import logging
import os
import signal
import socket
import socketserver
import sys
import time

import gearshift

RECORD: str | None = None
#: What the interpreter keeps frozen by itself (CPython 3.12 starts with a few hundred objects).
FROZEN_AT_START = gc.get_freeze_count()


def record(event: str) -> None:
    if RECORD is not None:
        with open(RECORD, "a") as f:
            f.write(f"{event} {os.getpid()}\n")


class RecordingServer(gearshift.Server):
    def handle_error(self, request: socket.socket, client_address: object) -> None:
        record("handle_error")
        super().handle_error(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:
        record("shutdown_request")
        super().shutdown_request(request)


class Handler(socketserver.StreamRequestHandler):
    def reply(self, text: str) -> None:
        self.wfile.write(f"{text} {os.getpid()}\n".encode())
        self.wfile.flush()

    def handle(self) -> None:
        record("handle")
        line = self.rfile.readline().decode().strip()
        command, _, rest = line.partition(" ")
        if command == "sleep":
            secs, _, text = rest.partition(" ")
            time.sleep(float(secs))
            self.reply(text)
        elif command == "slow":
            secs, _, text = rest.partition(" ")
            self.reply("started")
            time.sleep(float(secs))
            self.reply(text)
        elif command == "wait":
            self.reply("started")
            while True:
                got = self.rfile.readline()
                if not got or got.strip() == b"finish":
                    break
            self.reply(f"done {rest}")
        elif command == "print":
            sys.stdout.write(f"CHILD {rest}\n")  # deliberately not flushed
            self.reply(rest)
        elif command == "resume":
            result = self.server.resume_when_readable(self.request, self.client_address, 1.0)
            self.reply(f"resume={result}")
        elif command == "gc":
            self.reply(f"frozen={max(0, gc.get_freeze_count() - FROZEN_AT_START)}")
        elif command == "boom":
            raise RuntimeError("handler exploded in the child")
        elif command == "exit":
            raise SystemExit(0)
        else:  # "echo" and anything else
            self.reply(rest)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-children", type=int, default=40)
    parser.add_argument("--drain-timeout", type=float, default=None)
    parser.add_argument("--poll-interval", type=float, default=0.1)
    parser.add_argument("--unflushed", default=None)
    parser.add_argument("--atexit", action="store_true")
    parser.add_argument("--no-freeze-gc", dest="freeze_gc", action="store_false")
    parser.add_argument("--listener", choices=("own", "adopted", "both"), default="own",
                        help="own: the server binds its port; adopted: it is given a bound socket "
                             "(listener=); both: it binds one and is given a second, printed too")
    parser.add_argument("--record", default=None)
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args()

    global RECORD
    RECORD = args.record
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.atexit:
        atexit.register(lambda: print(f"ATEXIT {os.getpid()}", flush=True))

    adopted = None
    if args.listener != "own":
        adopted = socket.create_server(("127.0.0.1", 0))
    server = RecordingServer(
        ("127.0.0.1", 0), Handler, strategy="fork",
        listener=adopted if args.listener == "adopted" else None,
        max_children=args.max_children, graceful_timeout=args.drain_timeout, freeze_gc=args.freeze_gc,
    )
    if args.listener == "both":
        server.add_listener(adopted)

    def on_sigterm(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not abort the drain
        server.shutdown()
        server.server_close()

    signal.signal(signal.SIGTERM, on_sigterm)
    sys.stdout.write(f"{server.server_address[1]}\n")
    if args.listener == "both":
        sys.stdout.write(f"{adopted.getsockname()[1]}\n")
    sys.stdout.flush()
    if args.unflushed is not None:
        sys.stdout.write(args.unflushed)  # left in the buffer: a child must not write it again
    try:
        server.serve_forever(poll_interval=args.poll_interval)
    finally:
        server.server_close()
    print(f"EXIT {os.getpid()} frozen={max(0, gc.get_freeze_count() - FROZEN_AT_START)}", flush=True)


if __name__ == "__main__":
    main()
