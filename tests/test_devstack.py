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
