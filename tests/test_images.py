"""docker/'s images, built here (devstack/images.py) and run.

The workers of both queues run as containers the way docker/docker-compose.yaml runs them: its
user, volumes, environment, command, health check and stop grace period, read from the file by
docker-compose itself, against the production topology's Postgres, Redis and Azurite on this
machine (``--network host``: the compose file's service names point at them). The Azure ML
scoring image runs the job's command under its own Open MPI, as MpiDistribution starts it. Each
image's imports are checked in the image. Where no Docker daemon can run, every test here is
skipped with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pytest
import yaml

from devstack import free_port, images
from devstack.prod import DEV_SECRETS, QUEUES, ProdStack
from scoring.media.segments import Plan

from .helpers import REPO, Api, read_frames
from .test_light_worker import NETWORK_PACKAGES, torch_free_modules

sys.path.insert(0, str(REPO / "plugins"))
from aml_backend.entities import score_command, stage_code  # noqa: E402
from pipeline.tasks import default_output_name  # noqa: E402

FIGURES: list[str] = []  # the build and run times, shown in the summary (tests/conftest.py)
COMPOSE_CLI = shutil.which("docker-compose")
WORKERS = {queue: f"airflow-worker-{queue}" for queue in QUEUES}
# What the compose file's required variables get when the tests render it (docker/compose.env.example)
REQUIRED = {"POSTGRES_PASSWORD": "unused-the-topology-trusts-loopback", "AIRFLOW_ADMIN_EMAIL": "admin@example.invalid",
            "AIRFLOW_ADMIN_PASSWORD": "unused", "AIRFLOW_FERNET_KEY": "unused", "AIRFLOW_JWT_SECRET":
            DEV_SECRETS["AIRFLOW__API_AUTH__JWT_SECRET"], "AIRFLOW_SECRET_KEY": DEV_SECRETS["AIRFLOW__API__SECRET_KEY"]}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The daemon (started if none runs), the base and the three images; skips with the reason
    where there can be no daemon."""
    problem = images.daemon_problem()
    if problem:
        pytest.skip(f"no Docker daemon: {problem}")
    began = time.monotonic()
    taken = images.build_all(tmp_path_factory.mktemp("builds"))
    for name, seconds in taken.items():
        FIGURES.append(f"images: {name}: " + (f"built in {seconds:.0f} s" if seconds is not None else "up to date"))
    FIGURES.append(f"images: daemon, base and builds: {time.monotonic() - began:.0f} s")
    return images.images()


def docker(*args, **kwargs) -> subprocess.CompletedProcess:
    return images.docker(*args, **kwargs)


def render(env: dict[str, str], tmp_path: Path) -> dict:
    """docker/docker-compose.yaml as docker-compose itself reads it (anchors merged, variables
    filled in from ``env`` alone: an empty env file keeps a developer's docker/.env out)."""
    if not COMPOSE_CLI:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    empty = tmp_path / "empty.env"
    empty.write_text("")
    environ = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")} | env
    result = subprocess.run([COMPOSE_CLI, "--env-file", str(empty), "-f", str(images.COMPOSE), "config"],
                            capture_output=True, text=True, env=environ, timeout=120)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def seconds(duration: str | int) -> int:
    """A compose duration (``10m``, ``1m30s``, ``90s``) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+)([hms])", str(duration))
    return sum(int(n) * units[u] for n, u in parts) if parts else int(duration)


def unescaped(value: str) -> str:
    """A value as compose hands it to Docker: ``$$`` is a literal ``$``."""
    return value.replace("$$", "$")


def on_host(value: str, addresses: dict[str, int]) -> str:
    """A URL to a compose service (``redis://redis:6379/0``) pointed at the port where this
    machine's topology serves it; anything else as it is."""
    parts = urlsplit(value) if "://" in value else None
    if not parts or parts.hostname not in addresses:
        return value
    user = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=(user + "@" if user else "") + f"127.0.0.1:{addresses[parts.hostname]}"))


