"""What one blob_sweep run costs against history, on Azurite: the storage side of a sweep of
one window (the requests ``intake.inbox.sweep`` makes, and their time) with a month of
accepted uploads taken in outside the window vs none.

The window's uploads are taken in as the watcher does (``intake.inbox.claim``: the copy to
``accepted``, its snapshot, the ledger line). The history is ``--history`` blobs in
``accepted`` with their ledger lines spread over the 30 days before the window (the default
retention, dags/housekeeping.py). A sweep reads its window's hours of the ledger by name, so
its requests must be the same with and without the history, and its time about the same.
The two cases run on two Azurites, alike but for the history, swept in turns.
The run starts are counted, not made (their cost is one request each to the API server and
one existence question per 50 versions, whatever the history); beside it, for contrast, what
one listing of ``accepted`` with metadata costs then (what the sweep did before the ledger).

    .venv/bin/python bench/sweep.py --window 20 --history 20000
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from uploads import upload_many  # bench/uploads.py also puts the repo and plugins/ on sys.path

from devstack import SYSTEM_ACCOUNT, Stack, free_port  # noqa: E402

RETENTION_HOURS = 30 * 24


class CountedStarts:
    """Stands where RunStarter does (the Airflow side, not measured here): no run exists yet,
    every start succeeds, and each is counted."""

    def __init__(self):
        self.started = 0

    def existing(self, run_ids: list[str]) -> set[str]:
        return set()

    def start(self, run_id: str, conf: dict) -> bool:
        self.started += 1
        return True


@contextlib.contextmanager
def counted_requests():
    """Every HTTP request the storage SDK sends meanwhile, by kind (``list`` for a listing)."""
    from azure.core.pipeline.transport import RequestsTransport

    counts: Counter = Counter()
    send = RequestsTransport.send

    def counting(self, request, **kwargs):
        counts["list" if "comp=list" in request.url else request.method] += 1
        return send(self, request, **kwargs)

    RequestsTransport.send = counting
    try:
        yield counts
    finally:
        RequestsTransport.send = send


def use(stack) -> None:
    """Point the pipeline's connections (read by each BlobStore as it is made) at ``stack``."""
    for key in ("AIRFLOW_CONN_WASB_DATA", "AIRFLOW_CONN_WASB_SYSTEM"):
        os.environ[key] = stack.env()[key]


def sweep_once(stack, start: datetime, end: datetime) -> tuple[float, dict, tuple[int, int]]:
    """One sweep of [start, end) on ``stack``: its seconds, its requests, (versions found, runs started)."""
    from intake.inbox import sweep
    from storage.blobs import DATA_CONN, BlobStore

    use(stack)
    assert f":{stack.blob_port}/" in BlobStore(DATA_CONN).client.url  # the connection really is this stack's
    starts = CountedStarts()
    with counted_requests() as counts, contextlib.redirect_stdout(io.StringIO()):
        began = time.perf_counter()
        result = sweep(starts, start, end, None, None)
        seconds = time.perf_counter() - began
    return seconds, dict(counts), (result["accepted"], starts.started)


def measure_sweeps(stacks: dict, windows: dict, rounds: int) -> dict:
    """Each stack's median seconds over ``rounds`` sweeps of its window, taken in turns (the
    order swapped every round) so that the machine's load drifts over both alike, and the
    requests of one sweep (the same every time)."""
    seconds: dict = {key: [] for key in stacks}
    requests: dict = {key: [] for key in stacks}
    found: dict = {key: set() for key in stacks}
    order = list(stacks)
    for round_ in range(rounds):
        for key in order if round_ % 2 == 0 else order[::-1]:
            took, counts, result = sweep_once(stacks[key], *windows[key])
            seconds[key].append(took)
            requests[key].append(counts)
            found[key].add(result)
    for key in stacks:
        assert all(r == requests[key][0] for r in requests[key]), requests[key]
        assert len(found[key]) == 1, found[key]
    return {key: {"seconds": statistics.median(seconds[key]), "requests": requests[key][0],
                  "accepted": next(iter(found[key]))[0], "started": next(iter(found[key]))[1]} for key in stacks}


def take_in_window(stack, count: int) -> tuple[datetime, datetime]:
    """``count`` uploads taken in now, as the watcher does; the window that holds them."""
    from intake.inbox import Upload, claim
    from storage.blobs import DATA_CONN, INPUTS, SYSTEM_CONN, BlobStore

    data, system = BlobStore(DATA_CONN), BlobStore(SYSTEM_CONN)
    began = datetime.now(UTC)
    etags = upload_many(stack.blob_client().get_container_client(INPUTS), [f"window/{i:04d}.mp4" for i in range(count)])
    for name, etag in sorted(etags.items()):
        claim(data, system, Upload(name, etag, len(name), {}), {"style": "19"}, {"style": "default"})
        data.delete(INPUTS, name, etag=etag)
    return began, datetime.now(UTC) + timedelta(seconds=1)


