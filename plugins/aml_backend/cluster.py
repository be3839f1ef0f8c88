"""The compute cluster is configuration, shared by every run: what the ``azureml_default``
connection's extra says under ``"cluster"`` (or the ``vst_azureml_cluster`` Variable, JSON,
which wins when set), never a run's parameter.

    {"cluster": {"name": "vst-gpu", "vm_size": "Standard_NC4as_T4_v3", "tier": "low_priority",
                 "min_nodes": 0, "max_nodes": 4, "idle_seconds": 120, "keep_warm": false,
                 "subnet": null, "node_public_ip": true, "ssh": false, "identity": "",
                 "price_per_node_hour": null}}

Placement and identity (docs/azureml.md, "Network and identity"): ``subnet``, the ARM id of a
subnet of the workspace's VNet, places the nodes there; ``node_public_ip: false`` gives them
no public address (with a subnet, or a workspace with a managed network); SSH to the nodes
stays off unless ``ssh`` is true; ``identity`` is ``"system"`` (a system-assigned managed
identity), the ARM id of a user-assigned one, or empty (none).

The operator creates the cluster from it when the workspace has none, and otherwise uses the
cluster as it is: it never resizes or recreates it (an administrator changes the cluster, then
the configuration). A run asks only for a node count, up to the cluster's max.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, fields

from scoring.gpus import DEFAULT_VM_SIZE, canonical_vm_size, gpus_per_node

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
    subnet: str | None = None
    node_public_ip: bool = True
    ssh: bool = False
    identity: str = ""
    price_per_node_hour: float | None = None  # the region's price, for the estimate before a run (observability)

    def __post_init__(self):
        if self.tier not in TIERS:
            raise ValueError(f"cluster tier must be one of {', '.join(TIERS)}, got {self.tier!r}")
        if not 0 <= self.min_nodes <= self.max_nodes or self.max_nodes < 1:
            raise ValueError(f"cluster needs 0 <= min_nodes <= max_nodes and max_nodes >= 1, "
                             f"got {self.min_nodes}..{self.max_nodes}")
        # a size we know the GPUs of (or a one-line error), kept as Azure documents it
        object.__setattr__(self, "vm_size", canonical_vm_size(self.vm_size))
        if self.subnet and not _is_subnet_id(self.subnet):
            raise ValueError(f"cluster subnet must be a subnet's ARM id (/subscriptions/.../resourceGroups/.../"
                             f"providers/Microsoft.Network/virtualNetworks/VNET/subnets/SUBNET), got {self.subnet!r}")
        if self.identity not in ("", "system") and not _is_identity_id(self.identity):
            raise ValueError("cluster identity must be 'system', a user-assigned identity's ARM id (/subscriptions/"
                             ".../providers/Microsoft.ManagedIdentity/userAssignedIdentities/NAME) or empty, "
                             f"got {self.identity!r}")

    @classmethod
    def from_settings(cls, settings: dict | None) -> ClusterConfig:
        settings = dict(settings or {})
        unknown = sorted(set(settings) - {f.name for f in fields(cls)})
        if unknown:
            known = ", ".join(f.name for f in fields(cls))
            raise ValueError(f"unknown cluster settings {', '.join(unknown)}: use {known}")
        flag = lambda v: str(v).lower() in ("1", "true", "yes")  # noqa: E731
        types = {"min_nodes": int, "max_nodes": int, "idle_seconds": int, "price_per_node_hour": float,
                 "keep_warm": flag, "node_public_ip": flag, "ssh": flag, "subnet": lambda v: str(v) if v else None,
                 "identity": lambda v: str(v or "")}
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


def _is_subnet_id(value: str) -> bool:
    parts = value.strip("/").split("/")
    return len(parts) == 10 and parts[0].lower() == "subscriptions" and parts[5].lower() == "microsoft.network" \
        and parts[6].lower() == "virtualnetworks" and parts[8].lower() == "subnets"


def _is_identity_id(value: str) -> bool:
    parts = value.strip("/").split("/")
    return len(parts) == 8 and parts[0].lower() == "subscriptions" \
        and parts[5].lower() == "microsoft.managedidentity" and parts[6].lower() == "userassignedidentities"


def configured(extra: dict, variable: str | None = None) -> ClusterConfig:
    """The cluster from a Variable's JSON (when set) or the connection extra's ``cluster``."""
    if variable:
        return ClusterConfig.from_settings(json.loads(variable))
    return ClusterConfig.from_settings(extra.get("cluster"))


def from_airflow(extra: dict) -> ClusterConfig:
    """The cluster as a task reads it: the ``vst_azureml_cluster`` Variable when set, else the
    connection ``extra``'s ``cluster``. The one reading of both, for the score task
    (``AzureMLHook.cluster_config``) and probe's estimate, without the Azure ML SDK; one-line
    ``ValueError`` for a bad setting."""
    import contextlib

    from airflow.sdk import Variable

    variable = None
    with contextlib.suppress(Exception):  # no such Variable (or no metadata DB): the connection decides
        variable = Variable.get(VARIABLE, default=None)
    return configured(extra, variable)


def configured_cluster(conn_id: str = "azureml_default") -> str:
    """What the DAG form shows next to the node count: the cluster a run would use, in words, from
    the same reading as the score task (:func:`from_airflow`; read when the DAG is parsed: one
    Variable and one connection lookup, no Azure call)."""
    try:
        from airflow.sdk import BaseHook, Variable

        variable = None
        with contextlib.suppress(Exception):  # no such Variable: the connection decides
            variable = Variable.get(VARIABLE, default=None)
        extra = {} if variable else BaseHook.get_connection(conn_id).extra_dejson
        source = f"Variable {VARIABLE}" if variable else f"connection {conn_id}"
        return configured(extra, variable).describe() + f" ({source}); the VM size and tier are the cluster's, " \
            "not a run's"
    except Exception as exc:  # noqa: BLE001 -- no connection yet, or a bad setting: say so, the form still works
        return f"configured in Variable {VARIABLE} or connection {conn_id}, extra 'cluster' ({type(exc).__name__}: {exc})"
