"""Proving a deployment: ``python -m deployment check``.

Each piece the product needs is checked by the least action that proves it, through the same
connections and hooks the tasks use, and reported in one line: ``ok``, ``FAIL`` (with what to
fix) or ``skip`` (an optional piece that is not configured). Nothing is changed for good: a
scratch blob is written and deleted, a scratch container made and deleted, a scratch datastore
registered and removed.

* ``wasb_data`` and ``wasb_system``: the account answers; the credential is a managed identity
  (or another Entra ID credential) or a SAS, not the account key (``--allow-account-keys`` for
  Azurite and other local set-ups, which have keys only); every container of
  ``storage.blobs.DATA_CONTAINERS``/``SYSTEM_CONTAINERS`` is there; the pipeline can write
  (and delete) where it writes, and make the per-run containers in the system account;
* the pool ``scoring``; the Variable ``video_style_transfer_defaults`` where set (it must parse
  as the watcher parses it);
* ``azureml_default`` (when it exists, or always with ``--azureml``): the workspace, the
  configured cluster (Variable ``vst_azureml_cluster``, else the connection's extra), the workspace's artifact store (job logs), a datastore of the run's kind
  registered and removed (the role that lets runs register theirs), and that ``wasb_system``
  can sign the run's tokens (key or user delegation key);
* ``video_webhook`` and ``smtp_default`` (when they exist): the webhook has its signing key and
  its host answers; the mail server accepts the connection's sign-in and a sender is set.
"""

from __future__ import annotations

import contextlib
import socket
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

OK, FAIL, SKIP = "ok", "FAIL", "skip"
SCRATCH = ".deployment-check"  # blob folder of the scratch writes (deleted at once)
WRITTEN = {"wasb_data": ("accepted", "videos-out", "quarantine"), "wasb_system": ("logs", "intake-ledger")}
DOCS = "docs/deploying.md"


@dataclass(frozen=True)
class Finding:
    status: str
    what: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<4}  {self.what}: {self.detail}"


