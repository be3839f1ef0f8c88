"""An Azure ML job's log: followed into the task log while the job runs, copied to the system
storage account's ``logs`` container when it ends.

Both read what the job's processes print, ``user_logs/`` under the job's default output in the
workspace's artifact store (``std_log.txt``; ``std_log_process_N.txt`` per MPI rank), as the
studio shows it. Best effort: a log helps a person understand a job, so failing to read or
copy it never changes the task's outcome (nor hides the job's own error); it logs a warning.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


class LogTail:
    """The lines the job's user logs gained since the last call (the trigger calls it each poll)."""

    def __init__(self, hook, job_name: str):
        self.hook, self.job_name = hook, job_name
        self.read: dict[str, int] = {}  # blob -> bytes read
        self.partial: dict[str, bytes] = {}  # blob -> the start of a line not yet ended
        self.where = None
        self.warned = False

    def new_lines(self) -> list[str]:
        try:
            if self.where is None:
                self.where = self.hook.user_logs(self.job_name)
            container, prefix = self.where
            lines = []
            for blob in container.list_blobs(name_starts_with=prefix):
                start = self.read.get(blob.name, 0)
                if blob.size <= start:
                    continue
                data = container.download_blob(blob.name, offset=start, length=blob.size - start).readall()
                self.read[blob.name] = start + len(data)
                *complete, self.partial[blob.name] = (self.partial.get(blob.name, b"") + data).split(b"\n")
                name = blob.name[len(prefix):]
                lines += [f"{name}: {line.decode('utf-8', 'replace').rstrip()}" for line in complete]
            return lines
        except Exception as exc:  # noqa: BLE001 -- best effort by design
            if not self.warned:
                log.warning("could not read the log of job %s (the task goes on without it): %s", self.job_name, exc)
                self.warned = True
            return []


def copy_job_logs(hook, job_name: str, wasb_conn_id: str, prefix: str, container: str = "logs") -> list[str]:
    """Copy each file of the job's user logs to ``container/prefix/job_name/user_logs/...``;
    returns the blob names written."""
    written: list[str] = []
    try:
        from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

        source, logs_prefix = hook.user_logs(job_name)
        blobs = [blob.name for blob in source.list_blobs(name_starts_with=logs_prefix)]
        if not blobs:
            log.warning("job %s has no logs to copy", job_name)
            return written
        wasb = WasbHook(wasb_conn_id=wasb_conn_id)
        if not wasb.get_conn().get_container_client(container).exists():
            wasb.create_container(container)
        with tempfile.TemporaryDirectory(prefix="azureml-logs-") as tmp:
            for name in blobs:
                local = Path(tmp) / Path(name).name
                local.write_bytes(source.download_blob(name).readall())
                blob = "/".join(p for p in (prefix.strip("/"), job_name, "user_logs", Path(name).name) if p)
                wasb.load_file(str(local), container, blob, overwrite=True)
                written.append(blob)
        log.info("copied %d log files of job %s to %s/%s", len(written), job_name, container, prefix)
    except Exception as exc:  # noqa: BLE001 -- best effort by design
        log.warning("could not copy the logs of job %s to %s: %s", job_name, container, exc)
    return written
