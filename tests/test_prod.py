"""The production topology (devstack/prod.py), as users use it: Postgres, Redis, Celery workers
on queues `default` and `scoring`, each Airflow part its own process, every Airflow process run
from the venv of the image it stands for. One stack for the whole module.

The ways in: an upload (automatic run), the UI trigger form in a real browser, `airflow dags
trigger -c`, `airflow backfill create` (over the live sweep), and what a deployment meets over
weeks: its initialisation run again, the scoring worker's scratch after every kind of end.
What counts is what a user sees: a video in videos-out.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from devstack import REPO
from devstack.prod import AIRFLOW_VENV, PG_BIN, QUEUES, SCORING_VENV, ProdStack

from .helpers import urlopen, wait_until, xcom_value

sys.path.insert(0, str(REPO / "plugins"))
from pipeline.tasks import default_output_name  # noqa: E402
from storage.scratch import run_key  # noqa: E402

MISSING = [what for what, there in (
    (".venv-airflow (make prod-setup)", (AIRFLOW_VENV / "bin" / "airflow").exists()),
    (".venv-scoring (make prod-setup)", (SCORING_VENV / "bin" / "airflow").exists()),
    ("postgresql", (PG_BIN / "postgres").exists()),
    ("redis-server", shutil.which("redis-server")),
    ("Azurite (npm ci)", (REPO / "node_modules" / ".bin" / "azurite-blob").exists()),
) if not there]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"not installed: {', '.join(MISSING)}")
DAG = "video_style_transfer"
TIMINGS: dict[str, float] = {}
TOKENS: dict[str, str] = {}


@pytest.fixture(scope="module")
def prod(tmp_path_factory):
    stack = ProdStack.on_free_ports(tmp_path_factory.mktemp("prod"))
    # the sweep live from the start, once a minute: by the backfill test it has minutes of runs
    stack.extra_env = {"VST_SWEEP_MINUTES": "1", "VST_WATCH_POLL_SECONDS": "2",
                       "VST_PROGRESS_SECONDS": "1"}
    began = time.monotonic()
    try:
        stack.start()
        TIMINGS["stack start (s)"] = time.monotonic() - began
        yield stack
    finally:
        stack.stop()
        if stack.root not in stack.pg_data.parents:
            shutil.rmtree(stack.pg_data, ignore_errors=True)
        for name, seconds in TIMINGS.items():
            print(f"prod topology: {name}: {seconds:.0f}")


@pytest.fixture(scope="module")
def clip(clip_factory):
    return clip_factory(seconds=1.0, fps="10", size=(96, 64))


def upload(stack, name: str, path: Path, container: str = "videos-in") -> dict:
    """An upload to the inbox; ``accepted``: an upload the watcher took in already (the
    container a run started by hand reads from)."""
    return stack.blob_client().get_blob_client(container, name).upload_blob(path.read_bytes(), overwrite=True)


def wait_for_output(stack, name: str, after: datetime, timeout: float) -> float:
    """Seconds until videos-out/NAME was written after ``after``; fails with the runs' states."""
    from azure.core.exceptions import ResourceNotFoundError

    blob, began = stack.blob_client().get_blob_client("videos-out", name), time.monotonic()
    while time.monotonic() - began < timeout:
        try:
            if blob.get_blob_properties().last_modified >= after:
                return time.monotonic() - began
        except ResourceNotFoundError:
            pass
        time.sleep(2)
    raise AssertionError(f"no videos-out/{name} after {timeout:.0f} s; runs: {runs(stack)}")


