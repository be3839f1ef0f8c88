"""Taking uploads in: the inbox ``videos-in``, the provider's ``WasbPrefixSensor``, one run per version.

``videos-in`` holds only pending work. The provider's deferrable ``WasbPrefixSensor`` waits in
the triggerer until anything is there; then the oldest uploads (at most ``INBOX_BATCH`` per
watcher run) are taken in, each in three steps:

1. claim: a server-side copy to ``accepted`` under the same name, only while the upload is
   still the version listed, then a snapshot of that copy (only while the copy is still ours):
   the run reads the snapshot, so a later upload of the same name never changes its input;
2. start its processing run (run id from the upload's name and etag, the settings from its
   metadata), unless that run exists already, which is then simply passed over;
3. delete it from the inbox, only while it is still that version: a re-upload during the
   claim stays in the inbox and is the next pending work.

A crash anywhere leaves the upload in the inbox, and the next watcher run takes it again:
the run id makes its run exist once, whatever happened before. Uploads that cannot be a
run (empty, a bad name, bad settings) go to ``quarantine`` with a one-line reason. Nothing
else is kept between watcher runs: the inbox is the state, and what was taken in is never
listed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import timedelta

from airflow.providers.microsoft.azure.sensors.wasb import WasbPrefixSensor

PROCESSING_DAG = "video_style_transfer"
INBOX_BATCH = int(os.environ.get("VST_INBOX_BATCH", "500"))  # uploads per watcher run, oldest first


def processing_run_id(container: str, name: str, etag: str) -> str:
    """One run id per blob version: readable prefix, exact identity in the hash."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:80]
    digest = hashlib.sha256(f"{container}/{name}@{etag}".encode()).hexdigest()[:16]
    return f"upload__{slug}__{digest}"


class InboxSensor(WasbPrefixSensor):
    """The provider's sensor on the whole inbox (its parameters and its trigger, deferred in
    the triggerer); when it finds something, it takes the uploads in itself, which spares a
    task start between an upload and its run. Nothing for ``timeout`` seconds ends it skipped."""

    def __init__(self, *, container_name: str = "videos-in", prefix: str = "", wasb_conn_id: str = "wasb_data",
                 batch: int = INBOX_BATCH, **kwargs):
        kwargs.setdefault("deferrable", True)
        kwargs.setdefault("soft_fail", True)  # the idle timeout: a skipped run, and the next one waits on
        # Airflow 3.3 can fail a deferred task whose trigger fires within seconds of the deferral
        # (the executor's late "success" for the deferring process meets the resumed, queued try:
        # apache/airflow#67287). Taking in is idempotent, so a retry simply takes the uploads in.
        kwargs.setdefault("retries", 3)
        kwargs.setdefault("retry_delay", timedelta(seconds=2))
        super().__init__(container_name=container_name, prefix=prefix, wasb_conn_id=wasb_conn_id, **kwargs)
        self.batch = batch

    def execute(self, context) -> dict:
        super().execute(context)  # returns at once when the inbox holds something, else defers
        return self.take_in(context)

    def execute_complete(self, context, event: dict) -> dict:
        super().execute_complete(context, event)
        return self.take_in(context)

    def take_in(self, context) -> dict:
        from airflow.sdk import Variable

        from intake.settings import DEFAULTS_VARIABLE, check_defaults

        defaults = check_defaults(Variable.get(DEFAULTS_VARIABLE, default=None, deserialize_json=True))
        return take_in(RunStarter(context["ti"]), defaults, self.batch)


@dataclass(frozen=True)
class Upload:
    name: str
    etag: str
    size: int
    metadata: dict

    @property
    def run_id(self) -> str:
        return processing_run_id("videos-in", self.name, self.etag)