def run_args(service: dict, volume_prefix: str, addresses: dict[str, int] | None = None,
             extra_env: dict[str, str] | None = None) -> list[str]:
    """``docker run`` arguments for a compose service as compose would start it, on the host's
    network: its user, its named volumes (this run's own), its environment (service addresses
    pointed at ``addresses``), health check, stop grace period, entry point and command."""
    args = ["--network", "host", "--user", str(service["user"])]
    for mount in service.get("volumes", []):
        source, target = (mount.split(":")[:2] if isinstance(mount, str) else (mount["source"], mount["target"]))
        args += ["-v", f"{volume_prefix}{source}:{target}"]
    env = {k: on_host(unescaped(str(v)), addresses or {}) for k, v in (service.get("environment") or {}).items()}
    for key, value in (env | (extra_env or {})).items():
        args += ["-e", f"{key}={value}"]
    if "healthcheck" in service:
        check = service["healthcheck"]
        test = check["test"]
        args += ["--health-cmd", unescaped(test[1] if test[0] == "CMD-SHELL" else shlex.join(test[1:])),
                 "--health-interval", f"{seconds(check.get('interval', '30s'))}s",
                 "--health-timeout", f"{seconds(check.get('timeout', '30s'))}s",
                 "--health-retries", str(check.get("retries", 3)),
                 "--health-start-period", f"{seconds(check.get('start_period', '0s'))}s"]
    if "stop_grace_period" in service:
        args += ["--stop-timeout", str(seconds(service["stop_grace_period"]))]
    words = lambda value: shlex.split(value) if isinstance(value, str) else list(value)  # noqa: E731
    entrypoint, command = words(service.get("entrypoint", [])), words(service.get("command", []))
    if entrypoint:
        args += ["--entrypoint", entrypoint[0]]
    return [*args, service["image"], *map(unescaped, entrypoint[1:] + command)]


def python_in(image: str, code: str, *docker_args: str, timeout: float = 600) -> str:
    """``python -c CODE`` in a fresh container of the image; its standard output."""
    result = docker("run", "--rm", "--network", "host", *docker_args, "--entrypoint", "python", image, "-c", code,
                    check=False, timeout=timeout)
    assert result.returncode == 0, f"in {image}:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result.stdout


# --------------------------------------------------------------------------- the compose file


def test_docker_compose_reads_the_compose_file(tmp_path):
    """The file a team runs parses in docker-compose (Debian's, v1.29), a missing secret stops it
    with the file's own message, and every Airflow service runs as the user the images are made
    for, the workers with a stop grace period."""
    config = render(REQUIRED, tmp_path)
    services = config["services"]
    for name, service in services.items():
        if name.startswith("airflow-"):
            assert service["user"] == "50000:0", name
    for name in WORKERS.values():
        assert seconds(services[name]["stop_grace_period"]) >= 300, name  # more than a segment takes
        assert services[name]["environment"]["DUMB_INIT_SETSID"] == "0", name  # a stop reaches Celery alone

    missing = subprocess.run([COMPOSE_CLI, "--env-file", str(tmp_path / "empty.env"), "-f", str(images.COMPOSE),
                              "config", "-q"], capture_output=True, text=True, timeout=120,
                             env={"PATH": os.environ["PATH"]} | {k: v for k, v in REQUIRED.items()
                                                                 if k != "AIRFLOW_ADMIN_PASSWORD"})
    assert missing.returncode != 0 and "set AIRFLOW_ADMIN_PASSWORD" in missing.stderr, missing.stderr


# --------------------------------------------------------------------------- each image alone


def test_worker_volumes_are_writable_by_the_worker(built, tmp_path):
    """On fresh named volumes, as the compose file mounts them, each worker's user can make a
    run's scratch folder (the product's own ``scratch()``) and write in every mounted folder. A
    volume takes its folder's owner from the image: where the image has no such folder, the
    volume is root's, the first task's mkdir raises PermissionError and every run fails at probe."""
    config = render(REQUIRED, tmp_path)
    prefix = f"vst-test-{uuid.uuid4().hex[:8]}_"
    try:
        for name in WORKERS.values():
            service = config["services"][name]
            targets = [m.split(":")[1] for m in service["volumes"]]
            code = ("import os, sys, tempfile\n"
                    "sys.path.insert(0, os.environ['AIRFLOW__CORE__PLUGINS_FOLDER'])\n"
                    "from storage.scratch import scratch\n"
                    "print(scratch('a-run'))\n"
                    f"for folder in {targets!r}:\n"
                    "    tempfile.NamedTemporaryFile(dir=folder).close()\n")
            args = run_args(service, prefix)
            image_at = args.index(service["image"])
            result = docker("run", "--rm", *args[:image_at], "--entrypoint", "python", service["image"], "-c", code,
                            check=False)
            assert result.returncode == 0, f"{name} as {service['user']}:\n{result.stderr[-2000:]}"
            assert result.stdout.strip() == service["environment"]["VST_SCRATCH"] + "/a-run"
    finally:
        for volume in docker("volume", "ls", "-q", "--filter", f"name={prefix}").stdout.split():
            docker("volume", "rm", volume, check=False)


