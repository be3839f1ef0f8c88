"""Uploads at volume, on a local stack (Azurite + standalone Airflow, video_style_transfer paused):

1. burst: N tiny uploads at once -> the time until the inbox is empty and every version has
   exactly one queued processing run;
2. poll cost: what one poll of the watcher's trigger (the provider's prefix check on videos-in)
   costs with M processed uploads in ``accepted`` vs none.

    .venv/bin/python bench/uploads.py --burst 1500 --archive 20000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugins")]

from intake.inbox import processing_run_id  # noqa: E402

from devstack import Stack, airflow_json, free_port  # noqa: E402


def poll_seconds(polls: int, container: str = "videos-in") -> float:
    from airflow.providers.microsoft.azure.hooks.wasb import WasbAsyncHook

    async def measure():
        hook = WasbAsyncHook(wasb_conn_id="wasb_data")
        async with await hook.get_async_conn():
            started = time.perf_counter()
            for _ in range(polls):
                await hook.check_for_prefix_async(container_name=container, prefix="")
            return (time.perf_counter() - started) / polls

    return asyncio.run(measure())


def upload_many(container, names: list[str], threads: int = 8, metadata: dict | None = None) -> dict[str, str]:
    """Each name uploaded (its own name as its bytes) on ``threads`` threads: name -> etag."""
    def one(name):
        props = container.get_blob_client(name).upload_blob(name.encode(), metadata=metadata)
        return name, str(props["etag"]).strip('"')

    with ThreadPoolExecutor(threads) as pool:
        return dict(pool.map(one, names))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--burst", type=int, default=1500)
    parser.add_argument("--archive", type=int, default=20000)
    parser.add_argument("--polls", type=int, default=50)
    args = parser.parse_args()

    stack = Stack(Path(tempfile.mkdtemp(prefix="bench-uploads-")), blob_port=free_port(), api_port=free_port())
    stack.extra_env = {"AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True", "VST_WATCH_POLL_SECONDS": "1"}
    stack.start_azurite()
    try:
        stack.create_containers()
        stack.prepare_airflow()
        stack.start_airflow()
        while "blob_watcher" not in stack.airflow("dags", "list", "-o", "json").stdout:
            time.sleep(2)
        os.environ["AIRFLOW_CONN_WASB_DATA"] = stack.env()["AIRFLOW_CONN_WASB_DATA"]
        service = stack.blob_client()
        empty = poll_seconds(args.polls)

        etags = upload_many(service.get_container_client("videos-in"), [f"burst/{i:05d}.mp4" for i in range(args.burst)])
        uploaded = time.monotonic()
        stack.airflow("dags", "unpause", "blob_watcher")
        inbox = service.get_container_client("videos-in")
        while any(True for _ in inbox.list_blobs()):
            time.sleep(1)
        drained = time.monotonic() - uploaded
        runs = {r["run_id"]: r for r in airflow_json(stack.airflow("dags", "list-runs", "video_style_transfer",
                                                                   "-o", "json"))}
        expected = {processing_run_id("videos-in", name, etag) for name, etag in etags.items()}
        queued = [r for r in expected if runs.get(r, {}).get("state") == "queued"]
        watchers = airflow_json(stack.airflow("dags", "list-runs", "blob_watcher", "-o", "json"))
        print(f"burst: {args.burst} uploads at once -> {len(queued)} queued runs for {len(expected)} versions "
              f"({len(runs)} runs in all), inbox drained in {drained:.0f} s from the unpause "
              f"({args.burst / drained:.1f} uploads/s); watcher runs: {len(watchers)}, failed: "
              f"{sum(r['state'] == 'failed' for r in watchers)}", flush=True)

        stack.airflow("dags", "pause", "blob_watcher")
        accepted = service.get_container_client("accepted")
        have = sum(1 for _ in accepted.list_blobs())
        upload_many(accepted, [f"archive/{i:05d}.mp4" for i in range(max(0, args.archive - have))], threads=10)
        full = poll_seconds(args.polls)
        service.create_container("bench-empty")  # not the watcher's: what any listing costs in this account
        other = poll_seconds(args.polls, "bench-empty")
        print(f"poll cost (mean of {args.polls}): {empty * 1000:.1f} ms with nothing processed, {full * 1000:.1f} ms "
              f"with {max(have, args.archive)} processed uploads in accepted ({full / empty:.2f}x); "
              f"listing another empty container of the account then: {other * 1000:.1f} ms", flush=True)
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
