"""`python -m deployment check` against a whole deployment here: both storage accounts in
Azurite, the Azure ML workspace in tests/aml_emulator (the real MLClient), a migrated metadata
database with the pool, a webhook receiver and a mail server (aiosmtpd) on this machine. All
green first; then each piece taken away in turn, and the check names that piece alone."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from devstack import free_port

from .helpers import REPO
from .helpers import azurite as azurite_alone

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="airflow-home-"))
sys.path.insert(0, str(REPO / "plugins"))

from deployment import check as deployment_check  # noqa: E402
from storage.blobs import DATA_CONTAINERS, SYSTEM_CONTAINERS  # noqa: E402

from .aml_emulator import WORKSPACE, AzureMLEmulator  # noqa: E402

KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
DATA, SYSTEM = "dataacct", "sysacct"
CLUSTER = {"name": "vst-gpu", "vm_size": "Standard_NC4as_T4_v3", "max_nodes": 2}
AZUREML = {"conn_type": "azureml", "login": "app-id", "password": "app-secret",
           "extra": {"subscriptionId": WORKSPACE["subscription_id"], "resource_group_name": WORKSPACE["resource_group"],
                     "workspace_name": WORKSPACE["workspace_name"], "tenantId": "tenant-vst", "cluster": CLUSTER}}


@pytest.fixture(scope="module")
def azurite(tmp_path_factory):
    assert (REPO / "node_modules" / ".bin" / "azurite-blob").exists(), "Azurite is not installed (npm install)"
    with azurite_alone(tmp_path_factory.mktemp("azurite"), {DATA: KEY, SYSTEM: KEY}) as port:
        def url(account):
            return f"http://127.0.0.1:{port}/{account}"

        def connection_string(account):
            return f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={KEY};BlobEndpoint={url(account)};"

        yield SimpleNamespace(url=url, connection_string=connection_string)


@pytest.fixture(scope="module")
def metadata(tmp_path_factory):
    """A migrated metadata database with the pool ``scoring``, as `deployment init` leaves it."""
    home = tmp_path_factory.mktemp("airflow")
    env = {"AIRFLOW_HOME": str(home), "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    airflow = shutil.which("airflow", path=os.path.dirname(sys.executable))
    for args in (["db", "migrate"], ["pools", "set", "scoring", "1", "score_local runs at once"]):
        done = subprocess.run([airflow, *args], env=dict(os.environ, **env), capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    return SimpleNamespace(env=env, airflow=airflow)


@pytest.fixture(scope="module")
def receivers():
    """A webhook receiver and a mail server that accepts mail without sign-in."""
    from aiosmtpd.controller import Controller

    posted, mailed = [], []

    class Quiet(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            posted.append((dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=web.serve_forever, daemon=True).start()

    class Sink:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802
            mailed.append(envelope)
            return "250 OK"

    smtp = Controller(Sink(), hostname="127.0.0.1", port=free_port())
    smtp.start()
    yield SimpleNamespace(web_port=web.server_address[1], smtp_port=smtp.port, posted=posted, mailed=mailed)
    smtp.stop()
    web.shutdown()


@pytest.fixture
def deployment(tmp_path, monkeypatch, azurite, metadata, receivers):
    """Every piece in place: connections in the environment (as compose passes them), the
    containers, the workspace with its cluster."""
    from azure.storage.blob import BlobServiceClient

    emulator = AzureMLEmulator(tmp_path, {SYSTEM: (azurite.url(SYSTEM), KEY)}, SYSTEM, step=0.02)
    emulator.workspace.client_secrets["app-id"] = "app-secret"
    env = {**emulator.environment(), **metadata.env,
           "AIRFLOW_CONN_WASB_DATA": json.dumps({"conn_type": "wasb", "extra": {
               "connection_string": azurite.connection_string(DATA)}}),
           "AIRFLOW_CONN_WASB_SYSTEM": json.dumps({"conn_type": "wasb", "extra": {
               "connection_string": azurite.connection_string(SYSTEM)}}),
           "AIRFLOW_CONN_AZUREML_DEFAULT": json.dumps(AZUREML),
           "AIRFLOW_CONN_VIDEO_WEBHOOK": json.dumps({"conn_type": "http", "host": f"http://127.0.0.1:"
                                                     f"{receivers.web_port}/hook", "password": "signing-key"}),
           "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps({"conn_type": "smtp", "host": "127.0.0.1",
                                                    "port": receivers.smtp_port, "extra": {
                                                        "disable_tls": True, "disable_ssl": True,
                                                        "from_email": "videos@example.com"}}),
           "AIRFLOW_VAR_VIDEO_STYLE_TRANSFER_DEFAULTS": json.dumps({"ranks": 2})}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for account, names in ((DATA, DATA_CONTAINERS), (SYSTEM, SYSTEM_CONTAINERS)):
        service = BlobServiceClient.from_connection_string(azurite.connection_string(account))
        for name in names:
            if not service.get_container_client(name).exists():
                service.create_container(name)
    from aml_backend.cluster import ClusterConfig
    from aml_backend.hook import AzureMLHook

    AzureMLHook("azureml_default").ensure_cluster(ClusterConfig.from_settings(CLUSTER))
    yield SimpleNamespace(emulator=emulator, env=env, azurite=azurite, metadata=metadata, receivers=receivers,
                          blobs={a: BlobServiceClient.from_connection_string(azurite.connection_string(a))
                                 for a in (DATA, SYSTEM)})
    emulator.close()


def _failed(**kwargs) -> dict[str, str]:
    findings = deployment_check.check(**{"allow_account_keys": True, **kwargs})
    return {f.what: f.detail for f in findings if f.status == deployment_check.FAIL}


def test_a_whole_deployment_is_all_green_and_the_check_leaves_nothing_behind(deployment):
    done = subprocess.run([sys.executable, "-m", "deployment", "check", "--allow-account-keys"], capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, PYTHONPATH=f"{REPO}:{REPO / 'plugins'}"),
                          stdin=subprocess.DEVNULL)
    lines = done.stdout.strip().splitlines()
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert lines[-1] == "deployment ready" and all(line.startswith("ok  ") for line in lines[:-1]), done.stdout
    named = {line.split(":", 1)[0].split(None, 1)[1] for line in lines[:-1]}
    assert {f"container {DATA}/{c}" for c in DATA_CONTAINERS} | {f"container {SYSTEM}/{c}" for c in SYSTEM_CONTAINERS} \
        | {"connection wasb_data", "connection wasb_system", "credential wasb_data", "credential wasb_system",
           f"run containers {SYSTEM}", "pool scoring", "variable video_style_transfer_defaults",
           "connection azureml_default", "cluster vst-gpu", "datastore workspaceartifactstore", "run datastores",
           "connection video_webhook", "connection smtp_default", "e-mail sender"} == named
    for account, service in deployment.blobs.items():  # the scratch writes are gone
        assert not [c.name for c in service.list_containers() if c.name.startswith("run-check-")]
        for container in service.list_containers():
            assert not list(service.get_container_client(container.name).list_blobs(name_starts_with=".deployment"))
    assert not [name for name in deployment.emulator.workspace.datastores if name.startswith("vst_check_")]
    assert any(name.startswith("vst_check_") for name in deployment.emulator.workspace.deleted_datastores)


def test_account_keys_are_named_unless_allowed_and_a_sas_or_identity_is_green(deployment, monkeypatch):
    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    token = generate_account_sas(DATA, KEY, ResourceTypes(service=True, container=True, object=True),
                                 AccountSasPermissions(read=True, write=True, delete=True, list=True, create=True),
                                 expiry=datetime.now(UTC) + timedelta(hours=1))
    monkeypatch.setenv("AIRFLOW_CONN_WASB_DATA", json.dumps({"conn_type": "wasb", "host": deployment.azurite.url(DATA),
                                                             "extra": {"sas_token": token}}))
    findings = {f.what: f for f in deployment_check.check(allow_account_keys=False)}
    assert findings["credential wasb_data"].status == "ok" and findings["credential wasb_data"].detail == "SAS"
    assert [w for w, f in findings.items() if f.status == "FAIL"] == ["credential wasb_system"]
    assert "holds the account key: give it a managed identity" in findings["credential wasb_system"].detail


def _drop_container(deployment, account, name):
    deployment.blobs[account].delete_container(name)


REMOVED = {
    "a data container": (lambda d, m: _drop_container(d, DATA, "quarantine"), {f"container {DATA}/quarantine"}),
    "a system container": (lambda d, m: _drop_container(d, SYSTEM, "intake-ledger"),
                           {f"container {SYSTEM}/intake-ledger"}),
    "the data connection": (lambda d, m: m.delenv("AIRFLOW_CONN_WASB_DATA"), {"connection wasb_data"}),
    "the system connection": (lambda d, m: m.delenv("AIRFLOW_CONN_WASB_SYSTEM"), {"connection wasb_system"}),
    "the data account's write permission": (
        lambda d, m: m.setenv("AIRFLOW_CONN_WASB_DATA", json.dumps({
            "conn_type": "wasb", "host": d.azurite.url(DATA), "extra": {"sas_token": _read_only_sas(DATA)}})),
        {f"container {DATA}/{c}" for c in ("accepted", "videos-out", "quarantine")}),
    "a valid defaults variable": (lambda d, m: m.setenv("AIRFLOW_VAR_VIDEO_STYLE_TRANSFER_DEFAULTS", '{"colour": 1}'),
                                  {"variable video_style_transfer_defaults"}),
    "the Azure ML connection": (lambda d, m: m.delenv("AIRFLOW_CONN_AZUREML_DEFAULT"), {"connection azureml_default"}),
    "the principal's secret": (lambda d, m: d.emulator.workspace.client_secrets.update({"app-id": "rotated"}),
                               {"connection azureml_default"}),
    "the cluster": (lambda d, m: d.emulator.workspace.computes.pop("vst-gpu"), {"cluster vst-gpu"}),
    "a valid cluster variable": (lambda d, m: m.setenv("AIRFLOW_VAR_VST_AZUREML_CLUSTER", '{"tier": "spot"}'),
                                 {"cluster"}),
    "the role to register datastores": (
        lambda d, m: d.emulator.workspace.fail("PUT .*/datastores/vst_check_", 403, "AuthorizationFailed"),
        {"run datastores"}),
    "the webhook's signing key": (lambda d, m: m.setenv("AIRFLOW_CONN_VIDEO_WEBHOOK", json.dumps({
        "conn_type": "http", "host": f"http://127.0.0.1:{d.receivers.web_port}/hook"})), {"connection video_webhook"}),
    "the webhook's receiver": (lambda d, m: m.setenv("AIRFLOW_CONN_VIDEO_WEBHOOK", json.dumps({
        "conn_type": "http", "host": f"http://127.0.0.1:{free_port()}/hook", "password": "k"})),
        {"connection video_webhook"}),
    "the mail server": (lambda d, m: m.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps({
        "conn_type": "smtp", "host": "127.0.0.1", "port": free_port(), "extra": {
            "disable_tls": True, "disable_ssl": True, "from_email": "videos@example.com"}})),
        {"connection smtp_default"}),
}


def _read_only_sas(account: str) -> str:
    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    return generate_account_sas(account, KEY, ResourceTypes(service=True, container=True, object=True),
                                AccountSasPermissions(read=True, list=True), expiry=datetime.now(UTC) + timedelta(hours=1))


@pytest.mark.parametrize("removed", list(REMOVED))
def test_each_piece_taken_away_is_named_alone(deployment, monkeypatch, removed):
    take_away, named = REMOVED[removed]
    take_away(deployment, monkeypatch)
    failed = _failed(azureml=True)
    assert set(failed) == named, failed
    for detail in failed.values():
        assert "\n" not in detail and len(detail) < 500


def test_the_pool_taken_away_is_named_alone(deployment):
    from deployment import airflow

    airflow("pools", "delete", "scoring")
    try:
        failed = _failed()
        assert failed == {"pool scoring": "missing: `python -m deployment init` makes it"}
    finally:
        airflow("pools", "set", "scoring", "1", "score_local runs at once")


def test_optional_pieces_not_configured_are_skipped_not_failed(deployment, monkeypatch):
    for name in ("AIRFLOW_CONN_AZUREML_DEFAULT", "AIRFLOW_CONN_VIDEO_WEBHOOK", "AIRFLOW_CONN_SMTP_DEFAULT"):
        monkeypatch.delenv(name)
    findings = deployment_check.check(allow_account_keys=True)
    skipped = {f.what for f in findings if f.status == deployment_check.SKIP}
    assert skipped == {"connection azureml_default", "connection video_webhook", "connection smtp_default"}
    text, status = deployment_check.report(findings)
    assert status == 0 and text.endswith("deployment ready")
    text, status = deployment_check.report(deployment_check.check(azureml=True, allow_account_keys=True))
    assert status == 1 and text.endswith("1 check(s) failed")


def test_an_upload_the_watcher_refuses_reaches_its_uploader(deployment):
    """No run exists for it, so no failure callback: the watcher itself sends the webhook and
    the e-mail to the upload's notify_email, with the reason."""
    from intake.inbox import Upload, refuse
    from pipeline.notifications import verify_signature
    from storage.blobs import BlobStore

    inbox = deployment.blobs[DATA].get_container_client("videos-in")
    done = inbox.get_blob_client("trip/refused.mp4").upload_blob(b"not a video", overwrite=True,
                             metadata={"notify_email": "uploader@example.com", "style": "99"})
    deployment.receivers.posted.clear()
    deployment.receivers.mailed.clear()
    reason = "metadata style: '99' is not a built-in style (0-25)"
    upload = Upload("trip/refused.mp4", str(done["etag"]).strip('"'), 11, {"notify_email": "uploader@example.com"})
    assert refuse(BlobStore("wasb_data"), upload, reason) == "quarantined"
    headers, body = deployment.receivers.posted[-1]
    assert verify_signature("signing-key", body, headers["X-Signature"])
    assert json.loads(body) == {"status": "quarantined", "input_blob": "trip/refused.mp4", "error": reason,
                                "quarantine_blob": "quarantine/trip/refused.mp4"}
    mail = deployment.receivers.mailed[-1]
    assert mail.rcpt_tos == ["uploader@example.com"] and mail.mail_from == "videos@example.com"
    import email

    message = email.message_from_bytes(mail.content)
    text = "".join(part.get_payload(decode=True).decode() for part in message.walk() if not part.is_multipart())
    assert "trip/refused.mp4" in message["Subject"] and "not a built-in style" in text
    quarantine = deployment.blobs[DATA].get_container_client("quarantine")
    assert quarantine.download_blob("trip/refused.mp4").readall() == b"not a video"  # the bytes as uploaded
