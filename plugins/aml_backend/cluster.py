"""The compute cluster is configuration, shared by every run: what the ``azureml_default``
connection's extra says under ``"cluster"`` (or the ``vst_azureml_cluster`` Variable, JSON,
which wins when set), never a run's parameter.

    {"cluster": {"name": "vst-gpu", "vm_size": "Standard_NC4as_T4_v3", "tier": "low_priority",
                 "min_nodes": 0, "max_nodes": 4, "idle_seconds": 120, "keep_warm": false,
                 "price_per_node_hour": null}}

The operator creates the cluster from it when the workspace has none, and otherwise uses the
cluster as it is: it never resizes or recreates it (an administrator changes the cluster, then
the configuration). A run asks only for a node count, up to the cluster's max.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from scoring.gpus import DEFAULT_VM_SIZE, gpus_per_node

TIERS = ("low_priority", "dedicated")
VARIABLE = "vst_azureml_cluster"
# What the cluster waits before giving an idle node back: long enough that the score steps of
# runs queued a minute apart share a node, short enough that a quiet cluster costs nothing.
DEFAULT_IDLE_SECONDS = 120
KEEP_WARM_IDLE_SECONDS = 1800


@dataclass(frozen=True)
class ClusterConfig:
    name: str = "vst-gpu"
    vm_size: str = DEFAULT_VM_SIZE
    tier: str = "low_priority"
    min_nodes: int = 0
    max_nodes: int = 4
    idle_seconds: int = DEFAULT_IDLE_SECONDS
    keep_warm: bool = False
    price_per_node_hour: float | None = None  # the region's price, for the estimate before a run (observability)

    def __post_init__(self):
        if self.tier not in TIERS:
            raise ValueError(f"cluster tier must be one of {', '.join(TIERS)}, got {self.tier!r}")
        if not 0 <= self.min_nodes <= self.max_nodes or self.max_nodes < 1:
            raise ValueError(f"cluster needs 0 <= min_nodes <= max_nodes and max_nodes >= 1, "
                             f"got {self.min_nodes}..{self.max_nodes}")
        gpus_per_node(self.vm_size)  # a size we know the GPUs of, or a one-line error

    @classmethod
    def from_settings(cls, settings: dict | None) -> ClusterConfig:
        settings = dict(settings or {})
        unknown = sorted(set(settings) - {f.name for f in fields(cls)})
        if unknown:
            known = ", ".join(f.name for f in fields(cls))
            raise ValueError(f"unknown cluster settings {', '.join(unknown)}: use {known}")
        types = {"min_nodes": int, "max_nodes": int, "idle_seconds": int, "price_per_node_hour": float,
                 "keep_warm": lambda v: str(v).lower() in ("1", "true", "yes")}
        return cls(**{k: types.get(k, str)(v) for k, v in settings.items()})

    @property
    def gpus_per_node(self) -> int:
        return gpus_per_node(self.vm_size)

    @property
    def scale_idle_seconds(self) -> int:
        """Keep-warm: a longer idle time, so that the next job skips a node's start-up (billed)."""
        return max(self.idle_seconds, KEEP_WARM_IDLE_SECONDS) if self.keep_warm else self.idle_seconds

    def describe(self) -> str:
        return (f"{self.name}: {self.vm_size} ({self.gpus_per_node} GPU/node), {self.tier}, "
                f"{self.min_nodes}..{self.max_nodes} nodes")

    def as_dict(self) -> dict:
        return asdict(self)


def configured(extra: dict, variable: str | None = None) -> ClusterConfig:
    """The cluster from a Variable's JSON (when set) or the connection extra's ``cluster``."""
    if variable:
        return ClusterConfig.from_settings(json.loads(variable))
    return ClusterConfig.from_settings(extra.get("cluster"))


def configured_cluster(conn_id: str = "azureml_default") -> str:
    """What the DAG form shows next to the node count: the configured cluster, in words (read
    when the DAG is parsed: one connection lookup, no Azure call)."""
    try:
        from airflow.sdk import BaseHook

        return ClusterConfig.from_settings(BaseHook.get_connection(conn_id).extra_dejson.get("cluster")).describe() \
            + f" (connection {conn_id}); the VM size and tier are the cluster's, not a run's"
    except Exception as exc:  # noqa: BLE001 -- no connection yet, or a bad setting: say so, the form still works
        return f"configured in connection {conn_id}, extra 'cluster' ({type(exc).__name__}: {exc})"
