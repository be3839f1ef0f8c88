"""Statements of README and docs/ that once disagreed with the code, each checked against the
code it describes (issue: from an Azure subscription to the first video)."""

from __future__ import annotations

import ast
import re
import sys

from .helpers import REPO

sys.path.insert(0, str(REPO / "plugins"))

README = (REPO / "README.md").read_text()
ARCHITECTURE = (REPO / "docs" / "architecture.md").read_text()
DEPLOYING = (REPO / "docs" / "deploying.md").read_text()
AZUREML = (REPO / "docs" / "azureml.md").read_text()


def _dag_ids() -> set[str]:
    found = set()
    for path in (REPO / "dags").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in ("dag", "DAG"):
                for keyword in node.keywords:
                    if keyword.arg == "dag_id" and isinstance(keyword.value, ast.Constant):
                        found.add(keyword.value.value)
            if isinstance(node, ast.FunctionDef) and any(
                    getattr(getattr(d, "func", d), "id", "") == "dag" for d in node.decorator_list):
                found.add(node.name)
    return found


def test_architecture_counts_and_names_every_dag():
    ids = _dag_ids()
    assert ids == {"video_style_transfer", "blob_watcher", "blob_sweep", "housekeeping", "deployment_check"}, ids
    sentence = re.search(r"All (\w+) \(([^)]*)\) live in `dags/`", ARCHITECTURE)
    assert sentence and {"four": 4, "five": 5}.get(sentence.group(1)) == len(ids)
    assert set(re.findall(r"`(\w+)`", sentence.group(2))) == ids


def test_architecture_draws_clean_up_beside_notify_as_the_dag_wires_them():
    wiring = (REPO / "dags" / "video_style_transfer.py").read_text()
    assert "[published, previewed] >> clean_up()" in wiring and "notify(published)" in wiring
    assert "clean_up ─► notify" not in ARCHITECTURE
    diagram = re.search(r"probe ─┬─► split.*?\n```", ARCHITECTURE, re.S).group(0)
    assert "stitch_and_publish ─┬─► notify" in diagram and "└─► clean_up" in diagram
    assert "preview ─► clean_up" in diagram


def test_the_default_output_name_is_the_one_the_readme_shows():
    from pipeline.tasks import default_output_name

    assert default_output_name("trip/beach.mp4", "19", None) == "trip/beach.style-19.mp4"
    assert "`trip/beach.mp4` gives `trip/beach.style-19.mp4`" in README
    assert "<input>.style-" not in README


def test_the_readme_names_only_settings_that_exist():
    from intake.settings import PARAMS

    assert "azureml_*" not in README
    for name in re.findall(r"`(azureml_\w+)`", README):
        assert name in PARAMS, name


def test_a_backfill_makes_reprocess_runs_as_the_readme_says():
    from intake.inbox import reprocess_run_id

    assert reprocess_run_id("backfill-1", {}, "trip/beach.mp4", "0x1").startswith("reprocess__")
    backfill = README[README.index("**4. A backfill**"):README.index("## Where things land")]
    assert "`reprocess__...`" in backfill and "watcher" not in backfill


def test_the_preview_time_is_not_promised_in_seconds():
    """Measured at 243 s on the production topology (docs/deploying.md, Figures)."""
    assert "upload -> preview in videos-out, demo clip | 243 s" in DEPLOYING
    row = next(line for line in README.splitlines() if line.startswith("| preview:"))
    assert "seconds" not in row and "docs/deploying.md#figures" in row


def test_set_up_times_do_not_disagree():
    """README's 2 min 25 s is `.venv` alone; the worker venvs' time is deploying.md's."""
    assert "`.venv`\ntook 2 min 25 s" in README and "all of\n`make test`'s set-up took" not in README
    assert "| building `.venv-airflow` and `.venv-scoring` from their requirement files |" in DEPLOYING


def test_step_3_names_every_container_and_connection_the_code_uses():
    from pipeline.notifications import SMTP_CONN, WEBHOOK_CONN
    from storage.blobs import DATA_CONN, DATA_CONTAINERS, SYSTEM_CONN, SYSTEM_CONTAINERS

    step3 = DEPLOYING[DEPLOYING.index("## Step 3: Azure"):DEPLOYING.index("## Runbook")]
    for container in (*DATA_CONTAINERS, *SYSTEM_CONTAINERS):
        assert f"`{container}`" in step3, container
    ids = {m.group(1) for line in step3.splitlines() if (m := re.match(r"\| `(\w+)` \| `(wasb|azureml|http|smtp)`", line))}
    assert {DATA_CONN, SYSTEM_CONN, "azureml_default", WEBHOOK_CONN, SMTP_CONN} <= ids
    compose = (REPO / "docker" / "docker-compose.yaml").read_text()
    for conn in (DATA_CONN, SYSTEM_CONN, "azureml_default", WEBHOOK_CONN, SMTP_CONN):
        assert f"AIRFLOW_CONN_{conn.upper()}: ${{AIRFLOW_CONN_{conn.upper()}:-}}" in compose, conn


def test_identity_advice_agrees_between_deploying_and_azureml():
    """One answer: the Airflow identity holds Data Contributor on the whole system account (run
    containers are made per run), the cluster identity AcrPull and no storage role."""
    assert "Data Contributor on the run containers" not in AZUREML + DEPLOYING
    assert "the whole account" in AZUREML and "system account (the whole account)" in DEPLOYING
    cluster_rows = [line for line in DEPLOYING.splitlines() if line.startswith("| `<prefix>-cluster`")]
    assert len(cluster_rows) == 1 and "AcrPull" in cluster_rows[0] and "no storage role" in cluster_rows[0]
    assert "| AcrPull |" in AZUREML and "needs no storage role" in AZUREML


def test_the_glossary_defines_the_terms_the_docs_use():
    glossary = DEPLOYING[DEPLOYING.index("## Glossary"):]
    for term in ("rank", "segment", "etag", "snapshot", "SAS", "deferrable", "triggerer", "node-seconds"):
        assert f"\n| {term} |" in glossary, term


def test_the_runbook_covers_what_an_operator_meets():
    runbook = DEPLOYING[DEPLOYING.index("## Runbook"):DEPLOYING.index("## Glossary")]
    for case in ("A run failed", "A quarantined upload", "A stuck Azure ML job", "A preempted cluster",
                 "Scaling scoring", "Re-running one video", "Backfilling a week", "Upgrading Airflow"):
        assert f"**{case}.**" in runbook, case
    assert "python -m deployment check" in README + DEPLOYING
