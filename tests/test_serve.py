"""``gearshift.serve(app)``: a script calling it in a subprocess, stopped by the signals the command
takes, and the errors it shares with ``make_server()``."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest
from cli_helpers import BackgroundRequest, GearshiftProcess, request

import gearshift

SCRIPT = """
import logging, sys, threading
import gearshift

def app(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        sys.stderr.write(f"in the slow request (thread {{threading.get_native_id()}})\\n")
        sys.stderr.flush()
        threading.Event().wait()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"served by serve()"]

{setup}
gearshift.serve(app, port=0{options})
print("serve() returned", flush=True)
"""


def script(directory: Path, options: str = "", setup: str = "") -> GearshiftProcess:
    path = directory / "serve_app.py"
    path.write_text(textwrap.dedent(SCRIPT).format(options=options, setup=setup))
    return GearshiftProcess([], command=[sys.executable, str(path)], cwd=directory)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_serves_until_a_stop_signal_then_returns(tmp_path: Path, signum: signal.Signals) -> None:
    with script(tmp_path) as proc:
        status, _, body = request(proc.address())
        assert (status, body) == (200, b"served by serve()")
        proc.wait_for(r'"GET / HTTP/1.1" 200')  # the command's access log, on stderr
        proc.send(signum)
        assert proc.wait() == 0
    assert proc.stdout == "serve() returned\n"
    assert f"{signum.name}: stopped accepting; waiting up to 30 s" in proc.stderr
    assert "gearshift 0.1.0: stopped" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_serve_takes_make_server_options(tmp_path: Path) -> None:
    with script(tmp_path, options=', strategy="thread", max_threads=3, graceful_timeout=2') as proc:
        assert proc.wait_for(r"with strategy thread \(.*max_threads=3")
        assert request(proc.address())[0] == 200
        proc.send(signal.SIGINT)
        assert proc.wait() == 0
    assert "waiting up to 2 s" in proc.stderr


@pytest.mark.parametrize("strategy", ["threadpool", "thread"])
@pytest.mark.parametrize("to_the_app_thread", [False, True], ids=["to-the-process", "to-the-app-thread"])
def test_a_second_sigint_stops_at_once(tmp_path: Path, strategy: str, to_the_app_thread: bool) -> None:
    # Linux may deliver a signal sent to the process to any thread that does not block it; kill()
    # of a thread's id makes it prefer that thread, here the one blocked in the app. Python runs
    # the handler on the main thread only, so its waits (the loop's select, the drain's joins)
    # must end soon by themselves for it to run.
    with script(tmp_path, options=f", strategy={strategy!r}") as proc:
        slow = BackgroundRequest(proc.address(), "/slow")
        app_thread = int(proc.wait_for(r"in the slow request \(thread (\d+)\)")[0][1])
        target = app_thread if to_the_app_thread else proc.pid
        os.kill(target, signal.SIGINT)
        proc.wait_for("SIGINT: stopped accepting")
        os.kill(target, signal.SIGINT)
        assert proc.wait() == 128 + signal.SIGINT
        slow.join(15)
        assert not slow.is_alive()
    assert "second SIGINT: exiting at once" in proc.stderr
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr


def test_logging_the_program_configured_is_left_alone(tmp_path: Path) -> None:
    setup = "logging.basicConfig(level=logging.INFO, stream=sys.stderr, format='APP %(name)s: %(message)s')"
    with script(tmp_path, setup=setup) as proc:
        proc.wait_for(r"^APP gearshift: gearshift \S+: serving http://127\.0\.0\.1:\d+ with strategy threadpool")
        proc.send(signal.SIGTERM)
        assert proc.wait() == 0
    assert " INFO: " not in proc.stderr  # not the command's format


def _app(environ: dict[str, object], start_response: object) -> list[bytes]:
    return [b""]


@pytest.mark.parametrize("options", [
    {"keepalive_timeout": 5},                       # a misspelt option: "did you mean"
    {"strategy": "fork", "threads": 4},             # another strategy's option
    {"strategy": "nosuch"},                         # an unknown strategy
    {"max_children": -1, "strategy": "fork"},       # a bad value
])
def test_a_wrong_option_raises_what_make_server_raises(options: dict[str, object]) -> None:
    strategy = options.pop("strategy", "threadpool")
    with pytest.raises(Exception) as expected:
        gearshift.make_server("127.0.0.1", 0, _app, strategy, **options).server_close()  # type: ignore[arg-type]
    with pytest.raises(type(expected.value)) as raised:
        gearshift.serve(_app, port=0, strategy=strategy, **options)  # type: ignore[arg-type]
    assert str(raised.value) == str(expected.value)
