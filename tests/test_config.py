"""The configuration file (gearshift.toml, [tool.gearshift]), --print-config, --check-config,
and the process options --pid, --chdir, --user/--group: all through the real command."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import (
    GREETER_PLUGIN,
    GearshiftProcess,
    assert_error,
    clean_env,
    request,
    run_gearshift,
    write_dist_info,
    write_module,
)

pytestmark = pytest.mark.timeout(60)

IDS_APP = '''
import json, os

def app(environ, start_response):
    body = json.dumps({"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "egid": os.getegid(),
                       "pid": os.getpid(), "cwd": os.getcwd()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
'''

#: ``threadpool`` shows its options on the banner: where a setting ended up is visible there.
THREADS = re.compile(r"with strategy threadpool \(threads=(\d+)")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write_module(tmp_path, "idsapp", IDS_APP)
    return tmp_path


def _write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def _print_config(directory: Path, *args: str, **environ: str) -> dict[str, tuple[str, str]]:
    """--print-config's lines as setting -> (value, source)."""
    result = run_gearshift(["--print-config", *args], env=clean_env(**environ), cwd=directory)
    assert result.returncode == 0, result.stderr
    lines = {}
    for line in result.stdout.splitlines():
        match = re.fullmatch(r"(\w+) += (.*?) +# (.*)", line)
        assert match, line
        lines[match[1]] = (match[2], match[3])
    return lines


def _threads_served(directory: Path, *args: str, **environ: str) -> str:
    with GearshiftProcess(["-b", "127.0.0.1:0", *args], env=clean_env(**environ), cwd=directory) as server:
        match = server.wait_for(THREADS)[0]
        assert request(server.address())[0] == 200
        assert server.stop() == 0
    return match[1]


# -- the file and its precedence -----------------------------------------------------------------


def test_command_line_beats_environment_beats_file_beats_default(project: Path) -> None:
    _write(project, "gearshift.toml", """
        app = "idsapp:app"
        threads = 3
        max_queue = 7
    """)
    assert _threads_served(project) == "3"
    assert _threads_served(project, GEARSHIFT_THREADS="4") == "4"
    assert _threads_served(project, "--threads", "5", GEARSHIFT_THREADS="4") == "5"
    lines = _print_config(project, "--threads", "5", GEARSHIFT_THREADS="4", GEARSHIFT_MAX_QUEUE="8")
    assert lines["threads"] == ("5", "--threads")
    assert lines["max_queue"] == ("8", "GEARSHIFT_MAX_QUEUE")
    assert lines["app"] == ('"idsapp:app"', "gearshift.toml")
    assert lines["graceful_timeout"] == ("30.0", "default")
    assert lines["max_body_size"] == ("(not set)", "default")


def test_a_false_flag_in_the_environment_beats_the_file(project: Path) -> None:
    _write(project, "gearshift.toml", "no_access_log = true\n")
    assert _print_config(project)["no_access_log"] == ("true", "gearshift.toml")
    assert _print_config(project, GEARSHIFT_NO_ACCESS_LOG="0")["no_access_log"] == ("false", "GEARSHIFT_NO_ACCESS_LOG")


def test_each_kind_of_value(project: Path) -> None:
    _write(project, "gearshift.toml", """
        bind = ["127.0.0.1:0", "unix:/tmp/x.sock"]      # a list: an array
        fd = "5, 6"                                      # or a string, as in the environment
        preload = true                                   # a flag: a boolean
        strategy = "prefork"
        workers = "2"                                    # a number: as a string
        timeout = 12.5                                   # or a TOML number
        max-requests = 100                               # '-' for '_'
        umask = 0o027                                    # an octal setting takes TOML's octal
        buffer_request_body = false                      # a yes/no value takes a boolean
        log_level = "WARNING"                            # through the setting's conversion
    """)
    lines = {name: value for name, (value, _) in _print_config(project).items()}
    assert lines["bind"] == '["127.0.0.1:0", "unix:/tmp/x.sock"]'
    assert lines["fd"] == "[5, 6]"
    assert (lines["preload"], lines["strategy"], lines["workers"]) == ("true", '"prefork"', "2")
    assert (lines["timeout"], lines["max_requests"], lines["umask"]) == ("12.5", "100", "0o027")
    assert (lines["buffer_request_body"], lines["log_level"]) == ("false", '"warning"')
    _write(project, "gearshift.toml", 'umask = "007"\n')
    assert _print_config(project)["umask"] == ("0o007", "gearshift.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("threads = 0", "gearshift.toml: threads must be a whole number >= 1, not 0"),
        ("graceful-timeout = -1", "gearshift.toml: graceful-timeout must be >= 0, not -1"),
        ('threads = "many"', "gearshift.toml: threads: invalid value 'many'"),
        ("threads = true", "gearshift.toml: threads: expected a number, not true"),
        ("threads = 2.5", "gearshift.toml: threads: invalid value '2.5'"),
        ('preload = "yes"', "gearshift.toml: preload: expected true or false, not 'yes'"),
        ("bind = 8000", "gearshift.toml: bind: expected an array (or a string), not 8000"),
        ('log_level = ["info"]', "gearshift.toml: log_level: expected a string, not an array"),
        ('log_level = "loud"', "gearshift.toml: log_level: invalid choice 'loud'"),
        ("umask = 0o1000", "gearshift.toml: umask: invalid value '1000'"),
        ("thread = 4", "gearshift.toml: unknown setting 'thread'; did you mean 'threads'?"),
        ("max-chidren = 4", "gearshift.toml: unknown setting 'max-chidren'; did you mean 'max_children'?"),
        ("zzz = 1", "gearshift.toml: unknown setting 'zzz' ('gearshift --print-config' lists the settings)"),
        ('config = "other.toml"', "gearshift.toml: config: a configuration file cannot name another"),
        ("threads = 2\nthreads-x", "gearshift.toml: not valid TOML: "),
        ("threads = 2\nmax_queue = 1\nmax-queue = 2", "'max_queue' is set twice in this file"),
    ],
)
def test_bad_values_name_the_file_and_the_key(project: Path, text: str, message: str) -> None:
    _write(project, "gearshift.toml", text + "\n")
    for command in (["-b", "127.0.0.1:0"], ["--check-config"]):
        assert_error(run_gearshift(command, cwd=project), 2, message)


