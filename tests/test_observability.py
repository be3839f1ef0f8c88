"""What operators see besides Airflow's own pages, piece by piece: the product's metrics
reaching a real StatsD daemon. No Airflow stack (a few seconds); tests/test_prod.py checks the
same on the running production topology."""

from __future__ import annotations

import os
import subprocess
import sys

from devstack import DEV_KEY, REPO


def test_the_products_metrics_reach_a_statsd_daemon(tmp_path):
    """Through Airflow's metrics client as the task runner sets it up from [metrics], to the
    StatsD daemon the tested topology runs (npm statsd): every product metric, by name."""
    from devstack.prod import ProdStack

    stack = ProdStack.on_free_ports(tmp_path)
    stack.root.mkdir(parents=True, exist_ok=True)
    stack.start_statsd()
    code = (
        "from airflow.sdk.observability import stats\n"
        "from airflow.sdk.observability.metrics import stats_utils\n"
        "stats.initialize(factory=stats_utils.get_stats_factory(), export_legacy_names=True)\n"
        "from observability import metrics\n"
        "metrics.run_started('local'); metrics.run_started('azureml'); metrics.run_published()\n"
        "metrics.run_quarantined(); metrics.frames_styled('local', 60, 30.0)\n"
        "metrics.azureml_job('Standard_NC4as_T4_v3', 'low_priority', 95.5, 240.0, 1)\n"
        "metrics.azureml_job('Standard_NC4as_T4_v3', 'low_priority', None, 60.0, 0)\n"
        "metrics.azureml_resubmitted(preempted=True); metrics.azureml_resubmitted(preempted=False)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "plugins")]),
               AIRFLOW__METRICS__STATSD_ON="True", AIRFLOW__METRICS__STATSD_HOST="127.0.0.1",
               AIRFLOW__METRICS__STATSD_PORT=str(stack.statsd_port), AIRFLOW__METRICS__STATSD_PREFIX="airflow",
               AIRFLOW_HOME=str(tmp_path / "airflow"))
    try:
        subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120, stdin=subprocess.DEVNULL)
        counters, timers = {}, {}
        for _ in range(50):  # UDP: give the daemon a moment
            counters, timers = stack.received("counters"), stack.received("timers")
            if "airflow.vst.azureml.resubmissions" in counters:
                break
        vst = {k.removeprefix("airflow.vst."): v for k, v in counters.items() if k.startswith("airflow.vst.")}
        assert vst == {"runs.started.local": 1, "runs.started.azureml": 1, "runs.published": 1,
                       "runs.quarantined": 1, "frames.styled.local": 60,
                       "azureml.node_seconds.low_priority.Standard_NC4as_T4_v3": 300,
                       "azureml.preemptions": 2, "azureml.resubmissions": 2}
        assert timers["airflow.vst.score.frame_time.local"] == 500  # ms per frame
        assert timers["airflow.vst.azureml.queue_wait"] == 95500
        assert DEV_KEY not in (stack.root / "statsd.log").read_text()
    finally:
        stack.stop()
