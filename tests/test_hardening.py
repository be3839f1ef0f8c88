"""What an attacker or a careless operator could do to the pipeline, and what it does back:
untrusted uploads, blob names chosen by a token holder, secrets, two runs of one input,
leftovers. Against real Azurite and the real scoring commands; no Airflow run."""

from __future__ import annotations

import json
import os
import sys
import tempfile

import pytest

from devstack import REPO, SYSTEM_ACCOUNT, Stack, free_port

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="airflow-home-"))
sys.path.insert(0, str(REPO / "plugins"))
import storage  # noqa: E402
import style_pipeline  # noqa: E402
from storage import DATA_CONN, INPUTS, OUTPUTS, QUARANTINE, STYLES, SYSTEM_CONN, BlobStore  # noqa: E402

PARAMS = {"style": "19", "model_blob": None, "max_side": None, "segment_frames": 48, "precision": "auto",
          "ranks": 1, "backend": "local", "max_duration": 3600}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Azurite with both accounts, their connections and a scratch folder in this process."""
    if not (REPO / "node_modules" / ".bin" / "azurite-blob").exists():
        pytest.skip("Azurite is not installed (make setup runs npm ci)")
    stack = Stack(tmp_path_factory.mktemp("stack"), blob_port=free_port(), api_port=free_port())
    azurite = stack.start_azurite()
    stack.create_containers()
    env = stack.env()
    patch = pytest.MonkeyPatch()
    for name in ("AIRFLOW_CONN_WASB_DATA", "AIRFLOW_CONN_WASB_SYSTEM", "VST_SCRATCH"):
        patch.setenv(name, env[name])
    yield stack
    patch.undo()
    azurite.kill()  # nothing to keep: Stack.stop() would wait 10 s for it to ignore SIGTERM
    azurite.wait()
    stack.stop()


def _upload(stack, container: str, name: str, data: bytes, account=None) -> str:
    client = stack.blob_client(*([account] if account else []))
    return client.get_blob_client(container, name).upload_blob(data, overwrite=True)["etag"].strip('"')


# --------------------------------------------------------------------------- untrusted input


def test_a_playlist_upload_is_quarantined_in_one_line_input_kept(stack, clip_factory):
    clip = clip_factory(seconds=1, fps="25")
    playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\nfile:{clip}\n#EXT-X-ENDLIST\n".encode()
    _upload(stack, INPUTS, "evil/list.m3u8", playlist)
    with pytest.raises(style_pipeline.BadInput) as caught:
        style_pipeline.probe(PARAMS | {"input_blob": "evil/list.m3u8"}, "manual__playlist")
    assert str(caught.value) == ("evil/list.m3u8: list.m3u8 is a playlist (HLS .m3u8), not a video: upload the "
                                 "video file itself (copied to quarantine/evil/list.m3u8)")
    data = BlobStore(DATA_CONN)
    assert data.read_text(QUARANTINE, "evil/list.m3u8") == playlist.decode()
    assert "is a playlist" in json.loads(data.read_text(QUARANTINE, "evil/list.m3u8.reason.json"))["reason"]
    assert data.read_text(INPUTS, "evil/list.m3u8") == playlist.decode()


def test_an_oversized_model_is_refused_before_download(stack, monkeypatch, tmp_path):
    monkeypatch.setattr(style_pipeline, "MAX_MODEL_BYTES", 1024**2)
    _upload(stack, STYLES, "big.pth", b"\0" * (1024**2 + 1))
    params = PARAMS | {"model_blob": "big.pth", "input_blob": "not-there.mp4"}
    line = "model_blob styles/big.pth is 1 MiB; the limit is 1 MiB (a TransformerNet .pth is a few MB)"
    with pytest.raises(style_pipeline.BadInput) as caught:
        style_pipeline.probe(params, "manual__big-model")  # refused before the input is even looked at
    assert str(caught.value) == line
    with pytest.raises(style_pipeline.BadInput) as caught:
        style_pipeline.fetch_model(params, tmp_path)
    assert str(caught.value) == line and list(tmp_path.iterdir()) == []


def test_sync_down_refuses_blob_names_that_leave_the_folder(stack, tmp_path):
    work = "run-hardening-out"
    system = BlobStore(SYSTEM_CONN)
    system.ensure_container(work)
    outside = tmp_path / "outside" / "planted.txt"
    _upload(stack, work, "styled/0001.h264", b"fine", account=SYSTEM_ACCOUNT)
    _upload(stack, work, "styled/" + str(outside), b"planted", account=SYSTEM_ACCOUNT)  # styled//tmp/...
    with pytest.raises(storage.InvalidBlobName, match=r"^run-hardening-out/styled//.* cannot be fetched: "):
        system.sync_down(work, "styled/", tmp_path / "styled")
    assert not outside.exists() and not (tmp_path / "styled").exists()


def test_probe_finds_the_published_output_before_downloading_the_input(stack, clip_factory):
    name = "again/clip.mp4"
    etag = _upload(stack, INPUTS, name, clip_factory(seconds=1, fps="25").read_bytes())
    params = PARAMS | {"input_blob": name}
    output = style_pipeline.default_output_name(name, "19", None)
    _upload(stack, OUTPUTS, output, b"an earlier result")
    stack.blob_client().get_blob_client(OUTPUTS, output).set_blob_metadata(
        {"source_blob": name, "source_etag": etag, "settings": style_pipeline.settings_digest(params),
         "run_id": "earlier-run"})
    run_id = "manual__again"
    with pytest.raises(style_pipeline.AlreadyDone, match="published by run earlier-run: nothing to do"):
        style_pipeline.probe(params, run_id)
    assert list(style_pipeline.scratch(style_pipeline.run_key(run_id)).iterdir()) == []
