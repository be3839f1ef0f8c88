"""Taking uploads in: the inbox ``videos-in``, the provider's ``WasbPrefixSensor``, one run per version.

``videos-in`` holds only pending work. The provider's deferrable ``WasbPrefixSensor`` waits in
the triggerer until anything is there; then the oldest uploads (at most ``INBOX_BATCH`` per
watcher run) are taken in, each in three steps:

1. claim: a server-side copy to ``accepted`` under the same name, only while the upload is
   still the version listed, then a snapshot of that copy (only while the copy is still ours):
   the run reads the snapshot, so a later upload of the same name never changes its input.
   The version is written to the acceptance ledger (``intake.ledger``), which the sweep reads;
2. start its processing run (run id from the upload's name and etag, the settings from its
   metadata), unless that run exists already, which is then simply passed over;
3. delete it from the inbox, only while it is still that version: a re-upload during the
   claim stays in the inbox and is the next pending work.

A crash anywhere leaves the upload in the inbox, and the next watcher run takes it again:
the run id makes its run exist once, whatever happened before. Uploads that cannot be a
run (empty, a bad name, a setting the rules refuse, a style picture or model that is not
there) go to ``quarantine`` with a one-line reason before anything runs; so does one whose
taking in fails ``TAKE_IN_TRIES`` times in a row (a copy that fails or times out, any other
storage error, a run start that Airflow refuses), while the rest of the batch goes on. A
container that is missing fails the watcher run in one line naming it: an operator's fix.
Nothing else is kept between watcher runs: the inbox is the state.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from datetime import timedelta

from airflow.providers.microsoft.azure.sensors.wasb import WasbPrefixSensor
from airflow.providers.microsoft.azure.triggers.wasb import WasbPrefixSensorTrigger

PROCESSING_DAG = "video_style_transfer"
INBOX_BATCH = int(os.environ.get("VST_INBOX_BATCH", "500"))  # uploads per watcher run, oldest first
TAKE_IN_TRIES = 3  # per upload and watcher run; after the last it is quarantined with its error
RETRY_SECONDS = 2.0  # before the second try; twice that before the third
CLAIM_COPY_SECONDS = 300  # a copy within one account is usually done at once; one still pending is a failed try


def processing_run_id(container: str, name: str, etag: str) -> str:
    """One run id per blob version: readable prefix, exact identity in the hash."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:80]
    digest = hashlib.sha256(f"{container}/{name}@{etag}".encode()).hexdigest()[:16]
    return f"upload__{slug}__{digest}"


class InboxTrigger(WasbPrefixSensorTrigger):
    """The provider's trigger, quiet: its loop logs a line at INFO on every empty poll, which
    at a poll a second is 86,400 lines a day in the triggerer's and the task's log. Same
    parameters, same check, same events."""

    def serialize(self):
        _, kwargs = super().serialize()
        return f"{__name__}.{type(self).__name__}", kwargs

    async def run(self):
        from airflow.providers.microsoft.azure.hooks.wasb import WasbAsyncHook
        from airflow.triggers.base import TriggerEvent

        hook = WasbAsyncHook(wasb_conn_id=self.wasb_conn_id, public_read=self.public_read)
        try:
            async with await hook.get_async_conn():
                while not await hook.check_for_prefix_async(container_name=self.container_name, prefix=self.prefix,
                                                            **self.check_options):
                    await asyncio.sleep(self.poke_interval)
        except Exception as exc:  # noqa: BLE001 - the sensor gets it as an event and fails on it
            yield TriggerEvent({"status": "error", "message": str(exc)})
            return
        yield TriggerEvent({"status": "success", "message": f"uploads in {self.container_name}"})


