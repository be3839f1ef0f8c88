"""The local stand-ins themselves (devstack): settings that only show on a busy machine or
with an unlucky random value."""

from __future__ import annotations

import json
import subprocess
import sys

from devstack import Stack
from devstack.prod import ProdStack


def test_sqlite_waits_for_a_write_lock_instead_of_failing(tmp_path):
    """Airflow's own engine, configured as the standalone's processes are: SQLite waits a
    minute for another process's lock (sqlite3's own default, 5 s, answered HTTP 500 to a
    trigger on a busy machine)."""
    code = ("from airflow import settings\n"
            "settings.configure_orm()\n"
            "with settings.engine.connect() as c:\n"
            "    print(c.exec_driver_sql('PRAGMA busy_timeout').scalar())\n")
    env = Stack(tmp_path).env()
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.split()[-1]) == 60_000


def test_the_production_topology_passes_no_sqlite_arguments_to_postgres(tmp_path):
    env = ProdStack(tmp_path).env()
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
    assert not [key for key in env if "CONNECT_ARGS" in key]


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