def test_pyproject_tool_gearshift(project: Path) -> None:
    _write(project, "pyproject.toml", """
        [project]
        name = "mysite"

        [tool.gearshift]
        app = "idsapp:app"
        threads = 6
    """)
    with GearshiftProcess(["-b", "127.0.0.1:0"], cwd=project) as server:
        assert server.wait_for(THREADS)[0][1] == "6"
        assert "settings from pyproject.toml [tool.gearshift]" in server.stderr
        assert request(server.address())[0] == 200
        assert server.stop() == 0
    _write(project, "pyproject.toml", "[tool.gearshift]\nthread = 6\n")
    for command in ("--check-config", "--print-config"):
        assert_error(run_gearshift([command], cwd=project), 2,
                     "pyproject.toml [tool.gearshift]: unknown setting 'thread'; did you mean 'threads'?")


def test_a_pyproject_without_the_table_is_nothing(project: Path) -> None:
    _write(project, "pyproject.toml", '[project]\nname = "mysite"\n\n[tool.ruff]\nline-length = 100\n')
    assert set(source for _, source in _print_config(project).values()) == {"default"}
    result = run_gearshift(["--config", "pyproject.toml", "--check-config"], cwd=project)
    assert result.returncode == 0 and "settings from" not in result.stdout, result.stderr


def test_gearshift_toml_wins_over_pyproject_and_says_so(project: Path) -> None:
    _write(project, "pyproject.toml", "[tool.gearshift]\nthreads = 6\n")
    _write(project, "gearshift.toml", 'app = "idsapp:app"\nthreads = 2\n')
    with GearshiftProcess(["-b", "127.0.0.1:0"], cwd=project) as server:
        assert server.wait_for(THREADS)[0][1] == "2"
        server.wait_for(r"INFO: pyproject.toml has a \[tool.gearshift\] table too: ignored, gearshift.toml wins")
        assert server.stop() == 0