def test_default_image_runs_everything_but_the_network(built):
    """The Airflow image: every plugins/ module and every scoring module outside scoring/networks/
    imports, the DAG files load, and no network package is installed at all."""
    code = ("import importlib, importlib.util, json, sys\n"
            "sys.path.insert(0, '/opt/airflow/plugins')\n"
            f"for name in {torch_free_modules()!r}:\n"
            "    importlib.import_module(name)\n"
            "from airflow.dag_processing.dagbag import DagBag\n"
            "bag = DagBag('/opt/airflow/dags')\n"
            "print(json.dumps({'errors': {k: str(v) for k, v in bag.import_errors.items()}, 'dags': sorted(bag.dag_ids),\n"
            f"                  'network': [p for p in {NETWORK_PACKAGES!r} if importlib.util.find_spec(p)]}}))\n")
    result = json.loads(python_in(built["airflow"].tag, code).strip().splitlines()[-1])
    assert not result["errors"] and "video_style_transfer" in result["dags"], result
    assert result["network"] == [], f"the default image carries {result['network']}"


def test_scoring_worker_image_has_what_score_local_and_preview_import(built):
    """The scoring worker's image: the DAG files load; the code of every task routed to queue
    ``scoring`` (score_local, preview) imports, and so does every module of scoring/, the
    networks too (what their ``python -m scoring`` steps run); torch is the CPU build and
    MPICH's mpiexec, which score_local starts its ranks with, answers."""
    code = ("import importlib, json, pkgutil, subprocess, sys\n"
            "sys.path.insert(0, '/opt/airflow/plugins')\n"
            "from airflow.dag_processing.dagbag import DagBag\n"
            "bag = DagBag('/opt/airflow/dags')\n"
            "tasks = {t.task_id: sorted({type(t).__module__, getattr(getattr(t, 'python_callable', None), '__module__',\n"
            "                                                        type(t).__module__)})\n"
            "         for t in bag.dags['video_style_transfer'].tasks if t.queue == 'scoring'}\n"
            "for modules in tasks.values():\n"
            "    for name in modules:\n"
            "        importlib.import_module(name)\n"
            "import scoring\n"
            "steps = [m.name for m in pkgutil.walk_packages(scoring.__path__, 'scoring.') if not m.name.endswith('__main__')]\n"
            "for name in steps:\n"
            "    importlib.import_module(name)\n"
            "import torch\n"
            "from scoring.launch import mpiexec_path\n"
            "mpiexec = subprocess.run([mpiexec_path(), '--version'], capture_output=True, text=True).stdout\n"
            "print(json.dumps({'errors': {k: str(v) for k, v in bag.import_errors.items()}, 'tasks': tasks,\n"
            "                  'steps': steps, 'torch': torch.__version__, 'cuda': torch.version.cuda,\n"
            "                  'mpiexec': mpiexec}))\n")
    result = json.loads(python_in(built["airflow-scoring"].tag, code).strip().splitlines()[-1])
    assert not result["errors"], result["errors"]
    assert {"score_local", "preview"} <= set(result["tasks"]), result["tasks"]
    assert "scoring.networks.score" in result["steps"] and "scoring.networks.preview" in result["steps"]
    torch_pin = re.search(r"^torch==(\S+)", (REPO / "constraints.txt").read_text(), re.MULTILINE)[1]
    assert result["torch"].split("+")[0] == torch_pin and result["cuda"] is None, result  # the CPU build
    assert "HYDRA" in result["mpiexec"] or "MPICH" in result["mpiexec"], result["mpiexec"]


def constraint_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split(";")[0].strip().split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


