"""Observer plugins for the observer-hook tests, registered by app_server.py when
``TEST_OBSERVER_LOG`` names a file: :class:`Recorder` appends one JSON line per event to it,
from whichever process the event happens in (one ``write`` with ``O_APPEND``, so lines from
workers and children never interleave); with ``TEST_OBSERVER_FAIL`` set, :class:`Failing`,
registered first, raises in every hook, and the Recorder must see every event all the same."""

import json
import os

import gearshift


class Recorder:
    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def _write(self, event: str, **fields: object) -> None:
        line = json.dumps({"event": event, "pid": os.getpid(), **fields}) + "\n"
        os.write(self.fd, line.encode())

    @gearshift.hookimpl
    def gearshift_server_started(self, server):
        self._write("started", port=server.server_address[1])

    @gearshift.hookimpl
    def gearshift_server_stopping(self, server):
        self._write("stopping")

    @gearshift.hookimpl
    def gearshift_connection_accepted(self, client_address):
        self._write("accepted", client=client_address[1])

    @gearshift.hookimpl
    def gearshift_connection_closed(self, client_address):
        self._write("closed", client=client_address[1])

    @gearshift.hookimpl
    def gearshift_request_finished(self, record, worker):
        self._write("request", method=record.method(), path=record.path(), status=record.status,
                    size=record.size, duration=record.duration, worker=worker)

    @gearshift.hookimpl
    def gearshift_worker_started(self, pid, number):
        self._write("worker_started", worker=pid, number=number)

    @gearshift.hookimpl
    def gearshift_worker_exited(self, pid, number, exitcode):
        self._write("worker_exited", worker=pid, number=number, exitcode=exitcode)


class Failing:
    def _fail(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("this observer is broken")

    gearshift_server_started = gearshift.hookimpl(_fail)
    gearshift_server_stopping = gearshift.hookimpl(_fail)
    gearshift_connection_accepted = gearshift.hookimpl(_fail)
    gearshift_connection_closed = gearshift.hookimpl(_fail)
    gearshift_request_finished = gearshift.hookimpl(_fail)
    gearshift_worker_started = gearshift.hookimpl(_fail)
    gearshift_worker_exited = gearshift.hookimpl(_fail)


def register_from_environment() -> None:
    path = os.environ.get("TEST_OBSERVER_LOG")
    if not path:
        return
    if os.environ.get("TEST_OBSERVER_FAIL"):
        gearshift.register_plugin(Failing())
    gearshift.register_plugin(Recorder(path))


def events(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]