def test_config_names_a_file_of_either_kind(project: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    elsewhere = tmp_path_factory.mktemp("etc")
    _write(project, "gearshift.toml", "threads = 2\n")  # passed over when a file is named
    dedicated = _write(elsewhere, "production.toml", "threads = 9\n")
    pyproject = _write(elsewhere, "pyproject.toml", "[tool.gearshift]\nthreads = 11\n")
    assert _print_config(project, "--config", str(dedicated))["threads"] == ("9", str(dedicated))
    assert _print_config(project, GEARSHIFT_CONFIG=str(pyproject))["threads"] == (
        "11", f"{pyproject} [tool.gearshift]")
    assert_error(run_gearshift(["--config", "missing.toml"], cwd=project), 2, "--config missing.toml: no such file")
    assert_error(run_gearshift([], env=clean_env(GEARSHIFT_CONFIG="missing.toml"), cwd=project), 2,
                 "GEARSHIFT_CONFIG missing.toml: no such file")


def test_a_plugins_settings_work_in_the_file(tmp_path: Path) -> None:
    write_dist_info(tmp_path, "gearshift-greeter", "0.1", {"greeter": "greeter_plugin_mod"})
    write_module(tmp_path, "greeter_plugin_mod", GREETER_PLUGIN)
    _write(tmp_path, "gearshift.toml", 'strategy = "greeter"\ngreeting = "hello"\nloud = true\n')
    env = clean_env(PYTHONPATH=str(tmp_path))
    with GearshiftProcess(["-b", "127.0.0.1:0"], env=env, cwd=tmp_path) as server:
        server.wait_for(r"with strategy greeter \(greeting=hello, loud=True\)")
        assert server.stop() == 0
    _write(tmp_path, "gearshift.toml", 'strategy = "greeter"\ngreeting = "h1"\n')
    assert_error(run_gearshift(["--check-config"], env=env, cwd=tmp_path), 2,
                 "gearshift.toml: greeting must be letters only")


# -- --check-config ------------------------------------------------------------------------------


def test_check_config_imports_the_app_and_binds_nothing(project: Path) -> None:
    _write(project, "gearshift.toml", 'app = "idsapp:app"\nstrategy = "prefork"\nworkers = 2\n')
    with socket.socket() as taken:  # the address a running server holds: checking must not need it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_gearshift(["--check-config", "-b", f"127.0.0.1:{port}"], cwd=project)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (f"gearshift: configuration ok: idsapp:app on 127.0.0.1:{port} with strategy prefork; "
                             f"settings from gearshift.toml\n")


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["missing_module:app"], 1, "cannot import 'missing_module': no module named 'missing_module'"),
        (["idsapp:nothing"], 1, "'nothing'"),
        (["idsapp:app", "--workers", "2"], 2, "--workers (GEARSHIFT_WORKERS) does not apply to strategy 'threadpool'"),
        (["idsapp:app", "--threads", "0"], 2, "--threads must be a whole number >= 1, not 0"),
        (["idsapp:app", "--max-body-size", "-1"], 2, "--max-body-size must be an int >= 0 or None, not -1"),
        (["idsapp:app", "-b", "localhost"], 2, "bad bind address 'localhost'"),
        (["idsapp:app", "--preload"], 2, "--preload does not apply to strategy 'threadpool'"),
    ],
)
def test_check_config_fails_with_the_error_serving_would_give(project: Path, args: list[str], status: int,
                                                              message: str) -> None:
    checked = run_gearshift(["--check-config", *args], cwd=project)
    assert_error(checked, status, message)
    served = run_gearshift(["-b", "127.0.0.1:0", *args], cwd=project)
    assert_error(served, status, message)
    assert checked.stderr.splitlines()[-1] == served.stderr.splitlines()[-1]


# -- --pid, --chdir ------------------------------------------------------------------------------


def test_pid_file_is_written_after_binding_and_removed_at_exit(project: Path) -> None:
    pid_file = project / "run" / "app.pid"
    pid_file.parent.mkdir()
    args = ["idsapp:app", "-b", "127.0.0.1:0", "--pid", str(pid_file)]
    with GearshiftProcess(args, cwd=project) as server:
        address = server.address()
        assert pid_file.read_text() == f"{server.pid}\n"
        assert request(address)[0] == 200
        # a second server over the live one is refused, and leaves the file alone
        assert_error(run_gearshift(args, cwd=project), 1,
                     f"--pid {pid_file}: process {server.pid} is running (another gearshift?)")
        assert pid_file.read_text() == f"{server.pid}\n"
        assert server.stop() == 0
    assert not pid_file.exists()
    assert os.listdir(pid_file.parent) == []  # nor a temporary file left behind