@pytest.mark.parametrize("name", ["airflow", "airflow-scoring", "scoring"])
def test_every_package_in_each_image_is_at_its_constraints_pin(built, name):
    """Transitive packages too: what the image runs is what the tests ran (torch's build tag,
    +cpu, aside). Only the venv's own pip and setuptools are not in constraints.txt."""
    code = ("import importlib.metadata as m, json\n"
            "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))\n")
    installed = json.loads(python_in(built[name].tag, code).strip().splitlines()[-1])
    pins = constraint_pins()
    installed = {re.sub(r"[-_.]+", "-", k).lower(): v.split("+")[0] for k, v in installed.items()}
    unpinned = set(installed) - set(pins) - {"pip", "setuptools", "wheel"}
    assert not unpinned, f"{name}: not in constraints.txt: {sorted(unpinned)}"
    moved = {k: (v, pins[k]) for k, v in installed.items() if k in pins and pins[k] != v}
    assert not moved, f"{name}: installed vs pinned {moved}"
    assert len(installed) > 20


def test_no_layer_holds_the_ca_bundle_handed_to_the_builds(built):
    """The certificates this machine adds to Debian's (its own CA, which pip reaches PyPI
    through) went to the build stages only: no layer of any image holds one."""
    bundle = images.LOCAL / "ca.crt"
    if not bundle.exists():
        pytest.skip("no CA bundle was handed to the builds (pip has no cert setting here)")
    debian = {line for path in Path("/usr/share/ca-certificates").rglob("*.crt")
              for line in path.read_text(errors="replace").splitlines()}
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----\n(.*?)-----END CERTIFICATE-----", bundle.read_text(), re.S)
    own = [block.splitlines()[1] for block in blocks if block.splitlines()[1] not in debian]
    assert own, "every certificate of the bundle is Debian's: nothing to look for"
    for image in built.values():
        saved = subprocess.Popen([images.DOCKER, "save", image.tag], stdout=subprocess.PIPE)
        tail, found = b"", set()
        while chunk := saved.stdout.read(1 << 22):
            window = tail + chunk
            found |= {line for line in own if line.encode() in window}
            tail = window[-200:]
        assert saved.wait() == 0
        assert not found, f"{image.tag} holds {len(found)} of this machine's own certificates"


# What a checkout holds after `make test`, `make demo` and `make demo-prod`, beside what the
# Airflow images copy: none of it may reach the daemon (a context is kept in its build cache).
CONTEXT_KEPT = ("constraints.txt", "dags/video_style_transfer.py", "plugins/pipeline/tasks.py", "scoring/cli.py",
                "docker/entrypoint.sh", "docker/airflow/requirements.txt", "docker/airflow-scoring/requirements.txt",
                "docker/local/ca.crt", "docker/local/wheels/torch.whl")
CONTEXT_LEFT_OUT = ("docker/.env", ".venv/bin/python", ".venv-airflow/bin/python", ".venv-scoring/bin/python",
                    "node_modules/azurite/index.js", ".demo/airflow/simple_auth_manager_passwords.json.generated",
                    ".demo-prod/airflow/passwords.json", ".demo-prod/postgres/PG_VERSION", ".git/config", "out/sample.mp4",
                    "tests/test_images.py", "README.md", "scoring/__pycache__/cli.cpython-311.pyc")


def context_seen_by_a_build(context: Path, dockerfile: Path) -> set[str]:
    """The files of ``context`` a build gets to COPY (as devstack/images.py builds: BuildKit)."""
    dockerfile.write_text(f"FROM {images.BASE}\nCOPY . /context/\n")
    tag = f"vst-test-context:{uuid.uuid4().hex[:8]}"
    built_here = subprocess.run([images.DOCKER, "build", "--network", "host", "-q", "-f", str(dockerfile), "-t", tag,
                                 str(context)], env=os.environ | {"DOCKER_BUILDKIT": "1"}, capture_output=True,
                                text=True, timeout=300)
    assert built_here.returncode == 0, built_here.stderr[-3000:]
    try:
        listed = docker("run", "--rm", "--network", "host", "--entrypoint", "find", tag, "/context", "-type", "f").stdout
    finally:
        docker("image", "rm", "-f", tag, check=False)
    return {line.removeprefix("/context/") for line in listed.split()}


def test_the_build_context_is_only_what_the_dockerfiles_copy(built, tmp_path):
    """The Airflow images' context is the repository root. With the repository's .dockerignore
    a build sees what their Dockerfiles copy and nothing else: not docker/.env, the venvs,
    node_modules, the demos' password files and databases, .git or byte code."""
    context = tmp_path / "context"
    for name in CONTEXT_KEPT + CONTEXT_LEFT_OUT:
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        (context / name).write_text("x\n")
    shutil.copyfile(REPO / ".dockerignore", context / ".dockerignore")
    assert context_seen_by_a_build(context, tmp_path / "Dockerfile") == set(CONTEXT_KEPT)