def add_history(stack, count: int, before: datetime) -> int:
    """``count`` uploads in accepted (with the metadata a claim writes) and their ledger lines,
    spread over the hours of the retention before ``before``; returns the ledger's hours written."""
    from intake import ledger
    from storage.blobs import ACCEPTED, LEDGER, SYSTEM_CONN, BlobStore

    names = [f"archive/{i:05d}.mp4" for i in range(count)]
    metadata = {"upload_etag": "0x8DE00000000000", "settings": '{"style": "19"}',
                "settings_from": '{"style": "default"}'}
    etags = upload_many(stack.blob_client().get_container_client(ACCEPTED), names, threads=10, metadata=metadata)
    last_hour = before.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    lines: dict[str, list[str]] = {}
    for i, name in enumerate(names):
        at = last_hour - timedelta(hours=i % RETENTION_HOURS, minutes=i % 60)
        entry = ledger.Entry(name, etags[name], "2026-01-01T00:00:00.0000000Z", "0x8DE00000000000", at,
                             {"style": "19"}, {"style": "default"})
        lines.setdefault(ledger.hour_blob(at), []).append(entry.line())
    from concurrent.futures import ThreadPoolExecutor

    system = BlobStore(SYSTEM_CONN)
    with ThreadPoolExecutor(10) as pool:  # one block per hour: a claim writes one per line, the reads are the same
        list(pool.map(lambda item: system.append_text(LEDGER, item[0], "".join(item[1])), lines.items()))
    assert sum(1 for _ in stack.blob_client(SYSTEM_ACCOUNT).get_container_client(LEDGER).list_blobs()) >= len(lines)
    return len(lines)


def listing_seconds(rounds: int) -> tuple[float, int]:
    """What one listing of all of accepted with metadata costs (the sweep before the ledger)."""
    from storage.blobs import ACCEPTED, DATA_CONN, BlobStore

    data, seconds = BlobStore(DATA_CONN), []
    for _ in range(rounds):
        began = time.perf_counter()
        listed = len(data.list(ACCEPTED))
        seconds.append(time.perf_counter() - began)
    return statistics.median(seconds), listed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", type=int, default=20, help="uploads taken in during the swept window")
    parser.add_argument("--history", type=int, default=20000, help="uploads taken in before the window")
    parser.add_argument("--rounds", type=int, default=30, help="sweeps measured each time (the median is kept)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    # two Azurites, alike but for the history, swept in turns
    stacks = {key: Stack(root / key, blob_port=free_port(), api_port=free_port()) for key in ("none", "full")}
    try:
        windows = {}
        for key, stack in stacks.items():
            stack.start_azurite()
            stack.create_containers()
            use(stack)
            windows[key] = take_in_window(stack, args.window)
        use(stacks["full"])
        hours = add_history(stacks["full"], args.history, windows["full"][0])
        load = os.getloadavg()
        measured = measure_sweeps(stacks, windows, args.rounds)
        load = [max(a, b) for a, b in zip(load, os.getloadavg())]
        use(stacks["full"])
        listing, listed = listing_seconds(max(3, args.rounds // 10))
    finally:
        for stack in stacks.values():
            stack.stop()
    none, full = measured["none"], measured["full"]
    ratio = full["seconds"] / none["seconds"]
    print(f"sweep of a window of {args.window} uploads (median of {args.rounds}, in turns): "
          f"{none['seconds'] * 1000:.1f} ms with no other uploads, {full['seconds'] * 1000:.1f} ms with "
          f"{args.history} taken in outside it over {hours} hours ({ratio:.2f}x); requests per sweep "
          f"{none['requests']} vs {full['requests']}; runs started {none['started']} vs {full['started']}; "
          f"load average (1, 5, 15 min) up to {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f}", flush=True)
    print(f"for contrast, one listing of accepted with metadata then: {listing * 1000:.1f} ms for {listed} blobs",
          flush=True)
    if args.json:
        args.json.write_text(json.dumps({"window": args.window, "history": args.history, "ledger_hours": hours,
                                         "none": none, "full": full, "ratio": ratio, "load_average": load,
                                         "listing": {"seconds": listing, "blobs": listed}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