def one_line(exc: BaseException) -> str:
    """The first line of an error, without the SDK's ten lines of XML or JSON after it."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    code = getattr(exc, "error_code", None)
    return f"{type(exc).__name__}{f' {code}' if code else ''}: {first[:300]}"


def check(azureml: bool | None = None, allow_account_keys: bool = False, pool_finding: Finding | None = None
          ) -> list[Finding]:
    """Every finding, in the order printed. ``azureml``: None checks Azure ML where
    ``azureml_default`` exists, True always, False never. ``pool_finding``: the pool's, found
    another way (the deployment_check DAG: a task reaches no metadata database to read pools)."""
    from storage.blobs import DATA_CONN, DATA_CONTAINERS, SYSTEM_CONN, SYSTEM_CONTAINERS

    findings: list[Finding] = []
    system = None
    for conn_id, containers in ((DATA_CONN, DATA_CONTAINERS), (SYSTEM_CONN, SYSTEM_CONTAINERS)):
        store = storage(conn_id, containers, allow_account_keys, findings)
        if conn_id == SYSTEM_CONN:
            system = store
    findings.append(pool_finding or pool())
    findings.extend(variables())
    if azureml is None:
        azureml = connection_exists("azureml_default")
    if azureml:
        findings.extend(azure_ml(system))
    else:
        findings.append(Finding(SKIP, "connection azureml_default", "not set: runs with backend=azureml would fail"))
    findings.append(webhook())
    findings.extend(mail())
    return findings


def in_a_task(azureml: str, allow_account_keys: bool, pool_seen: str) -> list[str]:
    """The deployment_check DAG's check (``azureml``: its Param, auto/yes/no; ``pool_seen``: what
    its task in the pool saw): the report printed, and AirflowFailException naming each failure
    in one line where any failed."""
    from airflow.sdk.exceptions import AirflowFailException

    from . import SCORING_POOL

    findings = check(azureml={"auto": None, "yes": True, "no": False}[azureml], allow_account_keys=allow_account_keys,
                     pool_finding=Finding(OK, f"pool {SCORING_POOL}", pool_seen))
    text, failed = report(findings)
    print(text, flush=True)
    if failed:
        raise AirflowFailException(f"{text.splitlines()[-1]}: " + "; ".join(
            f"{f.what}: {f.detail}" for f in findings if f.status == FAIL))
    return text.splitlines()


def connection_exists(conn_id: str) -> bool:
    from airflow.providers.common.compat.sdk import BaseHook

    try:
        BaseHook.get_connection(conn_id)
    except Exception:  # noqa: BLE001 -- "not defined" comes as several exception types
        return False
    return True


# ---------------------------------------------------------------------- storage


def credential_kind(client) -> str:
    credential = client.credential
    if getattr(credential, "account_key", None):
        return "account key"
    if hasattr(credential, "get_token"):
        return "Entra ID"
    if getattr(credential, "signature", None) or "sig=" in (client.url or ""):
        return "SAS"
    return "anonymous"


def storage(conn_id: str, containers: tuple[str, ...], allow_keys: bool, findings: list[Finding]):
    """The account's findings appended to ``findings``; returns its BlobStore (None if unreachable)."""
    from storage.blobs import BlobStore

    what = f"connection {conn_id}"
    if not connection_exists(conn_id):
        findings.append(Finding(FAIL, what, f"not set: add it (table in {DOCS}, or the Key Vault secret "
                                            f"airflow-connections-{conn_id.replace('_', '-')})"))
        return None
    try:
        store = BlobStore(conn_id)
        kind = credential_kind(store.client)
        store.client.get_container_client(containers[0]).exists()  # one request: the account answers
    except Exception as exc:  # noqa: BLE001 -- any failure here is the finding
        findings.append(Finding(FAIL, what, f"account not reachable: {one_line(exc)}"))
        return None
    account = store.client.account_name
    findings.append(Finding(OK, what, f"account {account} answers ({kind})"))
    if kind == "account key" and not allow_keys:
        findings.append(Finding(FAIL, f"credential {conn_id}", "the connection holds the account key: give it a "
                                f"managed identity (extra managed_identity_client_id) or a SAS ({DOCS})"))
    elif kind == "anonymous":
        findings.append(Finding(FAIL, f"credential {conn_id}", "the connection has no credential"))
    else:
        findings.append(Finding(OK, f"credential {conn_id}", kind + (" (allowed)" if kind == "account key" else "")))
    for container in containers:
        findings.append(container_finding(store, conn_id, container, container in WRITTEN.get(conn_id, ())))
    if conn_id == "wasb_system":
        findings.append(run_containers(store))
    return store


def container_finding(store, conn_id: str, container: str, write: bool) -> Finding:
    """Present and listable; where the pipeline writes, a scratch blob written and deleted."""
    from azure.core.exceptions import ResourceNotFoundError

    what = f"container {store.client.account_name}/{container}"
    client = store.client.get_container_client(container)
    try:
        next(iter(client.list_blobs(results_per_page=1).by_page()), None)
    except ResourceNotFoundError:
        return Finding(FAIL, what, "missing: `python -m deployment init` makes it (or the template's containers)")
    except Exception as exc:  # noqa: BLE001
        return Finding(FAIL, what, f"cannot list it through {conn_id}: {one_line(exc)}")
    if not write:
        return Finding(OK, what, "present, listed")
    name = f"{SCRATCH}/{uuid.uuid4().hex}"
    try:
        client.upload_blob(name, b"deployment check", overwrite=False)
    except Exception as exc:  # noqa: BLE001
        return Finding(FAIL, what, f"cannot write through {conn_id} (role Storage Blob Data Contributor): "
                                   f"{one_line(exc)}")
    try:
        client.delete_blob(name)
    except Exception as exc:  # noqa: BLE001
        return Finding(FAIL, what, f"written but cannot delete through {conn_id}: {one_line(exc)} "
                                   f"(remove {container}/{name} by hand)")
    return Finding(OK, what, "present, write and delete proven")


def run_containers(store) -> Finding:
    """Each run makes two containers of its own in the system account: make and delete one."""
    name = f"run-check-{uuid.uuid4().hex[:16]}"
    what = f"run containers {store.client.account_name}"
    try:
        store.client.create_container(name)
    except Exception as exc:  # noqa: BLE001
        return Finding(FAIL, what, f"cannot make a run's container: {one_line(exc)} (the Airflow identity needs "
                                   "Storage Blob Data Contributor on the whole system account)")
    try:
        store.client.delete_container(name)
    except Exception as exc:  # noqa: BLE001
        return Finding(FAIL, what, f"made {name} but cannot delete it: {one_line(exc)}")
    return Finding(OK, what, "a container made and deleted")


