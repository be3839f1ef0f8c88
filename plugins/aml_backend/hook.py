"""AzureMLHook: an Airflow connection -> ``azure.ai.ml.MLClient``, and the few calls we make.

Connection (type ``azureml``; any type works when created from an environment variable):

* ``extra.subscription_id``, ``extra.resource_group``, ``extra.workspace_name`` (required);
* service principal: ``extra.tenant_id`` plus ``login`` = client id and ``password`` = client
  secret (or ``extra.client_id`` / ``extra.client_secret``);
* without them, ``DefaultAzureCredential`` (managed identity, workload identity, az login...);
* ``extra.cluster``: the shared compute cluster (see ``cluster.py``).

Every method here blocks (the SDK is synchronous); the trigger runs them in a thread.
"""

from __future__ import annotations

import contextlib
import json
from functools import cached_property
from typing import Any

from airflow.providers.common.compat.sdk import BaseHook
from azure.ai.ml import MLClient
from azure.ai.ml.entities import AmlCompute, AzureBlobDatastore, Environment, SasTokenConfiguration
from azure.core.exceptions import ResourceNotFoundError

from .cluster import VARIABLE, ClusterConfig, configured

# What the service reports (FACTS.md); NotResponding may go back to an earlier state.
TERMINAL_STATES = frozenset({"Completed", "Failed", "Canceled"})
SUCCESS_STATE = "Completed"
PREEMPTED_NODE_STATE = "preempted"  # AmlComputeNodeInfo.node_state of a low-priority node taken back