def test_a_stale_pid_file_is_overwritten(project: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    pid_file = _write(project, "app.pid", f"{gone.pid}\n")
    with GearshiftProcess(["idsapp:app", "-b", "127.0.0.1:0", "--pid", str(pid_file)], cwd=project) as server:
        server.wait_ready()
        assert pid_file.read_text() == f"{server.pid}\n"
        assert f"process {gone.pid} is gone; the file is overwritten" in server.stderr
        assert server.stop() == 0
    assert not pid_file.exists()


def test_a_pid_file_taken_over_is_not_removed(project: Path) -> None:
    pid_file = project / "app.pid"
    with GearshiftProcess(["idsapp:app", "-b", "127.0.0.1:0", "--pid", str(pid_file)], cwd=project) as server:
        server.wait_ready()
        pid_file.write_text("1\n")  # another server's now
        assert server.stop() == 0
    assert pid_file.read_text() == "1\n"


def test_chdir_reads_the_config_there_and_imports_from_there(project: Path,
                                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    _write(project, "gearshift.toml", 'app = "idsapp:app"\nthreads = 3\n')
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    with GearshiftProcess(["-b", "127.0.0.1:0", "--chdir", str(project)], cwd=elsewhere) as server:
        assert server.wait_for(THREADS)[0][1] == "3"
        status, _, body = request(server.address())
        assert status == 200 and f'"cwd": "{project}"' in body.decode()
        assert server.stop() == 0
    assert_error(run_gearshift(["--chdir", str(project / "missing")], cwd=elsewhere), 1,
                 f"--chdir {project / 'missing'}: no such directory")


# -- --user, --group -----------------------------------------------------------------------------

@pytest.fixture
def open_project() -> Iterator[Path]:
    """A project directory that another user can read (pytest's are root's alone)."""
    directory = Path(tempfile.mkdtemp(prefix="gearshift-config-"))
    try:
        directory.chmod(0o755)
        write_module(directory, "idsapp", IDS_APP)
        yield directory
    finally:
        shutil.rmtree(directory)


#: Runs the command as ``nobody`` without the interpreter's files: this machine's Python lives
#: under /root, which nobody may read, so everything the command needs is imported first.
AS_NOBODY = """
import os, sys
from gearshift import cli
cli.build_parser()
os.setgroups([])
os.setgid(int(sys.argv[1]))
os.setuid(int(sys.argv[2]))
sys.exit(cli.main(sys.argv[3:]))
"""

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root (CI runs as root)")


def _nobody() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' on this machine")


@needs_root
@pytest.mark.parametrize("strategy", ["threadpool", "prefork"])
def test_user_drops_root_after_binding(open_project: Path, strategy: str) -> None:
    nobody = _nobody()
    sock_path = open_project / "app.sock"
    args = ["idsapp:app", "-s", strategy, "-b", "127.0.0.1:0", "-b", f"unix:{sock_path}", "--umask", "007",
            "--user", "nobody"]
    if strategy == "prefork":
        args += ["--workers", "1"]
    with GearshiftProcess(args, cwd=open_project) as server:
        address = server.address()
        server.wait_ready(2)
        server.wait_for(r"INFO: running as user nobody, group ")
        for where in (address, str(sock_path)):
            status, _, body = request(where)
            assert status == 200
            ids = json.loads(body)
            assert (ids["uid"], ids["euid"]) == (nobody.pw_uid, nobody.pw_uid)
            assert (ids["gid"], ids["egid"]) == (nobody.pw_gid, nobody.pw_gid)
        # the master too: every id, the saved one included, and no group of root's left
        with open(f"/proc/{server.pid}/status") as f:
            status_text = f.read()
        assert re.search(rf"^Uid:\s+{nobody.pw_uid}\s+{nobody.pw_uid}\s+{nobody.pw_uid}\s", status_text, re.M)
        groups = re.search(r"^Groups:(.*)$", status_text, re.M)
        assert groups is not None and "0" not in groups[1].split()
        # the socket root created is the user's, so that --umask 007 lets its group in
        info = sock_path.stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (nobody.pw_uid, nobody.pw_gid, 0o770)
        assert server.stop() == 0


@needs_root
def test_group_and_numeric_ids(open_project: Path) -> None:
    nobody = _nobody()
    args = ["idsapp:app", "-b", "127.0.0.1:0", "--user", str(nobody.pw_uid), "--group", "0"]
    with GearshiftProcess(args, cwd=open_project) as server:
        ids = json.loads(request(server.address())[2])
        assert (ids["euid"], ids["egid"]) == (nobody.pw_uid, 0)
        assert server.stop() == 0
    assert_error(run_gearshift(["--user", "no-such-user-here"], cwd=open_project), 1,
                 "--user no-such-user-here: no such user")
    assert_error(run_gearshift(["--user", "nobody", "--group", "no-such-group-here"], cwd=open_project), 1,
                 "--group no-such-group-here: no such group")


@needs_root
def test_user_without_root_is_an_error(open_project: Path) -> None:
    nobody = _nobody()
    command = [sys.executable, "-c", AS_NOBODY, str(nobody.pw_gid), str(nobody.pw_uid)]
    result = run_gearshift(["--user", "nobody", "--check-config"], command=command, cwd=open_project)
    assert_error(result, 1, f"--user needs gearshift started as root (it drops root's privileges after binding); "
                            f"this process runs as uid {nobody.pw_uid}")


def test_sigterm_still_stops_a_server_with_every_process_option(open_project: Path) -> None:
    """The pid file, the directory and (as root) the user together: the ordinary stop still works."""
    extra = ["--user", "nobody"] if os.geteuid() == 0 else []
    run_dir = open_project / "run"
    run_dir.mkdir()
    if extra:
        os.chown(run_dir, _nobody().pw_uid, -1)  # a RuntimeDirectory= owned by the user
    args = ["idsapp:app", "-b", "127.0.0.1:0", "--chdir", str(open_project), "--pid", "run/app.pid", *extra]
    with GearshiftProcess(args, cwd="/") as server:
        server.wait_ready()
        assert (run_dir / "app.pid").read_text() == f"{server.pid}\n"
        assert server.stop(signal.SIGTERM) == 0
    assert not (run_dir / "app.pid").exists()