# ---------------------------------------------------------------------- Airflow's own


def pool() -> Finding:
    from . import SCORING_POOL, airflow, cli_json

    what = f"pool {SCORING_POOL}"
    try:
        pools = {p["pool"]: p for p in cli_json(airflow("pools", "list", "-o", "json"))}
    except Exception as exc:  # noqa: BLE001
        return Finding(FAIL, what, f"pools not readable: {one_line(exc)}")
    if SCORING_POOL not in pools:
        return Finding(FAIL, what, "missing: `python -m deployment init` makes it")
    slots = int(pools[SCORING_POOL]["slots"])
    if slots < 1:
        return Finding(FAIL, what, f"{slots} slots: score_local never runs (airflow pools set {SCORING_POOL} 1 ...)")
    return Finding(OK, what, f"{slots} slot(s)")


def variables() -> list[Finding]:
    """``video_style_transfer_defaults``, parsed as the watcher parses it (``vst_azureml_cluster``
    is the cluster's line: it decides the cluster)."""
    import json

    from airflow.providers.common.compat.sdk import Variable
    from intake.settings import DEFAULTS_VARIABLE, check_defaults

    what = f"variable {DEFAULTS_VARIABLE}"
    value = None
    with contextlib.suppress(Exception):
        value = Variable.get(DEFAULTS_VARIABLE, default=None)
    if value is None:
        return [Finding(OK, what, "not set: the settings' own defaults apply")]
    try:
        check_defaults(json.loads(value))
    except Exception as exc:  # noqa: BLE001
        return [Finding(FAIL, what, one_line(exc))]
    return [Finding(OK, what, "set and valid")]


# ---------------------------------------------------------------------- Azure ML


def azure_ml(system) -> list[Finding]:
    what = "connection azureml_default"
    if not connection_exists("azureml_default"):
        return [Finding(FAIL, what, f"not set: add it (table in {DOCS}) or run without --azureml")]
    from aml_backend.hook import AzureMLHook
    from azure.core.exceptions import ResourceNotFoundError

    hook = AzureMLHook("azureml_default")
    try:
        ws = hook.workspace()
        workspace = hook.client.workspaces.get(ws["workspace_name"])
    except Exception as exc:  # noqa: BLE001
        return [Finding(FAIL, what, f"workspace not reachable: {one_line(exc)} (the identity needs AzureML Data "
                                    "Scientist on the workspace)")]
    found = [Finding(OK, what, f"workspace {workspace.name} in {workspace.location} answers")]
    try:
        config = hook.cluster_config()
    except Exception as exc:  # noqa: BLE001 -- a bad setting, in the Variable or the connection's extra
        found.append(Finding(FAIL, "cluster", f"configuration: {one_line(exc)} (Variable vst_azureml_cluster, "
                                              "else azureml_default's extra 'cluster')"))
        config = None
    cluster = None
    try:
        cluster = hook.client.compute.get(config.name) if config else None
    except ResourceNotFoundError:
        found.append(Finding(FAIL, f"cluster {config.name}", "not in the workspace: deploy docker/azure/"
                                                             "azuredeploy.json (it makes the cluster with its identity)"))
    except Exception as exc:  # noqa: BLE001
        found.append(Finding(FAIL, "cluster", one_line(exc)))
    if config and cluster:
        identity = getattr(getattr(cluster, "identity", None), "type", None) or "no identity"
        found.append(Finding(OK, f"cluster {cluster.name}", f"{cluster.size} {cluster.tier}, {cluster.min_instances}"
                                                            f"..{cluster.max_instances} nodes, {identity}"))
    try:
        store = hook.client.datastores.get("workspaceartifactstore")
        found.append(Finding(OK, "datastore workspaceartifactstore", f"{store.account_name}/{store.container_name} "
                                                                      "(the jobs' logs)"))
    except Exception as exc:  # noqa: BLE001
        found.append(Finding(FAIL, "datastore workspaceartifactstore", one_line(exc)))
    found.append(run_datastore(hook, system))
    return found


