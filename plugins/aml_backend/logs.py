"""Copy an Azure ML job's logs into the system storage account's ``logs`` container.

Best effort: the logs help a person understand a failure, so failing to copy them must never
change the task's outcome (nor hide the job's own error). It only logs a warning.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def copy_job_logs(hook, job_name: str, wasb_conn_id: str, prefix: str, container: str = "logs") -> list[str]:
    """Download the job's logs (``jobs.download(..., all=False)``: logs only, not outputs) and
    upload each file to ``container/prefix/job_name/...``; returns the blob names written."""
    written: list[str] = []
    try:
        from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

        with tempfile.TemporaryDirectory(prefix="azureml-logs-") as tmp:
            hook.download_logs(job_name, tmp)
            files = sorted(p for p in Path(tmp).rglob("*") if p.is_file())
            if not files:
                log.warning("job %s has no logs to copy", job_name)
                return written
            wasb = WasbHook(wasb_conn_id=wasb_conn_id)
            if not wasb.get_conn().get_container_client(container).exists():
                wasb.create_container(container)
            for path in files:
                blob = "/".join(p for p in (prefix.strip("/"), job_name, path.relative_to(tmp).as_posix()) if p)
                wasb.load_file(str(path), container, blob, overwrite=True)
                written.append(blob)
        log.info("copied %d log files of job %s to %s/%s", len(written), job_name, container, prefix)
    except Exception as exc:  # noqa: BLE001 -- best effort by design
        log.warning("could not copy the logs of job %s to %s: %s", job_name, container, exc)
    return written