# --------------------------------------------------------------------------- the Azure ML image


def test_azureml_image_scores_under_its_own_open_mpi(built, clip_factory, tmp_path):
    """The scoring image runs the job's command line (plugins/aml_backend/entities.py) from a
    code snapshot as Azure ML's MpiDistribution does: Open MPI's ``mpirun -n 2`` in the image,
    each rank its share of the segments; the styled segments equal this machine's own run of
    the same command on two ranks."""
    from scoring.launch import scoring_command

    clip = clip_factory(seconds=2.0, fps="10", size=(128, 72))
    segments, host_out, image_out = tmp_path / "segments", tmp_path / "host", tmp_path / "image"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-m", "scoring", "split", str(clip), "--out", str(segments), "--segment-frames",
                    "5"], check=True, env=env, capture_output=True, timeout=300)
    plan = Plan.load(segments)
    score_args = ["--style", "19"]
    host = subprocess.run(scoring_command(["score", "--segments", str(segments), "--out", str(host_out),
                                           *score_args], ranks=2), env=env, capture_output=True, text=True,
                          timeout=600)
    assert host.returncode == 0, host.stderr[-3000:]

    code = stage_code(tmp_path / "code")
    command = score_command(score_args).replace("${{inputs.segments}}", "/mnt/segments") \
                                       .replace("${{outputs.styled}}", "/mnt/styled")
    image_out.mkdir()
    began = time.monotonic()
    result = docker("run", "--rm", "--network", "host", "-v", f"{code}:/code:ro", "-w", "/code",
                    "-v", f"{segments}:/mnt/segments:ro", "-v", f"{image_out}:/mnt/styled", built["scoring"].tag,
                    "mpirun", "--allow-run-as-root", "-n", "2", *shlex.split(command), check=False, timeout=900)
    assert result.returncode == 0, f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    FIGURES.append(f"images: Azure ML image, {len(plan.segments)} segments on 2 Open MPI ranks: "
                   f"{time.monotonic() - began:.0f} s")
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["ranks"] == 2 and summary["scored"] == len(plan.segments), summary
    assert all(rank["scored"] > 0 for rank in summary["per_rank"]), summary  # each rank took its share
    for segment in plan.segments:
        ours, theirs = read_frames(image_out / segment.name), read_frames(host_out / segment.name)
        assert ours.shape == theirs.shape and np.array_equal(ours, theirs), segment.name


# --------------------------------------------------------------------------- the workers, as compose runs them


