"""Puts the fake Azure ML service behind ``MLClient`` in ``airflow`` processes.

Only when ``VST_FAKE_AZUREML`` is set (by the tests) and only in the ``airflow`` command
itself: everything else in that process (the DAG, the operator, the trigger, the SAS tokens,
Azurite) is real. With ``address`` (a running ``airflow standalone``, whose worker and
triggerer are separate processes) every process calls the one service the test serves
(``fake_mlclient.ServiceBridge``); without, an ``airflow dags test`` process holds its own,
whose jobs run their command under ``mpiexec``.
"""

import json
import os
import sys

if os.environ.get("VST_FAKE_AZUREML") and os.path.basename(sys.argv[0] if sys.argv else "") == "airflow":
    settings = json.loads(os.environ["VST_FAKE_AZUREML"])
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
    from pathlib import Path

    from aml_backend import hook

    if "address" in settings:
        from fake_mlclient import remote_client

        hook.MLClient = remote_client(settings["address"], settings["authkey"].encode())
    else:
        from fake_mlclient import BlobMountedFakeAzureML

        service = BlobMountedFakeAzureML(settings["account_urls"], Path(settings["work_root"]), step=0.05,
                                         preempt_after=settings.get("preempt_after", 2))
        service.script(*settings.get("outcomes", []))
        hook.MLClient = service.client
