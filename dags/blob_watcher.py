"""blob_watcher: every upload to videos-in is taken in and starts exactly one video_style_transfer run.

    wait_for_uploads   (the provider's WasbPrefixSensor on the inbox, deferred in the triggerer;
                        when it fires, the same task takes the uploads in)

Runs continuously, one run at a time. videos-in is the inbox: whatever is there is pending
work. Each run waits until the inbox holds something, then takes in its oldest uploads (a
bounded batch; a burst drains over consecutive runs): each is copied to ``accepted``, its
processing run is started with the settings from the upload's metadata (else the Variable
``video_style_transfer_defaults``, else the form's defaults) and a snapshot that pins its
bytes, and it leaves the inbox. The processing run id comes from the blob's name and etag:
a version is processed once, a re-upload with new content is processed again. A run that
sees nothing for an hour ends skipped, so runs never pile up. See docs/uploads.md.
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import dag
from intake.inbox import InboxSensor

POLL_SECONDS = float(os.environ.get("VST_WATCH_POLL_SECONDS", "1"))
IDLE_SECONDS = float(os.environ.get("VST_WATCH_IDLE_SECONDS", "3600"))


@dag(dag_id="blob_watcher", schedule="@continuous", start_date=datetime(2026, 1, 1), catchup=False,
     max_active_runs=1, tags=["video", "watcher"], doc_md=__doc__)
def blob_watcher():
    InboxSensor(task_id="wait_for_uploads", container_name="videos-in", prefix="", wasb_conn_id="wasb_data",
                poke_interval=POLL_SECONDS, timeout=IDLE_SECONDS)


blob_watcher()