def take_in(runs: RunStarter, defaults: dict, batch: int = INBOX_BATCH) -> dict:
    """Claim the ``batch`` oldest uploads in the inbox and start a run for each that has none."""
    from storage.blobs import DATA_CONN, INPUTS, BlobStore

    data = BlobStore(DATA_CONN)
    listed = sorted(data.list(INPUTS), key=lambda b: (b.last_modified, b.name))
    uploads = [Upload(b.name, b.etag, b.size, b.metadata) for b in listed[:batch]]
    existing = runs.existing([u.run_id for u in uploads])
    counts = {"started": 0, "passed_over": 0, "quarantined": 0, "changed_meanwhile": 0}
    for upload in uploads:
        counts[take_in_one(data, runs, upload, defaults, upload.run_id in existing)] += 1
    print(f"inbox: {len(listed)} pending, took in {len(uploads)}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return counts | {"pending": len(listed) - len(uploads)}


def take_in_one(data, runs: RunStarter, upload: Upload, defaults: dict, has_run: bool) -> str:
    """One upload: claimed, its run started (or passed over), gone from the inbox. Says which."""
    from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
    from pipeline.tasks import quarantine
    from storage.blobs import INPUTS, InvalidBlobName, check_blob_name

    from intake.settings import InvalidSettings, resolve

    try:
        check_blob_name(upload.name)
        if not upload.size:
            raise InvalidSettings("the upload is empty (0 bytes)")
        settings, sources = resolve(upload.metadata, defaults)
    except (InvalidBlobName, InvalidSettings) as exc:
        try:
            quarantine(data, INPUTS, upload.name, str(exc), None, etag=upload.etag)
        except (ResourceModifiedError, ResourceNotFoundError):
            return "changed_meanwhile"  # uploaded again (the next pending work) or deleted
        data.delete(INPUTS, upload.name, etag=upload.etag)
        print(f"quarantined {upload.name}: {exc}")
        return "quarantined"
    try:
        if has_run:  # started before (a retry, a crash before the delete, a second watcher)
            if accepted_upload(data, upload.name) != upload.etag:
                claim(data, upload, settings, sources)
            data.delete(INPUTS, upload.name, etag=upload.etag)
            return "passed_over"
        snapshot = claim(data, upload, settings, sources)
    except (ResourceModifiedError, ResourceNotFoundError):
        return "changed_meanwhile"  # uploaded again (the next pending work) or deleted
    conf = {"input_blob": upload.name, "input_version": snapshot, **settings, "settings_from": sources}
    started = runs.start(upload.run_id, conf)
    data.delete(INPUTS, upload.name, etag=upload.etag)
    return "started" if started else "passed_over"


def claim(data, upload: Upload, settings: dict, sources: dict) -> str:
    """Copy this version to ``accepted`` (with the settings it was taken in with) and return the
    id of a snapshot of exactly that copy; ResourceModifiedError if either side changed meanwhile."""
    from storage.blobs import ACCEPTED, INPUTS

    metadata = {"upload_etag": upload.etag, "settings": json.dumps(settings), "settings_from": json.dumps(sources)}
    copied = data.copy(INPUTS, upload.name, ACCEPTED, upload.name, etag=upload.etag, metadata=metadata)
    return data.snapshot(ACCEPTED, upload.name, etag=copied)


def accepted_upload(data, name: str) -> str | None:
    """The inbox etag of the upload that ``accepted/<name>`` holds now, if any."""
    from storage.blobs import ACCEPTED

    info = data.info(ACCEPTED, name)
    return info.metadata.get("upload_etag") if info else None


class RunStarter:
    """Starts processing runs from inside one task, as many as it likes: the same request to
    the API server that ``TriggerDagRunOperator`` makes once per task, here once per run."""

    CHUNK = 50  # run ids per existence question (they travel in the query string)

    def __init__(self, ti, dag_id: str = PROCESSING_DAG):
        self.ti, self.dag_id = ti, dag_id

    def start(self, run_id: str, conf: dict) -> bool:
        """True if the run was created, False if it existed already."""
        from airflow.sdk.exceptions import ErrorType
        from airflow.sdk.execution_time.comms import ErrorResponse, TriggerDagRun
        from airflow.sdk.execution_time.task_runner import SUPERVISOR_COMMS

        answer = SUPERVISOR_COMMS.send(TriggerDagRun(dag_id=self.dag_id, run_id=run_id, conf=conf))
        if isinstance(answer, ErrorResponse):
            if answer.error == ErrorType.DAGRUN_ALREADY_EXISTS:
                return False
            raise RuntimeError(f"starting run {run_id} failed: {answer.error} {answer.detail}")
        return True

    def existing(self, run_ids: list[str]) -> set[str]:
        """Which of ``run_ids`` exist: one count per chunk, split in halves only where some do."""
        found: set[str] = set()
        for i in range(0, len(run_ids), self.CHUNK):
            found |= self._existing(run_ids[i:i + self.CHUNK])
        return found

    def _existing(self, run_ids: list[str]) -> set[str]:
        if not run_ids or not self.ti.get_dr_count(dag_id=self.dag_id, run_ids=run_ids):
            return set()
        if len(run_ids) == 1:
            return set(run_ids)
        half = len(run_ids) // 2
        return self._existing(run_ids[:half]) | self._existing(run_ids[half:])


def reprocess_run_id(sweep_run_id: str, name: str, etag: str) -> str:
    """A backfill's own run for an accepted upload: another run than the upload's first one."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:80]
    digest = hashlib.sha256(f"{sweep_run_id}/accepted/{name}@{etag}".encode()).hexdigest()[:16]
    return f"reprocess__{slug}__{digest}"


def sweep(runs: RunStarter, start, end, defaults: dict, overrides: dict | None, backfill_of: str | None) -> dict:
    """Start runs for the uploads accepted in [start, end). A backfill (``backfill_of``: its run
    id) starts runs of its own, with its ``overrides`` over each upload's original settings;
    probe then skips those already published with the same settings. Otherwise the runs are
    the watcher's own (same run ids), so a version that has one is passed over."""
    from datetime import datetime

    from azure.core.exceptions import ResourceModifiedError
    from storage.blobs import ACCEPTED, DATA_CONN, INPUTS, BlobStore

    from intake.settings import SETTINGS, check, resolve

    extra = {key: check(key, value, "the backfill's conf") for key, value in (overrides or {}).items()
             if key in SETTINGS}
    data = BlobStore(DATA_CONN)
    found = [b for b in data.list(ACCEPTED) if start <= datetime.fromisoformat(b.last_modified) < end]
    run_ids = {b.name: reprocess_run_id(backfill_of, b.name, b.etag) if backfill_of
               else processing_run_id(INPUTS, b.name, b.metadata.get("upload_etag", b.etag)) for b in found}
    existing = runs.existing(list(run_ids.values()))
    started = 0
    for blob in found:
        if run_ids[blob.name] in existing:
            continue
        if "settings" in blob.metadata:  # what the watcher took it in with
            settings, sources = json.loads(blob.metadata["settings"]), json.loads(blob.metadata["settings_from"])
        else:
            settings, sources = resolve({}, defaults)
        settings, sources = settings | extra, sources | {key: "backfill" for key in extra}
        try:
            snapshot = data.snapshot(ACCEPTED, blob.name, etag=blob.etag)
        except ResourceModifiedError:
            continue  # taken in again meanwhile: that version has its own run
        conf = {"input_blob": blob.name, "input_version": snapshot, **settings, "settings_from": sources}
        started += runs.start(run_ids[blob.name], conf)
    print(f"{len(found)} upload(s) accepted in [{start}, {end}): {started} run(s) started, "
          f"{len(found) - started} had one")
    return {"accepted": len(found), "started": started}
