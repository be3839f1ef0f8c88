"""The pipeline's handling of a style picture (``style_image``, ``style_strength``): the
arguments it builds, and the styles container against real Azurite (no Airflow run)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from io import BytesIO

import pytest
from PIL import Image
from skimage import data

from devstack import REPO, Stack, free_port

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="airflow-home-"))
sys.path.insert(0, str(REPO / "plugins"))
from pipeline import tasks  # noqa: E402
from storage.blobs import DATA_CONN, STYLES, BlobStore  # noqa: E402

BASE = {"style": "19", "model_blob": None, "max_side": None, "segment_frames": 48, "precision": "auto"}


def test_score_args_output_name_and_settings(tmp_path):
    params = BASE | {"style_image": "art/wave.jpg", "style_strength": 0.5}
    assert tasks.model_args(params, tmp_path) == [
        "--style-image", str(tmp_path / "style-image"), "--precision", "auto", "--style-strength", "0.5"]
    assert tasks.model_args(BASE | {"style_strength": 1.0}, tmp_path) == [
        "--style", "19", "--precision", "auto"]
    assert tasks.default_output_name("a/clip.mp4", "19", None, "art/wave.jpg", 0.5) \
        == "a/clip.image-wave-strength-0.5.mp4"
    assert tasks.default_output_name("a/clip.mp4", "19", None, None, 1.0) == "a/clip.style-19.mp4"

    # what decides the pixels: the picture's version (etag) and the strength count
    digest = tasks.settings_digest
    assert digest(params, '"0x1"') != digest(params, '"0x2"')
    assert digest(params, '"0x1"') != digest(params | {"style_strength": 1}, '"0x1"')
    # ... and outputs published before these params existed keep their digest
    before = hashlib.sha256(json.dumps(BASE, sort_keys=True).encode()).hexdigest()[:16]
    assert digest(BASE) == digest(BASE | {"style_image": None, "style_strength": 1.0}) == before
    assert digest(BASE) == digest(BASE | {"hdr": "sdr", "delivery": "web"}) != digest(BASE | {"hdr": "keep"})

    # a user's model counts by version too; without a known version, as before
    model = BASE | {"model_blob": "mine.pth"}
    assert digest(model, None, '"0x1"') != digest(model, None, '"0x2"')
    assert digest(model, None, '"0x1"') != digest(model)
    assert digest(model) == hashlib.sha256(json.dumps(model, sort_keys=True).encode()).hexdigest()[:16]
    assert digest(BASE, None, '"0x1"') == before  # an etag without a model_blob changes nothing


def test_a_model_and_a_picture_together_are_refused_in_one_line_before_storage():
    from intake.settings import InvalidSettings, check_run

    with pytest.raises(InvalidSettings) as caught:
        check_run(BASE | {"style_image": "wave.jpg", "model_blob": "m.pth"})  # no storage is reachable here
    assert str(caught.value).startswith("the run's settings: style_image and model_blob each replace the style")
    assert "\n" not in str(caught.value)


def test_a_bad_style_image_name_fails_in_one_line_before_storage():
    with pytest.raises(tasks.BadInput) as caught:
        tasks.check_style_image(None, BASE | {"style_image": "../wave.jpg"})  # refused before any storage call
    assert str(caught.value).startswith("style_image: ") and "\n" not in str(caught.value)


def test_a_picture_that_does_not_decode_is_refused_with_its_blob_name(tmp_path):
    (tmp_path / "style-image").write_bytes(b"")
    with pytest.raises(tasks.BadInput, match=r"^style_image styles/art/empty.jpg is empty \(0 bytes\)"):
        tasks.validate_style_image(tmp_path / "style-image", "art/empty.jpg")


@pytest.fixture(scope="module")
def styles(tmp_path_factory):
    """Azurite with the data account's containers; yields the styles container's client."""
    if not (REPO / "node_modules" / ".bin" / "azurite-blob").exists():
        pytest.skip("Azurite is not installed (make setup runs npm ci)")
    stack = Stack(tmp_path_factory.mktemp("stack"), blob_port=free_port(), api_port=free_port())
    azurite = stack.start_azurite()
    stack.create_containers()
    os.environ["AIRFLOW_CONN_WASB_DATA"] = stack.env()["AIRFLOW_CONN_WASB_DATA"]
    yield stack.blob_client().get_container_client(STYLES)
    del os.environ["AIRFLOW_CONN_WASB_DATA"]
    azurite.kill()  # nothing to keep: Stack.stop() would wait 10 s for it to ignore SIGTERM
    azurite.wait()
    stack.stop()


def test_the_picture_comes_from_the_styles_container_as_probed(styles, tmp_path):
    picture = BytesIO()
    Image.fromarray(data.coffee()).save(picture, format="JPEG")
    styles.upload_blob("art/wave.jpg", picture.getvalue(), overwrite=True)
    params = {"style_image": "art/wave.jpg"}
    store = BlobStore(DATA_CONN)
    etag = tasks.check_style_image(store, params)
    path = tasks.fetch_style_image(params, tmp_path, etag)
    assert path.read_bytes() == picture.getvalue()
    tasks.validate_style_image(path, "art/wave.jpg")

    with pytest.raises(tasks.BadInput, match="^style_image styles/art/nope.jpg does not exist$"):
        tasks.check_style_image(store, {"style_image": "art/nope.jpg"})


def test_the_model_is_the_version_probe_saw(styles, tmp_path):
    """A .pth re-uploaded under the same name is a new version: probe's etag changes (so the
    settings digest does and the output is made again), and a run that probed the old one
    never scores with the new one."""
    params = {"model_blob": "mine/net.pth"}
    store = BlobStore(DATA_CONN)
    assert tasks.model_version(store, params) is None  # not there yet: split says so
    styles.upload_blob("mine/net.pth", b"first version", overwrite=True)
    first = tasks.model_version(store, params)
    assert tasks.fetch_model(params, tmp_path / "a", first).read_bytes() == b"first version"

    styles.upload_blob("mine/net.pth", b"second version", overwrite=True)
    second = tasks.model_version(store, params)
    assert second and second != first
    with pytest.raises(tasks.BadInput,
                       match=r"^model_blob styles/mine/net.pth was replaced during the run; trigger again"):
        tasks.fetch_model(params, tmp_path / "b", first)
    assert not (tmp_path / "b" / "model.pth").exists()
    assert tasks.fetch_model(params, tmp_path / "c", second).read_bytes() == b"second version"
    assert tasks.model_version(store, {"model_blob": "../net.pth"}) is None