def run_datastore(hook, system) -> Finding:
    """What each run does before its job: sign a container SAS with ``wasb_system`` and register it
    as a datastore; here on the ``logs`` container, read and list only, removed at once."""
    from datetime import UTC, datetime, timedelta

    from aml_backend.sas import INPUT
    from azure.storage.blob import generate_container_sas
    from storage.blobs import LOGS

    what = "run datastores"
    if system is None:
        return Finding(SKIP, what, "wasb_system is not reachable (above): no token to register")
    client = system.client
    now = datetime.now(UTC)
    key = getattr(client.credential, "account_key", None)
    try:
        delegation = None if key else client.get_user_delegation_key(now - timedelta(minutes=5),
                                                                     now + timedelta(minutes=15))
    except Exception as exc:  # noqa: BLE001
        return Finding(FAIL, what, f"wasb_system cannot sign a run's tokens (neither an account key nor a user "
                                   f"delegation key: a SAS-only connection cannot): {one_line(exc)}")
    token = generate_container_sas(client.account_name, LOGS, account_key=key, user_delegation_key=delegation,
                                   permission=INPUT, expiry=now + timedelta(minutes=15))
    name = f"vst_check_{uuid.uuid4().hex[:12]}"
    try:
        hook.register_sas_datastore(name, client.account_name, LOGS, token)
    except Exception as exc:  # noqa: BLE001
        return Finding(FAIL, what, f"cannot register a datastore: {one_line(exc)} (AzureML Data Scientist on the "
                                   "workspace)")
    try:
        hook.delete_datastore(name)
    except Exception as exc:  # noqa: BLE001
        return Finding(FAIL, what, f"registered {name} but cannot remove it: {one_line(exc)}")
    return Finding(OK, what, "a run's token signed, registered and removed")


# ---------------------------------------------------------------------- notifications


def webhook() -> Finding:
    from airflow.providers.common.compat.sdk import BaseHook
    from pipeline.notifications import WEBHOOK_CONN

    what = f"connection {WEBHOOK_CONN}"
    if not connection_exists(WEBHOOK_CONN):
        return Finding(SKIP, what, "not set: no webhook is sent")
    conn = BaseHook.get_connection(WEBHOOK_CONN)
    if not conn.password:
        return Finding(FAIL, what, "no password: it is the signing key, and nothing is sent without one")
    url = conn.host if "://" in (conn.host or "") else f"{conn.schema or 'http'}://{conn.host}:{conn.port or 80}"
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=10):
            pass
    except OSError as exc:
        return Finding(FAIL, what, f"{parts.hostname}:{port} does not answer: {one_line(exc)}")
    return Finding(OK, what, f"{parts.hostname}:{port} answers, signing key set")


def mail() -> list[Finding]:
    from pipeline.notifications import SMTP_CONN, mail_sender

    what = f"connection {SMTP_CONN}"
    if not connection_exists(SMTP_CONN):
        return [Finding(SKIP, what, "not set: runs with notify_email send no e-mail")]
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    try:
        with SmtpHook(smtp_conn_id=SMTP_CONN) as hook:
            server = f"{hook.host}:{hook.port}"
    except Exception as exc:  # noqa: BLE001
        return [Finding(FAIL, what, f"the mail server refused the connection or its sign-in: {one_line(exc)}")]
    sender = mail_sender()
    found = [Finding(OK, what, f"{server} accepted the connection's sign-in")]
    found.append(Finding(OK, "e-mail sender", sender) if sender else
                 Finding(FAIL, "e-mail sender", f"none: set from_email in {SMTP_CONN}'s extra or [smtp] smtp_mail_from"))
    return found


def report(findings: list[Finding]) -> tuple[str, int]:
    """The printed text and the exit status (1 where anything failed)."""
    failed = sum(f.status == FAIL for f in findings)
    summary = f"{failed} check(s) failed" if failed else "deployment ready"
    return "\n".join([*(f.line() for f in findings), summary]), int(bool(failed))


__all__ = ["Finding", "check", "in_a_task", "report"]
