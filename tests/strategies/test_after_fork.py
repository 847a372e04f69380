"""Server.after_fork(): a forked child owns nothing of its parent's server, in both of its uses:
a child that serves the connection it was given (``fork``: the listeners are closed in it) and a
worker that runs the loop itself on the inherited listeners (``keep_listeners=True``, what a
``prefork`` strategy's workers do). Runs in a subprocess: the pytest process never forks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from core_helpers import HANG_GUARD, connect, read_line

pytestmark = pytest.mark.timeout(60)

SCRIPT = textwrap.dedent('''
    import os, socketserver, sys
    import gearshift

    path = sys.argv[1]

    class Counting(socketserver.BaseRequestHandler):
        """Answers ``COUNT PID`` per line, COUNT being the lines this connection carried (its
        resume state); ``stop`` stops the loop of the process it runs in."""

        def handle(self):
            count = self.server.resumed_state(self.request) or 0
            data = b""
            while not data.endswith(b"\\n"):
                chunk = self.request.recv(1)
                if not chunk:
                    return
                data += chunk
            if data == b"stop\\n":
                self.request.sendall(f"stopping {os.getpid()}\\n".encode())
                self.server.shutdown()  # on the loop's thread: only asks the loop to stop
                return
            count += 1
            self.request.sendall(f"{count} {os.getpid()}\\n".encode())
            self.server.resume_when_readable(self.request, self.client_address, None, state=count)

    def in_child(body):
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                status = 0 if body() else 2
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)

    class OneWorker(gearshift.Strategy):
        """A prefork-like supervisor: one worker process runs the loop on the inherited listener."""

        name = "one-worker-test"

        def serve(self, run_loop):
            def worker():
                self.server.after_fork(keep_listeners=True)
                run_loop()
                self.server.server_close()  # the worker's copies only
                return True

            print("worker", in_child(worker), flush=True)

        def process_request(self, request, client_address):
            self.handle_connection(request, client_address)

    server = gearshift.Server(path, Counting, strategy=OneWorker)
    print("ready", os.getpid(), flush=True)
    server.serve_forever()

    def fork_child():
        server.after_fork()
        closed = all(sock.fileno() == -1 for sock in server.listeners)
        server.server_close()  # nothing of the parent's to shut down or remove
        return closed

    print("child", in_child(fork_child), flush=True)
    print("file", os.path.exists(path), flush=True)
    server.timeout = 30
    print("parent serving", flush=True)
    server.handle_request()  # the parent's own loop, on the listener the children left alone
    server.server_close()
    print("removed", not os.path.exists(path), flush=True)
''')


def test_a_worker_keeps_the_listeners_and_a_child_closes_them_and_neither_takes_the_parents(tmp_path):
    path = str(tmp_path / "s.sock")
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, path], stdout=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        ready, parent_pid = proc.stdout.readline().split()
        assert ready == "ready"
        with connect(path) as client:
            # The worker's loop resumes the connection with its state, like the parent's would.
            replies = []
            for _ in range(3):
                client.sendall(b"x\n")
                replies.append(read_line(client).decode().split())
            assert [count for count, _ in replies] == ["1", "2", "3"]
            worker_pid = replies[0][1]
            assert worker_pid != parent_pid and {pid for _, pid in replies} == {worker_pid}
            client.sendall(b"stop\n")
            assert read_line(client).decode().split() == ["stopping", worker_pid]
        assert proc.stdout.readline().split() == ["worker", "0"]
        assert proc.stdout.readline().split() == ["child", "0"]
        assert proc.stdout.readline().split() == ["file", "True"]
        assert proc.stdout.readline().strip() == "parent serving"
        with connect(path) as client:
            client.sendall(b"x\n")
            assert read_line(client).decode().split() == ["1", parent_pid]
        assert proc.stdout.readline().split() == ["removed", "True"]
        assert proc.wait(HANG_GUARD) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert not os.path.exists(path)
