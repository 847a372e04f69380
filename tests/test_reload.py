"""``gearshift --reload``: the real command in a subprocess, real files edited, real requests.

Synchronised on the log lines (the reloader's "changed" line, each server's startup line) and on
HTTP responses: watchfiles groups changes over a short debounce, so a test waits for the line
that says the new server is serving, never for a time.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import sys
import threading
from pathlib import Path

import pytest
from cli_helpers import GearshiftProcess, clean_env, is_alive, request, run_gearshift, write_module
from core_helpers import wait_for

from gearshift.reload import DEFAULT_EXCLUDES, WatchedFiles

APP = """
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [{body!r}]
"""
CHANGED = re.compile(r"reloader: (?P<files>.+) changed: restarting the server")
#: The startup line of a server, with the pid of the process that logs it.
SERVING = re.compile(r"\[(?P<pid>\d+)\] INFO: gearshift \S+: serving (?P<url>\S+) with strategy")
STRATEGIES = ["sync", "thread", "threadpool", "fork", "prefork"]
STRATEGY_ARGS = {"prefork": ["-w", "1"]}


def write_app(directory: Path, body: bytes) -> None:
    write_module(directory, "app", APP.format(body=body))


def reloader(directory: Path, *extra: str, strategy: str = "threadpool") -> GearshiftProcess:
    write_app(directory, b"one")
    args = ["--reload", "app:app", "-b", "127.0.0.1:0", "-s", strategy, *STRATEGY_ARGS.get(strategy, []), *extra]
    return GearshiftProcess(args, cwd=directory, env=clean_env())


def wait_serving(proc: GearshiftProcess, count: int) -> re.Match[str]:
    """The startup line of the count-th server to start (its pid and URL)."""
    return proc.wait_for(SERVING, count=count)[-1]


class ClientLoop(threading.Thread):
    """Requests on a new connection each, back to back, until stopped: every body or error.

    A connection the old server accepted just before it stopped, while the request's bytes were
    still on their way, is closed unanswered: a graceful stop closes connections with no request
    in hand. The client sees the connection closed before any response byte, which HTTP clients
    retry; so does this loop, once, and counts it in ``unanswered``. Every other failure (a
    refused or reset connection) is an error.
    """

    def __init__(self, address: tuple[str, int], wanted: bytes) -> None:
        super().__init__(daemon=True)
        self.address, self.wanted = address, wanted
        self.bodies: list[bytes] = []
        self.errors: list[BaseException] = []
        self.unanswered = 0
        self.seen_wanted = threading.Event()
        self.stopping = threading.Event()
        self.start()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                try:
                    status, _, body = request(self.address, timeout=15.0)
                except http.client.RemoteDisconnected:
                    self.unanswered += 1
                    status, _, body = request(self.address, timeout=15.0)
                self.bodies.append(body if status == 200 else f"status {status}".encode())
            except BaseException as exc:
                self.errors.append(exc)
                self.seen_wanted.set()  # nothing to wait for: the test fails on the error
                return
            if self.bodies.count(self.wanted) >= 3:
                self.seen_wanted.set()

    def finish(self) -> None:
        assert self.seen_wanted.wait(30), f"no {self.wanted!r} within 30 s; saw {self.bodies[-5:]}"
        self.stopping.set()
        self.join(20)
        assert not self.is_alive()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_an_edit_is_served_with_no_connection_refused_meanwhile(tmp_path: Path, strategy: str) -> None:
    with reloader(tmp_path, strategy=strategy) as proc:
        first = wait_serving(proc, 1)
        address = proc.address()
        assert request(address)[2] == b"one"
        client = ClientLoop(address, b"two")
        write_app(tmp_path, b"two")
        assert proc.wait_for(CHANGED)[0]["files"] == "app.py"
        second = wait_serving(proc, 2)
        client.finish()
        assert not client.errors, f"a request failed while the server restarted: {client.errors[0]!r}"
        assert client.unanswered <= 1  # one restart: at most the one connection caught mid-stop
        assert set(client.bodies) <= {b"one", b"two"}, client.bodies
        # Old bodies, then new ones: the old server is gone before the new one serves.
        assert client.bodies == sorted(client.bodies, key=lambda body: body == b"two")
        assert second["pid"] != first["pid"] and not is_alive(int(first["pid"]))
        assert second["url"] == first["url"]  # the same socket, not a new bind
        assert proc.stop(signal.SIGTERM) == 0
    assert "reloader: stopped" in proc.stderr
    assert not is_alive(int(second["pid"]))


def test_a_syntax_error_keeps_the_reloader_watching_and_a_fix_serves_again(tmp_path: Path) -> None:
    with reloader(tmp_path) as proc:
        wait_serving(proc, 1)
        address = proc.address()
        (tmp_path / "app.py").write_text("def app(:\n")
        proc.wait_for(r"reloader: the server exited with status 1; it restarts when a watched file changes")
        assert "SyntaxError" in proc.stderr
        assert proc.proc.poll() is None
        write_app(tmp_path, b"fixed")
        wait_serving(proc, 2)
        assert request(address)[2] == b"fixed"
        assert proc.stop(signal.SIGTERM) == 0


def test_excluded_and_unincluded_files_restart_nothing(tmp_path: Path) -> None:
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "skip").mkdir()
    with reloader(tmp_path, "--reload-exclude", "skip", "--reload-exclude", "local_*.py",
                  "--reload-include", "*.html") as proc:
        wait_serving(proc, 1)
        address = proc.address()
        for name in ("notes.txt", ".hidden.py", "app.pyc", "__pycache__/app.py", "skip/mod.py", "local_settings.py"):
            (tmp_path / name).write_text("x = 1\n")
        # Written last: whatever the batches, a restart for the files above would be logged first.
        (tmp_path / "page.html").write_text("<p>")
        assert proc.wait_for(CHANGED)[0]["files"] == "page.html"
        wait_serving(proc, 2)
        assert request(address)[2] == b"one"
        assert proc.stop(signal.SIGTERM) == 0
    assert len(CHANGED.findall(proc.stderr)) == 1, proc.stderr


def test_reload_dir_watches_that_directory_only(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    with reloader(tmp_path, "--reload-dir", "src") as proc:
        wait_serving(proc, 1)
        write_app(tmp_path, b"two")  # not under src: the server goes on serving the old code
        (tmp_path / "src" / "views.py").write_text("x = 1\n")
        assert proc.wait_for(CHANGED)[0]["files"] == "src/views.py"
        wait_serving(proc, 2)
        assert request(proc.address())[2] == b"two"  # the new server imports the current app.py
        assert proc.stop(signal.SIGTERM) == 0
    assert len(CHANGED.findall(proc.stderr)) == 1, proc.stderr


def test_ctrl_c_to_the_process_group_stops_the_server_once_gracefully(tmp_path: Path) -> None:
    write_app(tmp_path, b"one")
    # A process group of its own, as a terminal gives the foreground job, so that Ctrl+C can
    # be sent to the reloader and its server together.
    code = ("import os, sys; os.setpgid(0, 0); "
            "os.execv(sys.executable, [sys.executable, '-m', 'gearshift', *sys.argv[1:]])")
    with GearshiftProcess(["--reload", "app:app", "-b", "127.0.0.1:0"], command=[sys.executable, "-c", code],
                          cwd=tmp_path) as proc:
        server = wait_serving(proc, 1)["pid"]
        assert request(proc.address())[2] == b"one"
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait() == 0
    assert "reloader: SIGINT: stopping the server" in proc.stderr
    assert f"[{server}] INFO: SIGTERM: stopped accepting" in proc.stderr
    assert "exiting at once" not in proc.stderr  # the server took one stop signal, not two
    assert not is_alive(int(server))


def test_a_unix_socket_survives_restarts_and_is_removed_at_exit(tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    write_app(tmp_path, b"one")
    with GearshiftProcess(["--reload", "app:app", "-b", f"unix:{path}"], cwd=tmp_path) as proc:
        wait_serving(proc, 1)
        assert request(str(path))[2] == b"one"
        inode = path.stat().st_ino
        write_app(tmp_path, b"two")
        wait_serving(proc, 2)
        assert request(str(path))[2] == b"two"
        assert path.stat().st_ino == inode
        assert proc.stop(signal.SIGINT) == 0
    assert not path.exists()


def test_a_command_line_that_cannot_work_stops_the_reloader_with_status_2(tmp_path: Path) -> None:
    write_app(tmp_path, b"one")
    result = run_gearshift(["--reload", "app:app", "-b", "127.0.0.1:0", "--preload"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "--preload does not apply to strategy 'threadpool'" in result.stderr
    assert "reloader: the server exited with status 2 (its command line cannot work): stopping" in result.stderr


def test_without_watchfiles_one_line_says_what_to_install(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['watchfiles'] = None; from gearshift.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    write_app(tmp_path, b"one")
    result = run_gearshift(["--reload", "app:app"], command=[sys.executable, "-c", code], cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == (
        "gearshift: error: --reload needs the watchfiles package: pip install 'gearshift[reload]'\n"
    )


@pytest.mark.parametrize(("args", "status", "message"), [
    (["--reload", "--reload-dir", "nowhere"], 1, "gearshift: error: --reload-dir nowhere: no such directory\n"),
    (["--reload", "--reload-dir", "app.py"], 1, "gearshift: error: --reload-dir app.py: not a directory\n"),
    (["--reload-dir", "."], 2, "gearshift: error: --reload-dir needs --reload (see 'gearshift --help')\n"),
    (["--reload-exclude", "*.txt"], 2, "gearshift: error: --reload-exclude needs --reload (see 'gearshift --help')\n"),
])
def test_bad_reload_settings_are_one_line(tmp_path: Path, args: list[str], status: int, message: str) -> None:
    write_app(tmp_path, b"one")
    result = run_gearshift([*args, "app:app", "-b", "127.0.0.1:0"], cwd=tmp_path)
    assert (result.returncode, result.stderr) == (status, message)


def test_the_environment_turns_reload_on(tmp_path: Path) -> None:
    write_app(tmp_path, b"one")
    env = clean_env(GEARSHIFT_RELOAD="1", GEARSHIFT_RELOAD_INCLUDE="*.cfg")
    with GearshiftProcess(["app:app", "-b", "127.0.0.1:0"], cwd=tmp_path, env=env) as proc:
        wait_serving(proc, 1)
        (tmp_path / "site.cfg").write_text("x")
        assert proc.wait_for(CHANGED)[0]["files"] == "site.cfg"
        wait_serving(proc, 2)
        assert proc.stop(signal.SIGTERM) == 0
    assert "is not a gearshift setting" not in proc.stderr


# -- which paths are watched (the filter alone) ---------------------------------------------------


@pytest.mark.parametrize(("relative", "watched"), [
    ("app.py", True),
    ("pkg/views.py", True),
    ("notes.txt", False),
    (".hidden.py", False),
    (".venv/lib/python3.11/site-packages/flask/app.py", False),
    ("venv/lib/flask/app.py", False),
    ("pkg/__pycache__/views.cpython-311.py", False),
    ("app.pyc", False),
    ("app.py~", False),
    ("templates/page.html", True),   # --reload-include *.html
    (".env", True),                  # --reload-include .env wins over the default .*
    (".git/.env", False),            # ... but not over an excluded directory
    ("static/app.py", False),        # --reload-exclude static
    ("pkg/local_settings.py", False),  # --reload-exclude local_*.py wins over *.py
    ("docs/conf/x.py", False),       # --reload-exclude docs/conf: a pattern with a slash
])
def test_the_filter(tmp_path: Path, relative: str, watched: bool) -> None:
    files = WatchedFiles(
        (tmp_path,), user_includes=("*.html", ".env"), user_excludes=("static", "local_*.py", "docs/conf"),
    )
    assert files(None, str(tmp_path / relative)) is watched
    assert ".*" in DEFAULT_EXCLUDES


def test_the_deepest_watched_directory_judges(tmp_path: Path) -> None:
    # Under .hidden/, watched itself: the names below it count, not .hidden's own.
    files = WatchedFiles((tmp_path, tmp_path / ".hidden"))
    assert files.watches(tmp_path / ".hidden" / "app.py")
    assert not files.watches(tmp_path / ".other" / "app.py")


def test_the_server_stops_when_the_reloader_is_killed(tmp_path: Path) -> None:
    with reloader(tmp_path) as proc:
        server = int(wait_serving(proc, 1)["pid"])
        try:
            proc.proc.kill()  # SIGKILL: the reloader stops nothing itself
            proc.proc.wait(10)
            assert wait_for(lambda: not is_alive(server)), "the server outlived its reloader"
        finally:
            if is_alive(server):
                os.kill(server, signal.SIGKILL)


def test_chdir_and_the_configuration_file_apply_once_in_the_server(tmp_path: Path) -> None:
    """The reloader binds and watches; the server it runs changes directory (once: a relative
    --chdir is not taken twice), reads the configuration file there, imports from there, and
    the directory is the one watched."""
    site = tmp_path / "site"
    site.mkdir()
    write_app(site, b"from site")
    (site / "gearshift.toml").write_text('app = "app:app"\nthreads = 3\n')
    args = ["--reload", "--chdir", "site", "-b", "127.0.0.1:0"]
    with GearshiftProcess(args, cwd=tmp_path, env=clean_env()) as proc:
        wait_serving(proc, 1)
        assert "strategy threadpool (threads=3)" in proc.stderr
        address = proc.address()
        assert request(address)[2] == b"from site"
        write_app(site, b"edited")
        proc.wait_for(CHANGED)
        wait_serving(proc, 2)
        assert request(address)[2] == b"edited"
        assert proc.stop(signal.SIGTERM) == 0
