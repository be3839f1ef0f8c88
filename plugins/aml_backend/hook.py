"""AzureMLHook: an Airflow connection -> ``azure.ai.ml.MLClient``, and the few calls we make.

Connection (type ``azureml``; any type works when created from an environment variable):

* ``extra.subscription_id``, ``extra.resource_group``, ``extra.workspace_name`` (required);
* service principal: ``extra.tenant_id`` plus ``login`` = client id and ``password`` = client
  secret (or ``extra.client_id`` / ``extra.client_secret``);
* without them, ``DefaultAzureCredential`` (managed identity, workload identity, az login...).

Every method here blocks (the SDK is synchronous); the trigger runs them in a thread.
"""

from __future__ import annotations

import contextlib
import io
import json
from functools import cached_property
from typing import Any

from airflow.providers.common.compat.sdk import BaseHook
from azure.ai.ml import MLClient
from azure.ai.ml.entities import AmlCompute, AzureBlobDatastore, Environment, SasTokenConfiguration
from azure.core.exceptions import ResourceNotFoundError

# What the service reports (FACTS.md); NotResponding may go back to an earlier state.
TERMINAL_STATES = frozenset({"Completed", "Failed", "Canceled"})
SUCCESS_STATE = "Completed"


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

    def ensure_compute(self, wanted: AmlCompute) -> AmlCompute:
        """Create the cluster, or bring its scale settings to ``wanted``. The VM size and tier of
        an existing cluster cannot change: a mismatch is an error that names the fix."""
        try:
            current = self.client.compute.get(wanted.name)
        except ResourceNotFoundError:
            self.log.info("creating compute cluster %s (%s, %s, 0..%s nodes)", wanted.name, wanted.size,
                          wanted.tier, wanted.max_instances)
            return self.client.compute.begin_create_or_update(wanted).result()
        for field in ("size", "tier"):
            have, want = getattr(current, field, None), getattr(wanted, field)
            if have and want and str(have).lower() != str(want).lower():
                raise ValueError(f"compute cluster {wanted.name} exists with {field} {have}, not {want}: "
                                 "choose another cluster name or delete the cluster")
        scale = ("min_instances", "max_instances", "idle_time_before_scale_down")
        if any(getattr(current, f, None) != getattr(wanted, f) for f in scale):
            self.log.info("updating scale settings of %s to %s", wanted.name, {f: getattr(wanted, f) for f in scale})
            return self.client.compute.begin_create_or_update(wanted).result()
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
        """A datastore holding a SAS token (stored by the workspace, never in the job)."""
        store = AzureBlobDatastore(name=name, account_name=account_name, container_name=container, endpoint=endpoint,
                                   credentials=SasTokenConfiguration(sas_token=sas_token),
                                   description="short-lived access for one video_style_transfer job")
        self.client.datastores.create_or_update(store)
        return name

    # ------------------------------------------------------------------ jobs

    def submit(self, job):
        """Submit a job (uploads its code); returns the service's job entity."""
        return self.client.jobs.create_or_update(job)

    def get_job(self, name: str):
        return self.client.jobs.get(name)

    def get_status(self, name: str) -> str:
        return self.client.jobs.get(name).status

    def job_error(self, name: str) -> str:
        """The service's error for a job that ended Failed or Canceled, or '' if it gave none.

        ``jobs.stream`` raises the run's error for a failed job (the SDK's public way to read it);
        for a cancelled one it raises nothing, so the run details are read the way the SDK does."""
        sink = io.StringIO()
        try:
            with contextlib.redirect_stdout(sink):
                self.client.jobs.stream(name)
        except Exception as exc:  # noqa: BLE001 -- JobException carries the service's error JSON
            return _error_text(getattr(exc, "message", None) or str(exc))
        runs = getattr(self.client.jobs, "_runs_operations", None)
        with contextlib.suppress(Exception):
            details = runs.get_run_details(name)
            if details.error:
                return _error_text(json.dumps(details.error.as_dict()))
        return ""

    def cancel(self, name: str) -> None:
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
