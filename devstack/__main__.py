"""python -m devstack start|demo|demo-prod|stop|images: the local stacks for `make demo`, `make
demo-prod` and `make stop`, and docker/'s images for `make images`."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from pathlib import Path

from . import REPO, Stack, airflow_json
from .prod import QUEUES, ProdStack


def start(stack: Stack) -> None:
    if isinstance(stack, ProdStack):
        print(f"Postgres :{stack.pg_port}, Redis :{stack.redis_port}, Azurite :{stack.blob_port}; then Airflow: "
              f"scheduler, dag-processor, 2 triggerers, API server, Celery workers for {', '.join(QUEUES)}...",
              flush=True)
        stack.start()
        print(f"Airflow UI: http://127.0.0.1:{stack.api_port}  login admin / {stack.password('admin')}", flush=True)
        return
    stack.root.mkdir(parents=True, exist_ok=True)
    stack.stop()  # a previous demo's processes, if any
    stack.start_azurite()
    stack.prepare_airflow()
    print(f"Azurite:  http://127.0.0.1:{stack.blob_port} (accounts devstoreaccount1, sysaccount1)", flush=True)
    print("Airflow:  starting (scheduler, dag-processor, triggerer, API server)...", flush=True)
    stack.start_airflow()
    print(f"Airflow UI: http://127.0.0.1:{stack.api_port}  login admin / {stack.password('admin')}", flush=True)


def demo(stack: Stack, clip: Path, blob_name: str, timeout: float) -> int:
    from intake.inbox import processing_run_id

    from scoring.media.samples import make_clip

    start(stack)
    if not clip.exists():
        make_clip(clip, seconds=6, fps="30000/1001", size=(640, 360))
    blob = stack.blob_client().get_blob_client("videos-in", blob_name)
    uploaded_at = time.time()
    props = blob.upload_blob(clip.read_bytes(), overwrite=True)
    run_id = processing_run_id("videos-in", blob_name, str(props["etag"]).strip('"'))
    print(f"uploaded {clip} to videos-in/{blob_name}; waiting for the watcher to start {run_id}", flush=True)
    taken_in = watch_inbox(blob)

    deadline, seen, started, previewed = time.monotonic() + timeout, {}, None, False
    preview = stack.blob_client().get_blob_client("videos-out", output_name(blob_name) + ".preview.jpg")
    while time.monotonic() < deadline:
        if not previewed and written_after(preview, props["last_modified"]):
            previewed = True
            print(f"preview in videos-out {time.time() - uploaded_at:.1f} s after the upload", flush=True)
        runs = {r["run_id"]: r for r in airflow_json(stack.airflow("dags", "list-runs", "video_style_transfer",
                                                                   "-o", "json", check=False))}
        run = runs.get(run_id)
        if run and started is None and run.get("start_date"):
            started = datetime.fromisoformat(run["start_date"]).timestamp()
            created = datetime.fromisoformat(run["run_after"]).timestamp()
            if taken_in:
                print(f"taken in (left videos-in) {taken_in[0] - uploaded_at:.1f} s after the upload", flush=True)
            print(f"run created {created - uploaded_at:.1f} s and started {started - uploaded_at:.1f} s after the upload",
                  flush=True)
        if run:
            states = airflow_json(stack.airflow("tasks", "states-for-dag-run", "video_style_transfer", run_id,
                                                "-o", "json", check=False))
            for ti in states:
                key = ti.get("task_id")
                if ti.get("state") != seen.get(key):
                    seen[key] = ti.get("state")
                    print(f"  {key:<20} {ti.get('state')}", flush=True)
            if run["state"] in ("success", "failed"):
                print(f"run {run['state']} in {time.time() - uploaded_at:.0f} s", flush=True)
                return 0 if run["state"] == "success" and fetch_output(stack, blob_name) else 1
        time.sleep(2)
    print(f"timed out after {timeout:.0f} s; the stack is still running (make stop)", file=sys.stderr)
    return 1


def watch_inbox(blob) -> list[float]:
    """Starts watching the upload in videos-in; the list gets the time it left (was taken in)."""
    import threading

    from azure.core.exceptions import ResourceNotFoundError

    left: list[float] = []

    def watch():
        for _ in range(3000):  # 10 minutes at most
            try:
                blob.get_blob_properties()
            except ResourceNotFoundError:
                left.append(time.time())
                return
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()
    return left


def written_after(blob, moment: datetime) -> bool:
    """The blob exists and was written after ``moment`` (a previous demo's copy does not count)."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return blob.get_blob_properties().last_modified > moment
    except ResourceNotFoundError:
        return False


def output_name(blob_name: str) -> str:
    from pipeline.tasks import default_output_name

    return default_output_name(blob_name, "19", None)


def fetch_output(stack: Stack, blob_name: str) -> bool:
    """The video, its preview and its contact strip, into out/."""
    container = stack.blob_client().get_container_client("videos-out")
    video = output_name(blob_name)
    for name in (video, video + ".preview.jpg", video + ".strip.jpg"):
        out = REPO / "out" / Path(name).name
        out.parent.mkdir(exist_ok=True)
        out.write_bytes(container.download_blob(name).readall())
        print(f"videos-out/{name} -> {out}")
    return True


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    parser.add_argument("command", choices=["start", "demo", "start-prod", "demo-prod", "stop", "images"])
    parser.add_argument("--root", type=Path, help="state folder (default: .demo, or .demo-prod for *-prod)")
    parser.add_argument("--clip", type=Path, default=REPO / "out" / "sample.mp4")
    parser.add_argument("--blob", default="demo/sample clip.mp4", help="name to upload as")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "plugins"))
    if args.command == "images":
        from .images import build_all

        for name, seconds in build_all().items():
            print(f"{name}: " + (f"built in {seconds:.0f} s" if seconds is not None else "up to date"), flush=True)
        return 0
    if args.command == "stop":
        stopped = [*Stack(args.root or REPO / ".demo").stop(), *ProdStack(args.root or REPO / ".demo-prod").stop()]
        print("stopped:", ", ".join(stopped) or "nothing was running")
        return 0
    prod = args.command.endswith("-prod")
    stack = ProdStack(args.root or REPO / ".demo-prod") if prod else Stack(args.root or REPO / ".demo")
    if args.command.startswith("start"):
        start(stack)
        return 0
    return demo(stack, args.clip, args.blob, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
