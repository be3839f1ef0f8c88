"""The price of a run before its wait: scoring time, and on Azure ML node-seconds and cost.

From the frame count and size probe measured, the rate of the machine that will score
(``RATES``: seconds per frame per megapixel for the 26-style network at its default precision,
each with its date and machine, or marked estimated) and, on Azure ML, the cluster's configured
price per node-hour (``price_per_node_hour`` in its configuration: docs/azureml.md). The
manifest puts this estimate beside what the run actually took.
"""

from __future__ import annotations

from dataclasses import dataclass

LOCAL = "local"


@dataclass(frozen=True)
class Rate:
    seconds_per_megapixel_frame: float  # the score step, per frame of 1,000,000 pixels
    when: str  # date measured, or "estimated"
    machine: str
    how: str


# docs/azureml.md lists this table (tests/test_docs.py holds the two together).
RATES = {
    # `mpiexec -n 2 python -m scoring score --style 19` on `scoring sample --seconds 6 --size 640x360`,
    # the whole step with the ranks' start-up; the runs and their load are in docs/azureml.md.
    LOCAL: Rate(2.4, "2026-12-02", "Intel Xeon (family 6 model 207, AVX-512 BF16/VNNI), 2 cores, 2 ranks, shared",
                "score step, 180 frames of 640x360, style 19, bf16, load average 15-19"),
    # GPU nodes: the network alone was measured on an H100 80GB HBM3 (docs/performance.md, on a
    # CUDA GPU); each size scales it by its GPU's memory bandwidth (the network is memory-bound
    # there) and adds the node's CPU encode. Estimated until measured.
    "Standard_NC40ads_H100_v5": Rate(0.005, "estimated", "NVIDIA H100 NVL (1 per node)",
                                     "H100 figure x 3.35/3.9 TB/s, plus encode on the node's 40 cores"),
    "Standard_NC24ads_A100_v4": Rate(0.009, "estimated", "NVIDIA A100 80GB PCIe (1 per node)",
                                     "H100 figure x 3.35/1.94 TB/s, plus encode on the node's 24 cores"),
    "Standard_NC4as_T4_v3": Rate(0.045, "estimated", "NVIDIA T4 (1 per node)",
                                 "H100 figure x 3.35/0.32 TB/s, plus encode on the node's 4 cores"),
}
# The other networks against the 26-style one, measured side by side on one 2-core CPU
# (the per-frame times are in docs/performance.md).
NETWORK_FACTORS = {"style": 1.0, "model_blob": 4.2, "style_image": 0.7}


def rate_for(backend: str, vm_size: str | None = None) -> tuple[str, Rate]:
    """The rate that applies: the local CPU's, or the VM size's (a size without one takes the
    rate of another size with the same GPU, or the T4's, the slowest listed)."""
    if backend == LOCAL:
        return LOCAL, RATES[LOCAL]
    if vm_size in RATES:
        return vm_size, RATES[vm_size]
    from scoring.gpus import VM_SIZES

    gpu = VM_SIZES[vm_size].gpu if vm_size in VM_SIZES else None
    for size, rate in RATES.items():
        if size in VM_SIZES and VM_SIZES[size].gpu == gpu:
            return size, rate
    return "Standard_NC4as_T4_v3", RATES["Standard_NC4as_T4_v3"]


def network(params: dict) -> str:
    return "style_image" if params.get("style_image") else "model_blob" if params.get("model_blob") else "style"


def estimate(frames: int, width: int, height: int, params: dict, cluster=None) -> dict:
    """What the score step will take. ``cluster``: the Azure ML cluster configuration
    (``aml_backend.cluster.ClusterConfig``) when the run scores there."""
    backend = params.get("backend") or LOCAL
    megapixels = width * height / 1e6
    factor = NETWORK_FACTORS[network(params)]
    if backend == LOCAL or cluster is None:
        name, rate = rate_for(LOCAL)
        seconds = frames * megapixels * rate.seconds_per_megapixel_frame * factor
        return {"backend": LOCAL, "score_seconds": round(seconds, 1), "rate": _rate(name, rate, factor)}
    name, rate = rate_for(backend, cluster.vm_size)
    nodes = int(params.get("azureml_nodes") or 1)
    gpus = nodes * cluster.gpus_per_node
    seconds = frames * megapixels * rate.seconds_per_megapixel_frame * factor / gpus
    node_seconds = seconds * nodes
    price = getattr(cluster, "price_per_node_hour", None)
    return {"backend": backend, "score_seconds": round(seconds, 1), "rate": _rate(name, rate, factor),
            "vm_size": cluster.vm_size, "tier": cluster.tier, "nodes": nodes,
            "node_seconds": round(node_seconds, 1),
            "price_per_node_hour": price,
            "cost": None if price is None else round(node_seconds / 3600 * float(price), 4),
            "left_out": "node start-up and idle time before scale-down, and time waiting for nodes"}


def _rate(name: str, rate: Rate, factor: float) -> dict:
    return {"machine": name, "seconds_per_megapixel_frame": rate.seconds_per_megapixel_frame,
            "network_factor": factor, "when": rate.when}


def actual(estimated: dict | None, scored: dict) -> dict:
    """The manifest's ``estimate`` field: the estimate beside what the run took."""
    took = {"score_seconds": scored.get("seconds")}
    node_seconds = (scored.get("cost") or {}).get("node_seconds")
    if node_seconds:
        took["node_seconds"] = round(sum(node_seconds.values()), 1)
        price = (estimated or {}).get("price_per_node_hour")
        took["cost"] = None if price is None else round(took["node_seconds"] / 3600 * float(price), 4)
    return {"estimated": estimated, "actual": took}


def azureml_cluster(conn_id: str = "azureml_default"):
    """The configured cluster, read as the score task reads it (``aml_backend.cluster.from_airflow``,
    which ``AzureMLHook.cluster_config`` calls, without importing the Azure ML SDK): None, with a
    warning, where it cannot be read."""
    import logging

    try:
        from airflow.sdk import BaseHook
        from aml_backend.cluster import from_airflow

        return from_airflow(BaseHook.get_connection(conn_id).extra_dejson)
    except Exception as exc:  # noqa: BLE001 -- the score task reports a bad configuration in one line
        logging.getLogger(__name__).warning("no Azure ML estimate: the cluster configuration was not read (%s)", exc)
        return None