class AzureMLHook(BaseHook):
    """Talks to one Azure ML workspace through ``MLClient``."""

    conn_name_attr = "azureml_conn_id"
    default_conn_name = "azureml_default"
    conn_type = "azureml"
    hook_name = "Azure Machine Learning"

    def __init__(self, azureml_conn_id: str = default_conn_name):
        super().__init__()
        self.azureml_conn_id = azureml_conn_id

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {"hidden_fields": ["schema", "port", "host"],
                "relabeling": {"login": "Client ID", "password": "Client Secret"}}

    def workspace(self) -> dict[str, str]:
        """subscription_id, resource_group and workspace_name from the connection."""
        extra = self.get_connection(self.azureml_conn_id).extra_dejson
        fields = {name: extra.get(name) or extra.get(f"extra__azureml__{name}")
                  for name in ("subscription_id", "resource_group", "workspace_name")}
        missing = [name for name, value in fields.items() if not value]
        if missing:
            raise ValueError(f"connection {self.azureml_conn_id!r} lacks {', '.join(missing)} in its extra")
        return fields

    def credential(self):
        conn = self.get_connection(self.azureml_conn_id)
        extra = conn.extra_dejson
        tenant_id = extra.get("tenant_id")
        client_id = conn.login or extra.get("client_id")
        client_secret = conn.password or extra.get("client_secret")
        if tenant_id and client_id and client_secret:
            from azure.identity import ClientSecretCredential

            return ClientSecretCredential(tenant_id=tenant_id, client_id=client_id, client_secret=client_secret)
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential(managed_identity_client_id=extra.get("managed_identity_client_id"))

    @cached_property
    def client(self) -> MLClient:
        ws = self.workspace()
        return MLClient(self.credential(), subscription_id=ws["subscription_id"],
                        resource_group_name=ws["resource_group"], workspace_name=ws["workspace_name"])

    def get_conn(self) -> MLClient:
        return self.client

    # ------------------------------------------------------------------ compute, environment, data

    def cluster_config(self) -> ClusterConfig:
        """The shared cluster as configured (Variable ``vst_azureml_cluster`` when set, else the
        connection extra's ``cluster``); one-line ``ValueError`` for a bad setting."""
        from airflow.providers.common.compat.sdk import Variable

        variable = None
        with contextlib.suppress(Exception):  # no such Variable (or no metadata DB): the connection decides
            variable = Variable.get(VARIABLE, default=None)
        return configured(self.get_connection(self.azureml_conn_id).extra_dejson, variable)

    def ensure_cluster(self, config: ClusterConfig) -> AmlCompute:
        """The workspace's cluster of that name; created from ``config`` when there is none. An
        existing cluster is used as it is, never resized or recreated: runs share it."""
        from .entities import build_compute

        try:
            current = self.client.compute.get(config.name)
        except ResourceNotFoundError:
            self.log.info("creating compute cluster %s", config.describe())
            return self.client.compute.begin_create_or_update(build_compute(config)).result()
        if str(current.size).lower() != config.vm_size.lower() or current.tier != config.tier:
            self.log.warning("compute cluster %s is %s %s, configured %s %s: using it as it is", config.name,
                             current.size, current.tier, config.vm_size, config.tier)
        return current

    def ensure_environment(self, environment: Environment) -> str:
        """Register the environment unless this version exists; returns ``name:version``."""
        try:
            self.client.environments.get(environment.name, version=environment.version)
        except ResourceNotFoundError:
            self.log.info("registering environment %s:%s (Azure ML builds the image on first use)",
                          environment.name, environment.version)
            self.client.environments.create_or_update(environment)
        return f"{environment.name}:{environment.version}"

    def register_sas_datastore(self, name: str, account_name: str, container: str, sas_token: str,
                               endpoint: str = "core.windows.net") -> str:
        """A datastore holding a SAS token (stored by the workspace, never in the job); registering
        it again replaces the token."""
        store = AzureBlobDatastore(name=name, account_name=account_name, container_name=container, endpoint=endpoint,
                                   credentials=SasTokenConfiguration(sas_token=sas_token),
                                   description="short-lived access for one video_style_transfer run")
        self.client.datastores.create_or_update(store)
        return name

    def delete_datastore(self, name: str) -> None:
        """Unregister a datastore (and the workspace's secret for its token); gone already is fine."""
        with contextlib.suppress(ResourceNotFoundError):
            self.client.datastores.delete(name)

    # ------------------------------------------------------------------ jobs

    def submit(self, job):
        """Submit a job (uploads its code); returns the service's job entity."""
        return self.client.jobs.create_or_update(job)

    def find_job(self, name: str):
        """The job of that name, or None when the workspace has none."""
        try:
            return self.client.jobs.get(name)
        except ResourceNotFoundError:
            return None

    def get_status(self, name: str) -> str:
        return self.client.jobs.get(name).status

    def job_error(self, name: str) -> str:
        """The service's error for a job that ended, or '' if it gave none (a cancelled job).

        ``jobs.stream`` (the SDK's public way) prints the job's log, which lands in the task's
        log, and raises the service's error for a failed job. Called on the worker, never in the
        triggerer, whose stdout is shared by every deferred task."""
        try:
            self.client.jobs.stream(name)
        except ResourceNotFoundError:
            raise
        except Exception as exc:  # noqa: BLE001 -- JobException carries the service's error JSON
            return _error_text(getattr(exc, "message", None) or str(exc))
        return ""

    def preempted_nodes(self, cluster: str) -> int:
        """How many of the cluster's nodes the service reports taken back (low priority)."""
        return sum(1 for node in self.client.compute.list_nodes(cluster)
                   if str(getattr(node, "node_state", "")).lower() == PREEMPTED_NODE_STATE)

    def cancel(self, name: str) -> None:
        """Cancel the job unless it has ended already."""
        if self.get_status(name) not in TERMINAL_STATES:
            self.client.jobs.begin_cancel(name).result()

    def download_logs(self, name: str, path: str) -> None:
        self.client.jobs.download(name, download_path=path, all=False)


def _error_text(raw: str) -> str:
    """The readable part of the service's error JSON (code: message), else the raw text."""
    text = raw.strip()
    start = text.find("{")
    with contextlib.suppress(ValueError):
        data = json.loads(text[start:]) if start >= 0 else None
        error = data.get("error", data) if isinstance(data, dict) else None
        if isinstance(error, dict) and error.get("message"):
            return f"{error.get('code', 'Error')}: {error['message']}"
    return text
