"""The local stand-ins themselves (devstack): what only shows with an unlucky random value."""

from __future__ import annotations

import json
import subprocess

from devstack import Stack
from devstack.prod import ProdStack


def test_a_random_password_that_starts_with_a_dash_stays_one_argument(tmp_path, monkeypatch):
    """`airflow users create ... --password -x` reads -x as an option; token_urlsafe starts with
    '-' about once in 64 draws, so `make demo-prod` failed now and then."""
    stack, calls = ProdStack(tmp_path), []
    stack.airflow_home.mkdir(parents=True)

    def airflow(*args, **kwargs):
        calls.append(args)
        return subprocess.CompletedProcess(args, 0, stdout=json.dumps([]), stderr="")

    monkeypatch.setattr(stack, "airflow", airflow)
    monkeypatch.setattr("secrets.token_urlsafe", lambda n: "-starts-with-a-dash")
    stack.create_users()
    created = [args for args in calls if args[:2] == ("users", "create")]
    assert created and all("--password=-starts-with-a-dash" in args and "--password" not in args
                           for args in created)


def test_a_failed_command_does_not_show_the_password(tmp_path):
    import pytest

    with pytest.raises(RuntimeError) as failed:
        Stack(tmp_path).airflow("users", "reset-password", "--username", "op", "--password=not-for-logs")
    assert "--password=***" in str(failed.value) and "not-for-logs" not in str(failed.value)


def test_stop_leaves_alone_a_process_that_was_given_an_ended_ones_pid(tmp_path):
    """Stacks run side by side and pids come round again: a pid file whose process has ended
    must not stop the process group that holds its pid now (another stack's, in CI)."""
    stack = Stack.__new__(Stack)
    stack.root = tmp_path
    ours = subprocess.Popen(["sleep", "60"], start_new_session=True)
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        stack._write_pid("ours", ours.pid)
        (tmp_path / "ended.pid").write_text(f"{other.pid} 1")  # an ended process's start time, its pid reused
        assert stack.pid("ours") == ours.pid
        assert stack.stop() == ["ended", "ours"]
        assert ours.poll() is not None and other.poll() is None
    finally:
        other.kill()
        ours.kill()


def test_a_stack_is_reached_directly_whatever_proxy_the_process_met_first(monkeypatch):
    """What failed three stack modules in CI: the Azure ML tests set the emulator's proxy (and
    no_proxy for this machine) while they run; urlopen's global opener, first made then, kept
    the proxy, and once no_proxy was gone a later module's calls to its own stack went to the
    emulator's closed port. tests/helpers.urlopen goes direct whatever the process met."""
    import threading
    import urllib.error
    import urllib.request
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import pytest

    from devstack import free_port

    from .helpers import urlopen

    class Direct(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"direct")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Direct)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    urllib.request.install_opener(None)  # as in a fresh process
    try:
        for name in ("http_proxy", "HTTP_PROXY"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{free_port()}")  # nothing listens there
        for name in ("no_proxy", "NO_PROXY"):
            monkeypatch.setenv(name, "127.0.0.1,localhost")
        with urllib.request.urlopen(url, timeout=10) as answer:  # the global opener is made here
            assert answer.read() == b"direct"
        for name in ("http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY"):
            monkeypatch.delenv(name)  # the Azure ML test's environment undone
        with pytest.raises(urllib.error.URLError, match="Connection refused"):
            urllib.request.urlopen(url, timeout=10)  # the trap: still through the proxy
        with urlopen(url, timeout=10) as answer:
            assert answer.read() == b"direct"
    finally:
        urllib.request.install_opener(None)
        server.shutdown()
