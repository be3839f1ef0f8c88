"""The scoring node's GPU decisions, on a CPU: which sizes torch can run, one rank per GPU."""

from __future__ import annotations

import pytest

from scoring import gpus

# torch 2.13's CUDA 12.8 wheels (pytorch .ci/manywheel/build_cuda.sh, cu128: 7.5;8.0;8.6;9.0;10.0;12.0+PTX)
CU128 = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]


def test_the_default_sizes_run_and_the_retired_v100_fails_in_one_line():
    for size in gpus.SUGGESTED:
        assert gpus.unsupported_reason(size, gpus.VM_SIZES[size].capability, CU128) is None
    assert gpus.DEFAULT_VM_SIZE in gpus.SUGGESTED
    reason = gpus.unsupported_reason("Standard_NC6s_v3", gpus.VM_SIZES["Standard_NC6s_v3"].capability, CU128)
    assert reason is not None and "\n" not in reason
    assert reason.startswith("Standard_NC6s_v3 has a GPU of compute capability 7.0 (sm_70)")
    assert "Standard_NC4as_T4_v3" in reason and "Standard_NC24ads_A100_v4" in reason
    # an sm_86 GPU runs sm_80 kernels; a newer GPU runs PTX; an older build lacks newer GPUs
    assert gpus.unsupported_reason(None, (8, 6), ["sm_80"]) is None
    assert gpus.unsupported_reason(None, (12, 1), ["sm_90", "compute_120"]) is None
    assert "this node's VM size" in gpus.unsupported_reason(None, (9, 0), ["sm_75", "sm_80"])


def test_one_rank_per_gpu_from_the_launchers_local_rank():
    assert gpus.local_rank({"OMPI_COMM_WORLD_LOCAL_RANK": "3"}) == 3  # Open MPI (Azure ML's MpiDistribution)
    assert gpus.local_rank({"MPI_LOCALRANKID": "1"}) == 1  # MPICH / Hydra
    assert gpus.local_rank({}) is None
    assert [gpus.device_for(r, 4) for r in range(5)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0"]
    assert gpus.gpus_per_node("Standard_NC96ads_A100_v4") == 4 and gpus.gpus_per_node("Standard_NC4as_T4_v3") == 1
    # the service reports sizes upper-cased: any case is read, and kept as Azure documents it
    assert gpus.gpus_per_node("STANDARD_NC48ADS_A100_V4") == 2
    assert gpus.canonical_vm_size("STANDARD_NC4AS_T4_V3") == "Standard_NC4as_T4_v3"
    with pytest.raises(ValueError, match="unknown GPU VM size 'Standard_D4s_v5'"):
        gpus.gpus_per_node("Standard_D4s_v5")


def test_mpich_ranks_on_one_node_get_distinct_local_ranks(tmp_path):
    """Under mpiexec (MPICH here; Open MPI on Azure ML), each rank on a node gets its own GPU index."""
    import subprocess
    import sys
    from pathlib import Path

    mpiexec = Path(sys.executable).with_name("mpiexec")
    code = ("import sys; from scoring import gpus; from scoring.networks import score; w = score.World(); "  # a file per rank: no interleaving
            "open(f'{sys.argv[1]}/rank{w.rank}', 'w').write("
            "f'{gpus.local_rank()} {w.local_rank} {gpus.device_for(gpus.local_rank(), 2)}')")
    subprocess.run([str(mpiexec), "-n", "2", sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                   text=True, timeout=120, check=True)
    assert sorted(p.read_text() for p in tmp_path.glob("rank*")) == ["0 0 cuda:0", "1 1 cuda:1"]
