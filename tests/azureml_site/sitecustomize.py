"""Puts the fake Azure ML service behind ``MLClient`` in an ``airflow dags test`` process.

Only when ``VST_FAKE_AZUREML`` is set (by tests/test_dags.py) and only in the ``airflow``
command itself: everything else in that process (the DAG, the operator, the trigger, the
SAS tokens, Azurite) is real; the fake's jobs run their command under ``mpiexec``.
"""

import json
import os
import sys

if os.environ.get("VST_FAKE_AZUREML") and os.path.basename(sys.argv[0] if sys.argv else "") == "airflow":
    settings = json.loads(os.environ["VST_FAKE_AZUREML"])
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
    from pathlib import Path

    from aml_backend import hook
    from fake_mlclient import BlobMountedFakeAzureML

    service = BlobMountedFakeAzureML(settings["account_urls"], Path(settings["work_root"]), step=0.05,
                                     preempt_after=settings.get("preempt_after", 2))
    service.script(*settings.get("outcomes", []))
    hook.MLClient = service.client
