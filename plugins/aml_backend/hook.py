"""AzureMLHook: an Airflow connection -> ``azure.ai.ml.MLClient``, and the few calls we make.

Connection (type ``azureml``; any type works when created from an environment variable), with
the field names of the Azure provider's hooks:

* extra ``subscriptionId``, ``resource_group_name``, ``workspace_name`` (required;
  ``subscription_id`` and ``resource_group`` are read too);
* a service principal: extra ``tenantId``, ``login`` = client id, ``password`` = client
  secret (all three, or a one-line error naming what is missing);
* without one, ``DefaultAzureCredential`` through the provider's helper: a managed identity
  (extra ``managed_identity_client_id`` for a user-assigned one), workload identity (AKS: the
  ``AZURE_FEDERATED_TOKEN_FILE`` environment, extra ``workload_identity_tenant_id``), ``az login``;
* extra ``cloud_environment``: ``AzurePublicCloud`` (default), ``AzureUSGovernment`` or
  ``AzureChinaCloud``;
* extra ``cluster``: the shared compute cluster (see ``cluster.py``).

Every method here blocks (the SDK is synchronous); the trigger runs them in a thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from functools import cached_property
from typing import Any

from airflow.providers.common.compat.sdk import BaseHook
from airflow.providers.microsoft.azure.utils import add_managed_identity_connection_widgets
from azure.ai.ml import MLClient
from azure.ai.ml.entities import AmlCompute, AzureBlobDatastore, Environment, SasTokenConfiguration
from azure.core.exceptions import ResourceNotFoundError

from .cluster import ClusterConfig, from_airflow

# What the service reports (FACTS.md); NotResponding may go back to an earlier state.
TERMINAL_STATES = frozenset({"Completed", "Failed", "Canceled"})
SUCCESS_STATE = "Completed"
PREEMPTED_NODE_STATE = "preempted"  # listNodes' nodeState of a low-priority node taken back
# The provider's cloud names -> azure-ai-ml's, and Entra ID's host there.
CLOUDS = {"AzurePublicCloud": ("AzureCloud", "login.microsoftonline.com"),
          "AzureUSGovernment": ("AzureUSGovernment", "login.microsoftonline.us"),
          "AzureChinaCloud": ("AzureChinaCloud", "login.chinacloudapi.cn")}
USER_LOGS = "user_logs/"  # under the job's default output: what the job's processes print
# azure-identity logs every token it hands out, cached or not: a line per status read in the task log
logging.getLogger("azure.identity").setLevel(logging.WARNING)


class AzureMLHook(BaseHook):
    """Talks to one Azure ML workspace through ``MLClient``."""

    conn_name_attr = "azureml_conn_id"
    default_conn_name = "azureml_default"
    conn_type = "azureml"
    hook_name = "Azure Machine Learning"

    def __init__(self, azureml_conn_id: str = default_conn_name):
        super().__init__()
        self.azureml_conn_id = azureml_conn_id
        self._client: MLClient | None = None
        self._lock = threading.Lock()  # the trigger calls from threads: one client, made once

    @classmethod
    @add_managed_identity_connection_widgets
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms import StringField

        return {name: StringField(lazy_gettext(label), widget=BS3TextFieldWidget()) for name, label in (
            ("tenantId", "Tenant ID"), ("subscriptionId", "Subscription ID"),
            ("resource_group_name", "Resource Group Name"), ("workspace_name", "Workspace Name"),
            ("cloud_environment", "Azure Cloud Environment"))}

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {"hidden_fields": ["schema", "port", "host"],
                "relabeling": {"login": "Client ID", "password": "Client Secret"}}

    @cached_property
    def _extra(self) -> dict:
        return self.get_connection(self.azureml_conn_id).extra_dejson

    def _field(self, *names: str) -> str | None:
        for name in names:
            for key in (name, f"extra__azureml__{name}"):
                if self._extra.get(key) not in (None, ""):
                    return self._extra[key]
        return None

    def workspace(self) -> dict[str, str]:
        """subscription_id, resource_group and workspace_name from the connection."""
        fields = {"subscription_id": self._field("subscriptionId", "subscription_id"),
                  "resource_group": self._field("resource_group_name", "resource_group"),
                  "workspace_name": self._field("workspace_name")}
        missing = [{"subscription_id": "subscriptionId", "resource_group": "resource_group_name"}.get(name, name)
                   for name, value in fields.items() if not value]
        if missing:
            raise ValueError(f"connection {self.azureml_conn_id!r} lacks {', '.join(missing)} in its extra")
        return fields

    def _cloud(self) -> tuple[str, str]:
        name = self._field("cloud_environment") or "AzurePublicCloud"
        if name not in CLOUDS:
            raise ValueError(f"connection {self.azureml_conn_id!r}: unknown cloud_environment {name!r}, "
                             f"use one of {', '.join(CLOUDS)}")
        return CLOUDS[name]

    @cached_property
    def credential(self):
        """The connection's credential, made once: MLClient and the log reader share its tokens."""
        conn = self.get_connection(self.azureml_conn_id)
        principal = {"tenantId": self._field("tenantId", "tenant_id"),
                     "login (client id)": conn.login or self._field("client_id"),
                     "password (client secret)": conn.password or self._field("client_secret")}
        if all(principal.values()):
            from azure.identity import ClientSecretCredential

            tenant, client_id, secret = principal.values()
            return ClientSecretCredential(tenant, client_id, secret, authority=self._cloud()[1])
        if principal["login (client id)"] or principal["password (client secret)"]:
            missing = ", ".join(name for name, value in principal.items() if not value)
            raise ValueError(f"connection {self.azureml_conn_id!r} holds half a service principal: it lacks "
                             f"{missing}. Give tenantId, login and password, or none of them to use "
                             "DefaultAzureCredential (managed identity, workload identity)")
        managed, workload = self._field("managed_identity_client_id"), self._field("workload_identity_tenant_id")
        if managed and not workload:  # the provider's helper passes a client id only with a tenant
            from azure.identity import DefaultAzureCredential

            return DefaultAzureCredential(managed_identity_client_id=managed)
        from airflow.providers.microsoft.azure.utils import get_sync_default_azure_credential

        return get_sync_default_azure_credential(managed_identity_client_id=managed,
                                                 workload_identity_tenant_id=workload)

    @property
    def client(self) -> MLClient:
        """The workspace's MLClient, made on first use (in the triggerer: in a thread)."""
        with self._lock:
            if self._client is None:
                ws = self.workspace()
                self._client = MLClient(self.credential, subscription_id=ws["subscription_id"],
                                        resource_group_name=ws["resource_group"], workspace_name=ws["workspace_name"],
                                        cloud=self._cloud()[0], show_progress=False)
            return self._client

    def get_conn(self) -> MLClient:
        return self.client

    # ------------------------------------------------------------------ compute, environment, data

    def cluster_config(self) -> ClusterConfig:
        """The shared cluster as configured (Variable ``vst_azureml_cluster`` when set, else the
        connection extra's ``cluster``); one-line ``ValueError`` for a bad setting."""
        return from_airflow(self._extra)

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
        status = self.client.jobs.get(name).status  # a JobStatus (a str enum) from the SDK
        return getattr(status, "value", status)

    def job_error(self, name: str) -> str:
        """The service's error for a job that ended, or '' if it gave none (a cancelled job).

        ``jobs.stream`` (the SDK's public way) reads it from the run history and raises it for a
        failed job; on a finished job it prints only the run id, the studio link and a summary
        (the log itself reached the task log while the job ran: :class:`logs.LogTail`)."""
        try:
            self.client.jobs.stream(name)
        except ResourceNotFoundError:
            raise
        except Exception as exc:  # noqa: BLE001 -- JobException carries the service's error JSON
            return _error_text(getattr(exc, "message", None) or str(exc))
        return ""

    def preempted_nodes(self, cluster: str, job_name: str) -> int:
        """How many of the job's own nodes the service lists as taken back (low priority).

        azure-ai-ml 1.35.2 keeps ``listNodes``' wire keys (``nodeState``, ``runId``) in the node's
        ``__dict__`` and leaves ``node_state``/``run_id`` None: both spellings are read."""
        def field(node, attribute: str, wire: str):
            return getattr(node, attribute, None) or vars(node).get(wire)

        return sum(1 for node in self.client.compute.list_nodes(cluster)
                   if field(node, "run_id", "runId") == job_name
                   and str(field(node, "node_state", "nodeState") or "").lower() == PREEMPTED_NODE_STATE)

    def cancel(self, name: str) -> None:
        """Ask the service to cancel the job unless it has ended already; does not wait for the
        cancel (a long-running operation of its own, which the SDK polls every 30 s) to finish."""
        if self.get_status(name) not in TERMINAL_STATES:
            self.client.jobs.begin_cancel(name)

    def user_logs(self, name: str):
        """``(container client, prefix)`` of the job's ``user_logs/`` in the workspace's artifact
        store (the job's default output), read with the connection's own Entra ID credential: the
        Airflow identity needs Storage Blob Data Reader on the workspace's storage account."""
        from azure.storage.blob import ContainerClient

        job = self.client.jobs.get(name)
        default = getattr((job.outputs or {}).get("default"), "path", None) \
            or f"azureml://datastores/workspaceartifactstore/ExperimentRun/dcid.{name}"
        store_name, _, path = default.removeprefix("azureml://datastores/").partition("/")
        store = self.client.datastores.get(store_name)
        url = f"{store.protocol or 'https'}://{store.account_name}.blob.{store.endpoint or 'core.windows.net'}"
        container = ContainerClient(url, store.container_name, credential=self.credential)
        return container, f"{path.removeprefix('paths/').strip('/')}/{USER_LOGS}"


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