@pytest.fixture(scope="module")
def topology(built, tmp_path_factory):
    """The production topology on this machine without its Celery workers, and a worker per
    queue as a container of its image, run as the compose file runs it."""
    from cryptography.fernet import Fernet

    root = tmp_path_factory.mktemp("images-prod")
    stack = ProdStack.on_free_ports(root)
    fernet = Fernet.generate_key().decode()
    stack.extra_env = {"VST_WATCH_POLL_SECONDS": "2", "AIRFLOW__CORE__FERNET_KEY": fernet}
    conns = {k: v for k, v in stack.env().items() if k.startswith("AIRFLOW_CONN_WASB_")}
    config = render(REQUIRED | {"AIRFLOW_FERNET_KEY": fernet} | conns, root)
    addresses = {"postgres": stack.pg_port, "redis": stack.redis_port, "airflow-apiserver": stack.api_port}
    prefix, began = f"vst-test-{uuid.uuid4().hex[:8]}_", time.monotonic()
    containers: dict[str, str] = {}
    try:
        stack.start(workers=False)
        for queue, name in WORKERS.items():
            # Two workers on the host's network: each serves its task logs on a port of its own.
            extra = {"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())}
            containers[queue] = f"{prefix}{name}"
            docker("run", "-d", "--name", containers[queue], *run_args(config["services"][name], prefix, addresses,
                                                                      extra))
        for queue, container in containers.items():
            wait_for_container_log(container, "ready.", 300)
        FIGURES.append(f"images: topology with containerized workers up: {time.monotonic() - began:.0f} s")
        yield stack, config, containers
    finally:
        for queue, container in containers.items():
            (root / f"container-{queue}.log").write_text(container_log(container))
            docker("cp", f"{container}:/opt/airflow/logs", str(root / f"logs-{queue}"), check=False)  # task logs
            docker("rm", "-f", container, check=False)
        for volume in docker("volume", "ls", "-q", "--filter", f"name={prefix}", check=False).stdout.split():
            docker("volume", "rm", volume, check=False)
        stack.stop()
        if stack.root not in stack.pg_data.parents:
            shutil.rmtree(stack.pg_data, ignore_errors=True)


def container_log(container: str) -> str:
    result = docker("logs", container, check=False)
    return result.stdout + result.stderr


def wait_for_container_log(container: str, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in container_log(container):
            return
        state = docker("inspect", "--format", "{{.State.Status}}", container, check=False).stdout.strip()
        assert state == "running", f"{container} is {state}:\n{container_log(container)[-3000:]}"
        time.sleep(2)
    raise AssertionError(f"{container} did not say {text!r} in {timeout:.0f} s:\n{container_log(container)[-3000:]}")


@pytest.mark.timeout(1500)  # the topology's start included: 4-5 minutes on a busy machine
def test_an_upload_goes_through_the_containerized_workers(topology, clip_factory):
    """An upload becomes a published video with only the two containers as workers: probe,
    split and stitch_and_publish on the default image's worker, score_local and preview on the
    scoring image's (each worker's own log names the run's tasks it executed)."""
    from azure.core.exceptions import ResourceNotFoundError

    stack, config, containers = topology
    clip = clip_factory(seconds=1.0, fps="10", size=(96, 64))
    props = stack.blob_client().get_blob_client("videos-in", "images/upload.mp4").upload_blob(clip.read_bytes(),
                                                                                              overwrite=True)
    output = stack.blob_client().get_blob_client("videos-out", default_output_name("images/upload.mp4", "19", None))
    api, began = Api(stack), time.monotonic()
    while True:
        try:
            if output.get_blob_properties().last_modified >= props["last_modified"]:
                break
        except ResourceNotFoundError:
            pass
        assert time.monotonic() - began < 900, f"no video after 900 s: {api.runs()}"
        time.sleep(3)
    FIGURES.append(f"images: upload -> video through the containerized workers: {time.monotonic() - began:.0f} s")

    (run_id,) = [r for r in api.runs() if r.startswith("upload__")]
    while (state := api.runs()[run_id]["state"]) not in ("success", "failed"):  # clean_up, notify: after the video
        assert time.monotonic() - began < 900, api.tasks(run_id)
        time.sleep(3)
    tasks = api.tasks(run_id)
    assert state == "success", {name: task["state"] for name, task in tasks.items()}
    assert tasks["probe"]["queue"] == "default" and tasks["score_local"]["queue"] == "scoring", tasks
    ran = {queue: {task for task in tasks for line in container_log(container).splitlines()
                   if f"task_id='{task}'" in line and f"run_id='{run_id}'" in line}
           for queue, container in containers.items()}
    assert {"probe", "split", "stitch_and_publish"} <= ran["default"] and {"score_local", "preview"} <= ran["scoring"], ran
    video = Path(stack.root) / "out.mp4"
    video.write_bytes(output.download_blob().readall())
    assert len(read_frames(video)) == len(read_frames(clip))


def test_the_compose_health_check_passes_in_both_workers(topology):
    """The compose file's health check of each worker (``celery inspect ping`` of its own node)
    answers "pong" in its container. Run here by hand with room to finish: on this test machine
    the check's Airflow import alone can outlast the file's 10 s timeout while the topology and
    other tests share two cores, so Docker's own verdict is not what is tested."""
    stack, config, containers = topology
    for queue, container in containers.items():
        check = config["services"][WORKERS[queue]]["healthcheck"]["test"]
        command = unescaped(check[1]) if check[0] == "CMD-SHELL" else shlex.join(check[1:])
        began = time.monotonic()
        result = docker("exec", container, "sh", "-c", command, check=False, timeout=300)
        FIGURES.append(f"images: health check of the {queue} worker: {time.monotonic() - began:.0f} s")
        assert result.returncode == 0 and "pong" in result.stdout, f"{queue}: {result.stdout}\n{result.stderr[-2000:]}"