class InboxSensor(WasbPrefixSensor):
    """The provider's sensor on the whole inbox (its parameters, its trigger made quiet, deferred
    in the triggerer); when it finds something, it takes the uploads in itself, which spares a
    task start between an upload and its run. Nothing for ``timeout`` seconds ends it skipped;
    any error (the trigger's too) fails it, so that the watcher's trouble shows."""

    def __init__(self, *, container_name: str = "videos-in", prefix: str = "", wasb_conn_id: str = "wasb_data",
                 batch: int = INBOX_BATCH, **kwargs):
        kwargs.setdefault("deferrable", True)
        # Airflow 3.3 can fail a deferred task whose trigger fires within seconds of the deferral
        # (the executor's late "success" for the deferring process meets the resumed, queued try:
        # apache/airflow#67287). Taking in is idempotent, so a retry simply takes the uploads in.
        kwargs.setdefault("retries", 3)
        kwargs.setdefault("retry_delay", timedelta(seconds=2))
        super().__init__(container_name=container_name, prefix=prefix, wasb_conn_id=wasb_conn_id, **kwargs)
        self.batch = batch

    def poke(self, context) -> bool:
        """The provider's poke, after a check that the inbox exists (an error naming it otherwise)."""
        self.inbox_must_exist()
        return super().poke(context)

    def inbox_must_exist(self) -> None:
        """AirflowFailException, in one line naming it, where the inbox is missing: no retry helps."""
        from airflow.sdk.exceptions import AirflowFailException
        from storage.blobs import BlobStore, MissingContainer

        try:
            BlobStore(self.wasb_conn_id).require(self.container_name)
        except MissingContainer as exc:
            raise AirflowFailException(str(exc)) from None

    def execute(self, context) -> dict:
        """The provider's ``execute`` with the quiet trigger: at once when the inbox holds something."""
        if not self.poke(context):
            self.defer(timeout=timedelta(seconds=self.timeout), method_name="execute_complete",
                       trigger=InboxTrigger(container_name=self.container_name, prefix=self.prefix,
                                            wasb_conn_id=self.wasb_conn_id, check_options=self.check_options,
                                            public_read=self.public_read, poke_interval=self.poke_interval))
        return self.take_in(context)

    def execute_complete(self, context, event: dict) -> dict:
        if event and event.get("status") == "error":  # the trigger's error, in one line
            from airflow.sdk.exceptions import AirflowFailException

            try:
                self.inbox_must_exist()  # a missing inbox says so, naming it
            except AirflowFailException:
                raise
            except Exception:  # noqa: BLE001 - the check meets the trigger's trouble: its message says it
                pass
            raise RuntimeError(f"waiting for uploads failed: {(event['message'].strip() or '?').splitlines()[0]}")
        super().execute_complete(context, event)
        return self.take_in(context)

    def resume_execution(self, next_method, next_kwargs, context):
        """The idle timeout skips the run (the next one waits on); every other error fails it."""
        from airflow.sdk.exceptions import AirflowSensorTimeout, AirflowSkipException

        try:
            return super().resume_execution(next_method, next_kwargs, context)
        except AirflowSensorTimeout:
            raise AirflowSkipException(f"nothing uploaded for {self.timeout:.0f} s: the next run waits on") from None

    def take_in(self, context) -> dict:
        from airflow.sdk import Variable
        from airflow.sdk.exceptions import AirflowFailException
        from storage.blobs import MissingContainer

        from intake.settings import DEFAULTS_VARIABLE, check_defaults

        defaults = check_defaults(Variable.get(DEFAULTS_VARIABLE, default=None, deserialize_json=True))
        try:
            return take_in(RunStarter(context["ti"]), defaults, self.batch)
        except MissingContainer as exc:  # no retry helps: an operator makes it
            raise AirflowFailException(str(exc)) from None


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
    """Claim the ``batch`` oldest uploads in the inbox and start a run for each that has none.
    Fails at the end, after the rest of the batch, if some upload could be neither taken in
    nor quarantined (it stays in the inbox for the next run)."""
    from storage.blobs import ACCEPTED, DATA_CONN, INPUTS, LEDGER, QUARANTINE, STYLES, SYSTEM_CONN, BlobStore

    data, system = BlobStore(DATA_CONN), BlobStore(SYSTEM_CONN)
    listed = sorted(data.list(INPUTS), key=lambda b: (b.last_modified, b.name))
    data.require(ACCEPTED, QUARANTINE, STYLES)
    system.require(LEDGER)
    uploads = [Upload(b.name, b.etag, b.size, b.metadata) for b in listed[:batch]]
    existing = runs.existing([u.run_id for u in uploads])
    counts = {"started": 0, "passed_over": 0, "quarantined": 0, "changed_meanwhile": 0, "failed": 0}
    for upload in uploads:
        counts[take_in_one(data, system, runs, upload, defaults, upload.run_id in existing)] += 1
    print(f"inbox: {len(listed)} pending, took in {len(uploads)}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    if counts["failed"]:
        raise RuntimeError(f"{counts['failed']} upload(s) could be neither taken in nor quarantined "
                           "(the log says why); they stay in the inbox, the next watcher run tries again")
    return counts | {"pending": len(listed) - len(uploads)}


def take_in_one(data, system, runs: RunStarter, upload: Upload, defaults: dict, has_run: bool) -> str:
    """One upload: checked, claimed, its run started (or passed over), gone from the inbox;
    tried ``TAKE_IN_TRIES`` times, then quarantined. Says which."""
    from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
    from pipeline.tasks import BadInput
    from storage.blobs import InvalidBlobName, MissingContainer

    from intake.settings import InvalidSettings

    for attempt in range(1, TAKE_IN_TRIES + 1):
        try:
            try:
                settings, sources = checked(data, upload, defaults)
            except (InvalidBlobName, InvalidSettings, BadInput) as exc:
                return refuse(data, upload, str(exc))
            return start_one(data, system, runs, upload, settings, sources, has_run)
        except MissingContainer:
            raise
        except (ResourceModifiedError, ResourceNotFoundError) as exc:
            if changed(data, upload):
                return "changed_meanwhile"  # uploaded again (the next pending work) or deleted
            error = exc  # the upload is as listed: something else refused (a lease on the copy, ...)
        except Exception as exc:  # noqa: BLE001 - whatever fails for this upload must not stop the others
            error = exc
        print(f"taking in {upload.name} failed (try {attempt} of {TAKE_IN_TRIES}): {one_line(error)}")
        if attempt < TAKE_IN_TRIES:
            time.sleep(RETRY_SECONDS * attempt)
    return refuse(data, upload, f"not taken in after {TAKE_IN_TRIES} tries: {one_line(error)}")


def checked(data, upload: Upload, defaults: dict) -> tuple[dict, dict]:
    """The upload's settings, by the rules every way in shares, and the style picture or model
    they name, there and within its limits: InvalidSettings, InvalidBlobName or BadInput if not."""
    from pipeline.tasks import check_model_size, check_style_image
    from storage.blobs import STYLES, check_blob_name

    from intake.settings import InvalidSettings, resolve

    check_blob_name(upload.name)
    if not upload.size:
        raise InvalidSettings("the upload is empty (0 bytes)")
    settings, sources = resolve(upload.metadata, defaults)
    check_style_image(data, settings)
    if settings.get("model_blob"):
        check_model_size(data.info(STYLES, settings["model_blob"]), settings["model_blob"])
    return settings, sources


def start_one(data, system, runs: RunStarter, upload: Upload, settings: dict, sources: dict, has_run: bool) -> str:
    from storage.blobs import INPUTS

    if has_run:  # started before (a retry, a crash before the delete, a second watcher)
        if accepted_upload(data, upload.name) != upload.etag:
            claim(data, system, upload, settings, sources)
        data.delete(INPUTS, upload.name, etag=upload.etag)
        return "passed_over"
    snapshot = claim(data, system, upload, settings, sources)
    conf = {"input_blob": upload.name, "input_version": snapshot, **settings, "settings_from": sources}
    started = runs.start(upload.run_id, conf)
    data.delete(INPUTS, upload.name, etag=upload.etag)
    return "started" if started else "passed_over"


def refuse(data, upload: Upload, reason: str) -> str:
    """Quarantine this version with its reason and take it out of the inbox."""
    from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
    from pipeline.tasks import quarantine
    from storage.blobs import INPUTS, MissingContainer

    try:
        quarantine(data, INPUTS, upload.name, reason, None, etag=upload.etag)
    except (ResourceModifiedError, ResourceNotFoundError):
        if changed(data, upload):
            return "changed_meanwhile"
        print(f"quarantining {upload.name} failed, it stays in the inbox ({reason})")
        return "failed"
    except MissingContainer:
        raise
    except Exception as exc:  # noqa: BLE001 - the rest of the batch goes on
        print(f"quarantining {upload.name} failed, it stays in the inbox: {one_line(exc)} ({reason})")
        return "failed"
    data.delete(INPUTS, upload.name, etag=upload.etag)
    print(f"quarantined {upload.name}: {reason}")
    from pipeline.notifications import notify_quarantined
    from storage.blobs import QUARANTINE

    notify_quarantined(upload.name, reason, f"{QUARANTINE}/{upload.name}", (upload.metadata or {}).get("notify_email"))
    return "quarantined"


def changed(data, upload: Upload) -> bool:
    """The inbox no longer holds this version (uploaded again, or deleted); False where that
    cannot be told now (the caller counts a failed try)."""
    from storage.blobs import INPUTS

    try:
        now = data.info(INPUTS, upload.name)
    except Exception:  # noqa: BLE001 - a storage error here is the try's failure, not the batch's
        return False
    return now is None or now.etag != upload.etag


def one_line(exc: Exception) -> str:
    """An error as one line: the SDK's first line of its message and the service's error code."""
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    code = getattr(exc, "error_code", None)
    return f"{lines[0]}" + (f" ({code})" if code and str(code) not in lines[0] else "")


def claim(data, system, upload: Upload, settings: dict, sources: dict) -> str:
    """Copy this version to ``accepted`` (with the settings it was taken in with), snapshot
    exactly that copy, write it to the ledger; return the snapshot's id.
    ResourceModifiedError if either side changed meanwhile."""
    from datetime import UTC, datetime

    from storage.blobs import ACCEPTED, INPUTS

    from intake import ledger

    metadata = {"upload_etag": upload.etag, "settings": json.dumps(settings), "settings_from": json.dumps(sources)}
    copied = data.copy(INPUTS, upload.name, ACCEPTED, upload.name, etag=upload.etag, metadata=metadata,
                       timeout=CLAIM_COPY_SECONDS)
    snapshot = data.snapshot(ACCEPTED, upload.name, etag=copied)
    ledger.record(system, ledger.Entry(upload.name, copied, snapshot, upload.etag, datetime.now(UTC), settings,
                                       sources))
    return snapshot


def accepted_upload(data, name: str) -> str | None:
    """The inbox etag of the upload that ``accepted/<name>`` holds now, if any."""
    from storage.blobs import ACCEPTED

    info = data.info(ACCEPTED, name)
    return info.metadata.get("upload_etag") if info else None


class RunStarter:
    """Starts processing runs from inside one task, as many as it likes: the request to the
    API server that ``TriggerDagRunOperator`` makes once per task, here once per run.

    Airflow 3.3 has no public interface for that (the operator's path is one run per task; the
    REST API would need a user's credentials on the workers), so this sends the Task SDK's own
    message through its channel to the supervisor: docs/architecture.md#starting-runs says why,
    and tests/test_run_settings.py fails, naming what moved, when an Airflow upgrade changes it."""

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
            raise RuntimeError(f"starting run {run_id} was refused: {answer.error} {answer.detail}")
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


def reprocess_run_id(backfill: str, overrides: dict, name: str, etag: str) -> str:
    """A backfill's own run for a version taken in, other than its first run: one per backfill
    (``backfill``: the sweep run and how often it was cleared, since Airflow reuses a logical
    date's run when it reprocesses it) and per settings it gives."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:80]
    settings = json.dumps(overrides, sort_keys=True)
    digest = hashlib.sha256(f"{backfill}/{settings}/accepted/{name}@{etag}".encode()).hexdigest()[:16]
    return f"reprocess__{slug}__{digest}"


def sweep(runs: RunStarter, start, end, overrides: dict | None, backfill: str | None) -> dict:
    """Start runs for the versions taken in during [start, end), from the ledger's hours.

    A backfill (``backfill``: its identity) starts runs of its own, each reading the snapshot
    taken at the claim, with its ``overrides`` over the settings the upload was taken in with;
    probe then skips those already published with the same settings. Otherwise the runs are
    the watcher's own (same run ids), so a version that has one is passed over."""
    from storage.blobs import ACCEPTED, DATA_CONN, INPUTS, SYSTEM_CONN, BlobStore

    from intake import ledger
    from intake.settings import SETTINGS, InvalidSettings, check, check_together

    overrides = dict(overrides or {})
    where = "the backfill's conf"
    unknown = sorted(set(overrides) - set(SETTINGS))
    if unknown:
        raise InvalidSettings(f"{where}: {unknown[0]!r} is not a setting (known: {', '.join(SETTINGS)})")
    if overrides and backfill is None:
        raise InvalidSettings("settings in the conf apply to backfills only: `airflow backfill create --dag-id "
                              "blob_sweep --reprocess-behavior completed --dag-run-conf ...` (docs/uploads.md)")
    extra = {key: check(key, value, where) for key, value in overrides.items()}
    data, system = BlobStore(DATA_CONN), BlobStore(SYSTEM_CONN)
    found = ledger.entries(system, start, end)
    run_ids = [reprocess_run_id(backfill, extra, e.name, e.etag) if backfill is not None
               else processing_run_id(INPUTS, e.name, e.upload_etag) for e in found]
    existing = runs.existing(run_ids)
    started = gone = 0
    for entry, run_id in zip(found, run_ids):
        if run_id in existing:
            continue
        if data.info(ACCEPTED, entry.name, snapshot=entry.snapshot) is None:
            gone += 1  # pruned by the retention (docs/uploads.md#retention)
            continue
        settings = check_together(entry.settings | extra, where)
        sources = entry.settings_from | {key: "backfill" for key in extra}
        conf = {"input_blob": entry.name, "input_version": entry.snapshot, **settings, "settings_from": sources}
        started += runs.start(run_id, conf)
    print(f"{len(found)} upload version(s) taken in during [{start}, {end}): {started} run(s) started, "
          f"{len(found) - started - gone} had one" + (f", {gone} pruned by the retention" if gone else ""))
    return {"accepted": len(found), "started": started, "pruned": gone}