def api(stack, method: str, path: str, body: dict | None = None, user: str = "admin"):
    """(status, JSON answer) of a call to the API server as ``user`` (cheaper than a CLI call)."""
    import urllib.error
    import urllib.request

    def call(path, body, headers):
        request = urllib.request.Request(f"http://127.0.0.1:{stack.api_port}{path}", method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Content-Type": "application/json"} | headers)
        try:
            with urlopen(request, timeout=60) as answer:
                return answer.status, json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    if user not in TOKENS:
        method_was, method = method, "POST"
        status, answer = call("/auth/token", {"username": user, "password": stack.password(user)}, {})
        assert status in (200, 201), (status, answer)
        TOKENS[user], method = answer["access_token"], method_was
    return call(path, body, {"Authorization": f"Bearer {TOKENS[user]}"})


def runs(stack, dag_id: str = DAG) -> dict[str, str]:
    status, answer = api(stack, "GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=100")
    assert status == 200, (status, answer)
    return {r["dag_run_id"]: r["state"] for r in answer["dag_runs"]}


def manual_runs(stack) -> list[dict]:
    status, answer = api(stack, "GET", f"/api/v2/dags/{DAG}/dagRuns?limit=100")
    return [r for r in answer["dag_runs"] if r["run_type"] == "manual"]


def wait_for_run(stack, run_id: str, timeout: float, dag_id: str = DAG) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = runs(stack, dag_id).get(run_id)
        if state in ("success", "failed"):
            return state
        time.sleep(3)
    raise AssertionError(f"run {run_id} of {dag_id} did not finish in {timeout:.0f} s: {runs(stack, dag_id)}")


def test_an_upload_gives_a_video(prod, clip):
    props = upload(prod, "prod/upload.mp4", clip)
    took = wait_for_output(prod, default_output_name("prod/upload.mp4", "19", None), props["last_modified"], 300)
    TIMINGS["upload -> video, 1 s clip 96x64 (s)"] = took


def test_the_run_went_through_postgres_and_both_queues(prod):
    """The upload's run: its rows in Postgres, its tasks executed by the Celery worker of the
    queue they were routed to, each worker from its image's venv (the default one has no torch)."""
    import subprocess

    wanted = {("probe", "default", "success"), ("split", "default", "success"), ("score_local", "scoring", "success"),
              ("preview", "scoring", "success"), ("stitch_and_publish", "default", "success")}
    deadline = time.monotonic() + 120  # the video is out; the strip and manifest follow it in the same task
    while True:
        rows = subprocess.run([str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(prod.pg_port), "-U", "airflow",
                               "-d", "airflow", "-tAc",
                               f"select task_id, queue, state from task_instance where dag_id = '{DAG}'"],
                              capture_output=True, text=True, check=True).stdout
        done = {tuple(line.split("|")) for line in rows.splitlines() if line.endswith("|success")}
        if wanted <= done or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert wanted <= done, rows
    for queue in QUEUES:
        log = (prod.root / f"worker-{queue}.log").read_text(errors="replace")
        ran = {task for task, q, _ in done if q == queue}
        assert all(f"task_id='{task}'" in log for task in ran), (queue, ran)
        assert f"task_id='{'probe' if queue == 'scoring' else 'score_local'}'" not in log
    assert not list((AIRFLOW_VENV / "lib").glob("python3*/site-packages/torch"))
    assert list((SCORING_VENV / "lib").glob("python3*/site-packages/torch"))


def taken_in_at(stack, name: str) -> datetime:
    """When the watcher took ``name`` in, as the acceptance ledger says (the sweep's own clock)."""
    from intake.ledger import Entry

    from devstack import SYSTEM_ACCOUNT

    ledger = stack.blob_client(SYSTEM_ACCOUNT).get_container_client("intake-ledger")
    for blob in ledger.list_blobs(name_starts_with="accepted/"):
        for line in ledger.download_blob(blob.name).readall().decode().splitlines():
            if (entry := Entry.from_line(line)).name == name:
                return entry.at
    raise AssertionError(f"{name} is not in the ledger")


def sweep_runs(stack) -> dict[str, dict]:
    status, answer = api(stack, "GET", "/api/v2/dags/blob_sweep/dagRuns?limit=100&order_by=-logical_date")
    assert status == 200, answer
    return {r["dag_run_id"]: r for r in answer["dag_runs"]}


def backfill(stack, minute: datetime, conf: dict) -> None:
    """The command docs/uploads.md gives, for one minute of the sweep, and its end."""
    stack.airflow("backfill", "create", "--dag-id", "blob_sweep", "--from-date", minute.isoformat(),
                  "--to-date", minute.isoformat(), "--reprocess-behavior", "completed",
                  "--dag-run-conf", json.dumps(conf))

    def done():
        status, answer = api(stack, "GET", "/api/v2/backfills?dag_id=blob_sweep")
        return status == 200 and answer["backfills"] and all(b["completed_at"] for b in answer["backfills"])

    wait_until(done, 300, "the backfill to complete")


def test_backfills_reprocess_their_window_with_new_settings_over_the_live_sweep(prod, clip):
    """The sweep has run every minute since the stack started (its past runs cover every
    minute). Uploads taken in at three moments: the first test's, one a minute or more later,
    one after that minute. A backfill of that one minute, with a new style, reuses the
    minute's sweep run and starts one run, for exactly the upload taken in during it (not the
    one before: a trigger timetable's backfill from that minute would begin a minute earlier);
    a second with another style starts another; both videos come."""
    earlier = taken_in_at(prod, "prod/upload.mp4")
    # the window is one minute that must not hold the first test's upload: begin in the next one
    next_minute = earlier.replace(second=0, microsecond=0) + timedelta(minutes=1)
    wait_until(lambda: datetime.now(timezone.utc) >= next_minute, 90, "the minute after the first upload's")
    props = upload(prod, "prod/backfill.mp4", clip)
    wait_until(lambda: "prod/backfill.mp4" not in {b.name for b in prod.blob_client().get_container_client(
        "videos-in").list_blobs()}, 180, "the watcher to take it in")
    minute = taken_in_at(prod, "prod/backfill.mp4").replace(second=0, microsecond=0)
    assert earlier < minute, (earlier, minute)
    wait_until(lambda: datetime.now(timezone.utc) >= minute + timedelta(minutes=1, seconds=1), 90, "the minute's end")
    prod.blob_client().get_blob_client("videos-in", "prod/later.mp4").upload_blob(b"after the window: never a video")

    def swept():  # the schedule's run of that minute, finished: what the backfill has to reprocess
        return [r for r in sweep_runs(prod).values() if r["logical_date"] and datetime.fromisoformat(
            r["logical_date"]) == minute and r["state"] == "success"]

    (scheduled,) = wait_until(swept, 240, "the sweep's scheduled run of the minute")
    assert scheduled["run_type"] == "scheduled"
    assert len([r for r in sweep_runs(prod).values() if r["run_type"] == "scheduled"]) >= 3  # minutes of them

    outputs = {}
    for style in ("7", "3"):
        before = {r for r in runs(prod) if r.startswith("reprocess__")}
        backfill(prod, minute, {"style": style})
        new = {r for r in runs(prod) if r.startswith("reprocess__")} - before
        assert len(new) == 1 and next(iter(new)).startswith("reprocess__prod-backfill.mp4__"), (new, runs(prod))
        (run_id,) = new
        status, run = api(prod, "GET", f"/api/v2/dags/{DAG}/dagRuns/{run_id}")
        assert (run["conf"]["style"], run["conf"]["settings_from"]["style"]) == (style, "backfill"), run["conf"]
        outputs[run_id] = default_output_name("prod/backfill.mp4", style, None)
    reused = sweep_runs(prod)[scheduled["dag_run_id"]]
    assert reused["run_type"] == "backfill"  # Airflow cleared the scheduled run and reran it, twice
    assert api(prod, "PATCH", "/api/v2/dags/blob_sweep", {"is_paused": True})[0] == 200  # two cores: enough sweeps
    for run_id, output in outputs.items():
        assert wait_for_run(prod, run_id, 420) == "success"
        wait_for_output(prod, output, props["last_modified"], 10)


def pause_watcher(prod) -> None:
    """From here on each test starts its runs itself: the watcher would add a second run per
    upload, and two cores have none to spare."""
    api(prod, "PATCH", "/api/v2/dags/blob_watcher", {"is_paused": True})


def test_cli_trigger_with_conf(prod, clip):
    pause_watcher(prod)
    upload(prod, "prod/cli.mp4", clip, "accepted")
    began = datetime.now(timezone.utc)
    run_id = "cli__prod-cli"
    prod.airflow("dags", "trigger", DAG, "-r", run_id, "-c",
                 json.dumps({"input_blob": "prod/cli.mp4", "style": "3", "output_name": "prod/cli-style-3.mp4"}))
    assert wait_for_run(prod, run_id, 300) == "success"
    wait_for_output(prod, "prod/cli-style-3.mp4", began, 10)


@pytest.fixture(scope="module")
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("not installed: chromium, chromium-driver (make prod-setup)")
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.binary_location = chromium
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(driver))
    try:
        yield browser
    finally:
        browser.quit()


