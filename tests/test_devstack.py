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
