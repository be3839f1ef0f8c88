"""Upload -> processing run, on the stack `make demo` left running (.demo): N uploads, one at a
time with the watcher idle in between, each timed until it left the inbox (taken in), until its run was created (its run_after)
and until the scheduler started it (start_date).

    make demo && .venv/bin/python bench/upload_latency.py --uploads 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugins")]

from intake.inbox import processing_run_id  # noqa: E402

from devstack import Stack, airflow_json  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uploads", type=int, default=5)
    parser.add_argument("--root", type=Path, default=REPO / ".demo", help="the running stack's folder")
    parser.add_argument("--idle", type=float, default=15, help="seconds between uploads (the watcher defers)")
    args = parser.parse_args()
    stack = Stack(args.root)  # the ports `make demo` uses
    inbox = stack.blob_client().get_container_client("videos-in")
    rows = []
    for i in range(args.uploads):
        time.sleep(args.idle)
        name = f"latency/{time.time_ns()}.mp4"
        blob = inbox.get_blob_client(name)
        uploaded = time.time()
        etag = str(blob.upload_blob(b"not a video: only the take-in is timed")["etag"]).strip('"')
        while any(True for _ in inbox.list_blobs(name_starts_with=name)):
            time.sleep(0.1)
        taken_in = time.time() - uploaded
        run_id = processing_run_id("videos-in", name, etag)
        while not (run := {r["run_id"]: r for r in airflow_json(stack.airflow(
                "dags", "list-runs", "video_style_transfer", "-o", "json"))}.get(run_id)) or not run.get("start_date"):
            time.sleep(1)
        created = datetime.fromisoformat(run["run_after"]).timestamp() - uploaded  # set when it was created
        started = datetime.fromisoformat(run["start_date"]).timestamp() - uploaded
        rows.append((taken_in, created, started))
        print(f"upload {i + 1}: taken in {taken_in:.1f} s, run created {created:.1f} s, started {started:.1f} s",
              flush=True)
    for label, values in zip(("taken in", "run created", "run started"), zip(*rows)):
        print(f"{label:>12}: median {statistics.median(values):.1f} s (min {min(values):.1f}, max {max(values):.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
