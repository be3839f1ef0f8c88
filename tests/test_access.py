"""Who can touch what: the scoring job's SAS tokens, checked by storage itself (Azurite)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import ContainerClient

from devstack import DATA_ACCOUNT, REPO, SYSTEM_ACCOUNT, Stack, free_port

sys.path.insert(0, str(REPO / "plugins"))
from aml_backend import sas  # noqa: E402
from storage.blobs import run_containers  # noqa: E402

pytestmark = pytest.mark.skipif(not (REPO / "node_modules" / ".bin" / "azurite-blob").exists(),
                                reason="Azurite is not installed (make setup runs npm ci)")


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("access"), blob_port=free_port())
    stack.start_azurite()
    stack.create_containers()
    system = stack.blob_client(SYSTEM_ACCOUNT)
    runs = {}
    for run_id in ("run-a", "run-b"):
        work_in, work_out = run_containers(run_id)
        for container in (work_in, work_out):
            system.create_container(container)
        system.get_blob_client(work_in, "segments/seg-00000.h264").upload_blob(b"segment")
        system.get_blob_client(work_out, "styled/seg-00000.h264").upload_blob(b"styled")
        runs[run_id] = (work_in, work_out)
    yield stack, system, runs
    stack.stop()


def _client(system, container: str, permission, expiry=None) -> ContainerClient:
    signer = sas.Signer.from_service_client(system, expiry or sas.expiry_for())
    token = sas.container_sas(signer, container, permission, expiry or sas.expiry_for(), protocol="https,http")
    return ContainerClient(system.url, container, credential=token)


def _refused(action) -> bool:
    try:
        action()
    except HttpResponseError as exc:
        return exc.status_code in (403, 404)
    return False


def test_input_token_reads_its_run_and_nothing_else(storage):
    stack, system, runs = storage
    work_in, work_out = runs["run-a"]
    inputs = _client(system, work_in, sas.INPUT)
    assert [b.name for b in inputs.list_blobs()] == ["segments/seg-00000.h264"]
    assert inputs.download_blob("segments/seg-00000.h264").readall() == b"segment"
    assert _refused(lambda: inputs.upload_blob("segments/evil.h264", b"x"))
    assert _refused(lambda: inputs.delete_blob("segments/seg-00000.h264"))
    for other in (work_out, runs["run-b"][0], "logs"):  # the token names one container
        stranger = ContainerClient(system.url, other, credential=inputs.credential)
        assert _refused(lambda: list(stranger.list_blobs()))
    data_account = ContainerClient(stack.blob_client(DATA_ACCOUNT).url, "videos-in", credential=inputs.credential)
    assert _refused(lambda: list(data_account.list_blobs()))


def test_output_tokens_cannot_reach_other_runs(storage):
    _, system, runs = storage
    resumable = _client(system, runs["run-a"][1], sas.OUTPUT_RESUMABLE)
    resumable.upload_blob("styled/seg-00001.h264", b"new")
    assert resumable.download_blob("styled/seg-00000.h264").readall() == b"styled"  # resume reads its own
    other_run = ContainerClient(system.url, runs["run-b"][1], credential=resumable.credential)
    assert _refused(lambda: other_run.download_blob("styled/seg-00000.h264").readall())
    assert _refused(lambda: other_run.upload_blob("styled/x.h264", b"x"))

    write_only = _client(system, runs["run-a"][1], sas.OUTPUT_WRITE_ONLY)
    write_only.upload_blob("styled/seg-00002.h264", b"new")
    assert _refused(lambda: write_only.download_blob("styled/seg-00000.h264").readall())
    assert _refused(lambda: list(write_only.list_blobs()))


def test_expired_token_is_refused(storage):
    _, system, runs = storage
    signer = sas.Signer.from_service_client(system, datetime.now(UTC))
    token = sas.generate_container_sas(signer.account_name, runs["run-a"][0], account_key=signer.account_key,
                                       permission=sas.INPUT, start=datetime.now(UTC) - timedelta(hours=2),
                                       expiry=datetime.now(UTC) - timedelta(minutes=1), protocol="https,http")
    expired = ContainerClient(system.url, runs["run-a"][0], credential=token)
    assert _refused(lambda: list(expired.list_blobs()))
    live = _client(system, runs["run-a"][0], sas.INPUT)
    assert len(list(live.list_blobs())) == 1  # the same request with a live token works