def test_ui_trigger_form_in_a_browser(prod, clip, browser):
    """Log in, fill Input video and Style on the trigger form, trigger; the run succeeds and
    its Preview link shows the picture."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    upload(prod, "prod/ui.mp4", clip, "accepted")
    wait = WebDriverWait(browser, 180)
    base = f"http://127.0.0.1:{prod.api_port}"
    browser.get(f"{base}/auth/login/")
    wait.until(ready.presence_of_element_located((By.NAME, "username"))).send_keys("admin")
    browser.find_element(By.NAME, "password").send_keys(prod.password("admin"))
    browser.find_element(By.CSS_SELECTOR, "[type=submit]").click()  # FAB's sign-in form
    wait.until(lambda b: "/auth/login" not in b.current_url)

    before = {r["dag_run_id"] for r in manual_runs(prod)}
    browser.get(f"{base}/dags/{DAG}")
    wait.until(ready.element_to_be_clickable((By.CSS_SELECTOR, "[data-testid=trigger-dag-button]"))).click()
    field = wait.until(ready.element_to_be_clickable((By.NAME, "element_input_blob")))
    field.send_keys("prod/ui.mp4")
    style = browser.find_element(By.NAME, "element_style")
    style.send_keys(*["\b"] * len(style.get_attribute("value")), "7")
    output = browser.find_element(By.NAME, "element_output_name")
    output.send_keys("prod/ui-style-7.mp4")
    wait.until(ready.element_to_be_clickable(
        (By.XPATH, "(//*[@role='dialog']//button[normalize-space()='Trigger'])[last()]"))).click()

    deadline = time.monotonic() + 120
    while not (new := [r for r in manual_runs(prod) if r["dag_run_id"] not in before]):
        assert time.monotonic() < deadline, "the form started no run"
        time.sleep(2)
    (run,) = new
    run_id = run["dag_run_id"]
    assert run["conf"]["input_blob"] == "prod/ui.mp4" and run["conf"]["style"] == "7", run["conf"]
    assert wait_for_run(prod, run_id, 300) == "success"

    status, links = api(prod, "GET", f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances/preview/links")
    assert status == 200 and links["extra_links"].get("Preview"), (status, links)
    browser.get(links["extra_links"]["Preview"])
    image = wait.until(ready.presence_of_element_located((By.TAG_NAME, "img")))
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) > 100


def test_who_may_do_what_on_the_fab_auth_manager(prod):
    """Airflow's production auth manager (FAB), a user per role: a Viewer reads runs and opens a
    run's Preview but cannot trigger, pause or read connections; a User may pause, not read
    connections; an Op may; without a token, nothing."""
    import urllib.error
    import urllib.request
    from urllib.parse import quote

    from devstack.prod import AUTH_MANAGER

    assert prod.env()["AIRFLOW__CORE__AUTH_MANAGER"] == AUTH_MANAGER
    runs_path, sweep = f"/api/v2/dags/{DAG}/dagRuns", "/api/v2/dags/blob_sweep"
    paused = api(prod, "GET", sweep)[1]["is_paused"]
    assert api(prod, "GET", runs_path, user="viewer")[0] == 200
    assert api(prod, "POST", runs_path, {"logical_date": None, "conf": {"input_blob": "x.mp4"}}, user="viewer")[0] == 403
    assert api(prod, "PATCH", sweep, {"is_paused": paused}, user="viewer")[0] == 403
    assert api(prod, "PATCH", sweep, {"is_paused": paused}, user="user")[0] == 200
    assert api(prod, "GET", "/api/v2/connections", user="viewer")[0] == 403
    assert api(prod, "GET", "/api/v2/connections", user="user")[0] == 403
    assert api(prod, "GET", "/api/v2/connections", user="op")[0] == 200
    with pytest.raises(urllib.error.HTTPError) as refused:
        urlopen(f"http://127.0.0.1:{prod.api_port}{runs_path}", timeout=60)
    assert refused.value.code == 401

    done = [r for r, state in runs(prod).items() if state == "success" and r.startswith("upload__")]
    assert done, runs(prod)
    status, links = api(prod, "GET", f"{runs_path}/{quote(done[0], safe='')}/taskInstances/preview/links",
                        user="viewer")
    assert status == 200 and links["extra_links"].get("Preview"), (status, links)
    viewer = {"Authorization": f"Bearer {TOKENS['viewer']}"}
    with urlopen(urllib.request.Request(links["extra_links"]["Preview"], headers=viewer),
                                timeout=60) as page:
        assert page.headers["Content-Type"] == "image/jpeg" and page.read(3) == b"\xff\xd8\xff"


def test_a_scoring_worker_lost_mid_score(prod, clip_factory):
    """Kill the scoring worker's whole process tree while score_local runs; start it again: the
    run finishes, and the retry skips every segment that was done, redoing at most the ones
    that were in flight (one per rank)."""
    import contextlib
    import signal

    import psutil

    longer = clip_factory(seconds=6.0, fps="10", size=(640, 360))
    upload(prod, "prod/lost.mp4", longer, "accepted")
    run_id, ranks = "cli__prod-lost-worker", 2
    prod.airflow("dags", "trigger", DAG, "-r", run_id, "-c", json.dumps(
        {"input_blob": "prod/lost.mp4", "segment_frames": 6, "ranks": ranks, "output_name": "prod/lost.mp4"}))
    segments = 10

    def done_markers() -> int:
        return len(list((prod.root / "scratch-scoring" / run_key(run_id) / "score" / "styled").glob("*.done")))

    deadline = time.monotonic() + 300
    while not 1 <= done_markers() < segments:
        assert time.monotonic() < deadline, f"score_local never got under way: {runs(prod)}"
        time.sleep(0.1)
    worker = psutil.Process(prod.pid("worker-scoring"))
    tree = [worker, *worker.children(recursive=True)]
    for process in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    psutil.wait_procs(tree, timeout=30)
    done_at_kill = done_markers()
    (prod.root / "worker-scoring.pid").unlink()
    prod.start_worker("scoring")
    assert wait_for_run(prod, run_id, 600) == "success"
    TIMINGS["lost scoring worker: kill -> run success (s)"] = time.monotonic() - killed_at

    status, tries = api(prod, "GET", f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances/score_local")
    assert tries["try_number"] >= 2, tries
    status, scored = api(prod, "GET", f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances/score_local/xcomEntries/return_value")
    summary = scored["value"] if isinstance(scored["value"], dict) else json.loads(scored["value"])
    redone = summary["scored"]
    TIMINGS[f"lost scoring worker: {done_at_kill} of {segments} segments done at the kill; segments scored again"] = redone
    assert summary["segments"] == segments and summary["skipped"] >= done_at_kill
    assert redone <= segments - done_at_kill  # never a finished segment again
    assert done_at_kill + redone == segments


def test_deployment_init_makes_what_is_missing_and_keeps_what_an_operator_changed(prod):
    """`python -m deployment init` again, as docker compose runs it on every `up`: the slot
    count an operator raised stays (it used to go back to 1), so does the admin's password;
    a container deleted since is made again."""
    from devstack import SYSTEM_ACCOUNT

    prod.airflow("pools", "set", "scoring", "3", "raised by an operator")
    prod.blob_client(SYSTEM_ACCOUNT).delete_container("intake-ledger")
    try:
        said = prod.prepare_airflow().stdout
        TOKENS.pop("admin", None)  # signs in again below, with the password it had
        slots = api(prod, "GET", "/api/v2/pools/scoring")[1]["slots"]
    finally:
        prod.airflow("pools", "set", "scoring", "1", "back to this machine's size")
    assert slots == 3 and "pool scoring kept with 3 slot(s)" in said and "user admin kept" in said, said
    assert "containers made: sysaccount1/intake-ledger" in said, said
    assert prod.blob_client(SYSTEM_ACCOUNT).get_container_client("intake-ledger").exists()


def test_the_deployment_check_dag_proves_the_topology_and_names_what_fails(prod):
    """The deployment_check DAG, triggered as an operator would: its slot task runs in the pool
    on the scoring queue, its check on the default queue proves the storage accounts through the
    workers' own connections; every line ok. Run again with account keys refused (what Azure
    wants), it fails, and its task log names the two storage connections alone."""
    from urllib.parse import quote

    dag = "deployment_check"
    conf = {"allow_account_keys": True, "azureml": "no"}
    for run_id, run_conf in (("manual__check-ready", conf), ("manual__check-keys", {**conf, "allow_account_keys": False})):
        status, answer = api(prod, "POST", f"/api/v2/dags/{dag}/dagRuns", {"logical_date": None, "dag_run_id": run_id,
                             "conf": run_conf})
        assert status == 200, answer
    assert wait_for_run(prod, "manual__check-ready", 300, dag) == "success"
    task = f"/api/v2/dags/{dag}/dagRuns/{quote('manual__check-ready', safe='')}/taskInstances"
    lines = xcom_value(api(prod, "GET", f"{task}/check/xcomEntries/return_value")[1]["value"])
    assert lines[-1] == "deployment ready", lines
    assert [line for line in lines[:-1] if not line.startswith(("ok ", "skip "))] == [], lines
    assert any(line.startswith("ok    pool scoring: a slot was free") for line in lines), lines
    assert sum(line.startswith("ok    container ") for line in lines) >= 6, lines  # both accounts' containers
    assert api(prod, "GET", f"{task}/a_scoring_slot")[1]["queue"] == "scoring"

    assert wait_for_run(prod, "manual__check-keys", 300, dag) == "failed"
    task = f"/api/v2/dags/{dag}/dagRuns/{quote('manual__check-keys', safe='')}/taskInstances/check"
    status, log = api(prod, "GET", f"{task}/logs/1?full_content=true", user="viewer")
    assert status == 200, log
    shown = json.dumps(log)
    failed = sorted({word for word in ("credential wasb_data", "credential wasb_system") if f"FAIL  {word}" in shown})
    assert failed == ["credential wasb_data", "credential wasb_system"], shown[-3000:]
    assert "2 check(s) failed" in shown and shown.count("FAIL  ") == 2, shown[-3000:]


def test_the_scoring_workers_scratch_is_empty_after_success_failure_and_kill(prod, clip, clip_factory):
    """The scoring worker runs score_local and preview and no clean_up: each removes its own
    files when it ends. After every run so far (successes, and the lost worker's retry), a
    run that fails there (a model that is not one) and one marked failed while score_local
    runs (Airflow SIGTERMs the task, then SIGKILLs it): nothing is left, and no rank runs on."""
    import psutil

    scratch = prod.root / "scratch-scoring"
    prod.blob_client().get_blob_client("styles", "prod/not-a-model.pth").upload_blob(b"not a state dict",
                                                                                   overwrite=True)
    upload(prod, "prod/fails.mp4", clip, "accepted")
    failing = "cli__prod-scoring-fails"
    prod.airflow("dags", "trigger", DAG, "-r", failing, "-c", json.dumps(
        {"input_blob": "prod/fails.mp4", "model_blob": "prod/not-a-model.pth"}))
    upload(prod, "prod/killed.mp4", clip_factory(seconds=6.0, fps="10", size=(640, 360)), "accepted")
    killed = "cli__prod-killed"
    prod.airflow("dags", "trigger", DAG, "-r", killed, "-c", json.dumps(
        {"input_blob": "prod/killed.mp4", "segment_frames": 6, "ranks": 2, "output_name": "prod/killed.mp4"}))
    styled = scratch / run_key(killed) / "score" / "styled"
    wait_until(lambda: list(styled.glob("*.done")), 400, "score_local to get under way", every=0.5)
    assert api(prod, "PATCH", f"/api/v2/dags/{DAG}/dagRuns/{killed}", {"state": "failed"})[0] == 200
    assert wait_for_run(prod, failing, 400) == "failed"
    status, ti = api(prod, "GET", f"/api/v2/dags/{DAG}/dagRuns/{failing}/taskInstances/score_local")
    assert ti["state"] == "failed", ti  # it failed where the scratch is: on the scoring worker

    def ranks_of(run_id):
        return [p for p in psutil.process_iter(["cmdline"]) if run_key(run_id) in " ".join(p.info["cmdline"] or [])]

    deadline = time.monotonic() + 120
    while ranks_of(killed) or list(scratch.iterdir()):
        assert time.monotonic() < deadline, (f"left on the scoring worker: {[p.info['cmdline'] for p in ranks_of(killed)]}"
                                             f" {sorted(str(p.relative_to(scratch)) for p in scratch.rglob('*'))}")
        time.sleep(2)
    assert runs(prod)[killed] == "failed"


# --------------------------------------------------------------------------- what operators see


WATCHED_FRAMES = 120  # a quiet 2-core machine scores 60 in a few seconds: too few to see progress move


@pytest.fixture(scope="module")
def watched(prod, clip_factory):
    """One run whose score step takes tens of seconds (WATCHED_FRAMES of 640x360 in segments of 6
    on two cores), its score task's XCom ``progress`` read as a Viewer every second while it
    scores, the way a person watching it would."""
    from urllib.parse import quote

    pause_watcher(prod)
    upload(prod, "prod/watched.mp4", clip_factory(seconds=WATCHED_FRAMES / 10, fps="10", size=(640, 360)), "accepted")
    run_id = "cli__prod-watched"
    status, answer = api(prod, "POST", f"/api/v2/dags/{DAG}/dagRuns", {"logical_date": None, "dag_run_id": run_id,
                         "conf": {"input_blob": "prod/watched.mp4", "segment_frames": 6, "ranks": 2,
                                  "output_name": "prod/watched.mp4"}})
    assert status == 200, answer
    task = f"/api/v2/dags/{DAG}/dagRuns/{quote(run_id, safe='')}/taskInstances/score_local"
    seen, deadline = [], time.monotonic() + 600
    while runs(prod).get(run_id) not in ("success", "failed"):
        assert time.monotonic() < deadline, f"run {run_id} did not finish: {runs(prod)}"
        status, entry = api(prod, "GET", f"{task}/xcomEntries/progress", user="viewer")
        if status == 200:
            value = xcom_value(entry["value"])
            if not seen or value != seen[-1][1]:
                seen.append((time.monotonic(), value, api(prod, "GET", task, user="viewer")[1]["state"]))
        time.sleep(1)
    assert runs(prod)[run_id] == "success"
    return {"run_id": run_id, "task": task, "progress": seen, "output": "prod/watched.mp4"}


def test_progress_moves_while_it_scores_and_reaches_100_percent(prod, watched):
    """frames done of total and an ETA, readable by a Viewer through the REST API while
    score_local runs, published at least every 30 s (here every second: VST_PROGRESS_SECONDS)."""
    while_running = [(t, v) for t, v, state in watched["progress"] if state == "running"]
    done = [v["frames_done"] for _, v in while_running]
    assert len(set(done)) >= 4, watched["progress"]  # moved at least three times while it scored
    assert done == sorted(done)
    assert all(v["frames_total"] == WATCHED_FRAMES and v["backend"] == "local" for _, v in while_running)
    assert all(b - a <= 30 for a, b in zip([t for t, _ in while_running], [t for t, _ in while_running][1:]))
    assert any(v["eta_seconds"] is not None and 0 < v["frames_done"] < WATCHED_FRAMES for _, v in while_running)
    last = watched["progress"][-1][1]
    assert (last["frames_done"], last["percent"], last["eta_seconds"]) == (WATCHED_FRAMES, 100.0, 0), last
    assert last["text"] == f"{WATCHED_FRAMES} of {WATCHED_FRAMES} frames (100%), done"
    TIMINGS["progress: distinct values a Viewer saw while score_local ran"] = len(set(done))


def test_the_manifest_holds_the_estimate_beside_the_actual(prod, watched):
    manifest = json.loads(prod.blob_client().get_blob_client(
        "videos-out", watched["output"] + ".manifest.json").download_blob().readall())
    estimated, took = manifest["estimate"]["estimated"], manifest["estimate"]["actual"]
    assert estimated["backend"] == "local" and estimated["score_seconds"] > 0, estimated
    assert estimated["rate"]["machine"] == "local" and estimated["rate"]["when"]
    assert took["score_seconds"] == manifest["seconds"]["score"] > 0
    TIMINGS["score step: estimated (s)"] = estimated["score_seconds"]
    TIMINGS["score step: took (s)"] = took["score_seconds"]


def test_metrics_of_a_published_run_reach_the_collector(prod, watched):
    """The product's metrics and Airflow's own, read back from the StatsD daemon they went to."""
    counters, timers = prod.received("counters"), prod.received("timers")
    assert counters.get("airflow.vst.runs.started.local", 0) >= 1, counters
    assert counters.get("airflow.vst.runs.published", 0) >= 1, counters
    assert counters.get("airflow.vst.frames.styled.local", 0) >= WATCHED_FRAMES, counters
    assert timers.get("airflow.vst.score.frame_time.local", 0) > 0, timers
    # Airflow's own, from the scheduler and the workers' task runners
    assert any(name.startswith("airflow.ti.finish") for name in counters), sorted(counters)
    assert any(name.startswith("airflow.dagrun.duration") for name in timers), sorted(timers)


def test_task_logs_are_in_blob_storage_and_shown_once_the_workers_copies_are_gone(prod, watched):
    """Each task's log is uploaded to the system account's logs container and removed from the
    worker; with the workers' log folders deleted as well, a Viewer still reads it through
    the API. No secret is in any of the uploaded logs."""
    from devstack import DEV_KEY, SYSTEM_ACCOUNT
    from devstack.prod import DEV_SECRETS

    logs = prod.blob_client(SYSTEM_ACCOUNT).get_container_client("logs")
    prefix = f"tasks/dag_id={DAG}/run_id={watched['run_id']}/"
    tasks = ("probe", "preview", "split", "score_local", "stitch_and_publish", "clean_up", "notify")
    deadline = time.monotonic() + 120  # a task's state is final a moment before its worker uploads the log
    while True:
        names = [b.name for b in logs.list_blobs(name_starts_with=prefix)]
        left = [p for queue in QUEUES for p in (prod.root / f"logs-{queue}").rglob(f"run_id={watched['run_id']}/*/*")]
        if (all(any(n.startswith(f"{prefix}task_id={t}/") for n in names) for t in tasks) and not left) \
                or time.monotonic() > deadline:
            break
        time.sleep(2)
    for step in tasks:
        assert any(name.startswith(f"{prefix}task_id={step}/") for name in names), (step, names)
    assert not left, f"the workers kept {left}"
    for queue in QUEUES:
        shutil.rmtree(prod.root / f"logs-{queue}", ignore_errors=True)

    status, answer = api(prod, "GET", f"{watched['task']}/logs/1?full_content=true", user="viewer")
    assert status == 200, answer
    shown = json.dumps(answer)
    assert f"/{SYSTEM_ACCOUNT}/logs/{prefix}task_id=score_local/attempt=1.log" in shown  # its source
    assert "frames" in shown and "fps" in shown  # the ranks' progress lines, as the task printed them

    secrets = [DEV_KEY, *DEV_SECRETS.values(), *json.loads((prod.airflow_home / "passwords.json").read_text()).values()]
    everything = [logs.download_blob(b.name).readall().decode(errors="replace") for b in logs.list_blobs(
        name_starts_with="tasks/")]
    assert len(everything) >= 5
    assert not [s for s in secrets if any(s in text for text in everything)]


def test_screenshot_of_the_runs_progress(prod, watched, browser):
    """The run's progress as a Viewer sees it in the UI; the picture goes to docs/ (only the
    page's text is compared)."""
    from urllib.parse import quote

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 180)
    base = f"http://127.0.0.1:{prod.api_port}"
    browser.get(f"{base}/auth/logout/")  # the UI test signed in as admin
    browser.delete_all_cookies()
    browser.execute_script("window.localStorage.clear(); window.sessionStorage.clear();")
    browser.get(f"{base}/auth/login/")
    wait.until(ready.presence_of_element_located((By.NAME, "username"))).send_keys("viewer")
    browser.find_element(By.NAME, "password").send_keys(prod.password("viewer"))
    browser.find_element(By.CSS_SELECTOR, "[type=submit]").click()
    wait.until(lambda b: "/auth/login" not in b.current_url)
    browser.get(f"{base}/dags/{DAG}/runs/{quote(watched['run_id'], safe='')}/tasks/score_local/xcom")
    # the XCom tab shows a JSON value folded; its button unfolds them all
    wait.until(ready.element_to_be_clickable((By.CSS_SELECTOR, "[aria-label='Expand all extra JSON']"))).click()
    wait.until(lambda b: f"{WATCHED_FRAMES} of {WATCHED_FRAMES} frames (100%), done" in b.find_element(By.TAG_NAME, "body").text)
    browser.save_screenshot(str(REPO / "docs" / "progress.png"))
