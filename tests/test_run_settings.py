"""Settings per upload: blob metadata and the defaults Variable, checked by the trigger form's schema."""

from __future__ import annotations

import sys

import pytest

from devstack import REPO

sys.path.insert(0, str(REPO / "plugins"))
import intake.settings  # noqa: E402
from intake.settings import InvalidSettings, check_defaults, resolve  # noqa: E402


def test_metadata_then_variable_then_the_form_default():
    settings, sources = resolve({"style": "7", "temporal": "0.7", "max_side": "none", "azureml_nodes": "3"},
                                check_defaults({"backend": "azureml", "temporal": 0.3}))
    assert (settings["style"], settings["temporal"], settings["max_side"], settings["azureml_nodes"]) == \
        ("7", 0.7, None, 3)
    assert settings["backend"] == "azureml" and settings["ranks"] == intake.settings.PARAMS["ranks"].value == 2
    assert (sources["style"], sources["temporal"], sources["backend"], sources["ranks"]) == \
        ("metadata", "metadata", "variable", "default")
    assert set(settings) == set(sources) == set(intake.settings.SETTINGS)
    assert "input_blob" not in settings and "input_version" not in settings


@pytest.mark.parametrize("metadata, words", [
    ({"colour": "red"}, "metadata key 'colour' is not a setting"),
    ({"input_blob": "other.mp4"}, "metadata key 'input_blob' is not a setting"),
    ({"temporal": "lots"}, 'metadata: temporal="lots" is refused'),
    ({"temporal": "2"}, 'metadata: temporal=2.0 is refused'),
    ({"backend": "gpu"}, 'metadata: backend="gpu" is refused'),
    ({"ranks": "1.5"}, 'metadata: ranks="1.5" is refused'),
    ({"style": "seven"}, 'metadata: style="seven" is refused'),
])
def test_bad_metadata_is_one_line_naming_the_key(metadata, words):
    with pytest.raises(InvalidSettings) as refused:
        resolve(metadata, {})
    assert str(refused.value).startswith(words) and "\n" not in str(refused.value)


def test_the_defaults_variable_is_checked_by_the_same_schema():
    with pytest.raises(InvalidSettings, match="variable video_style_transfer_defaults: ranks=0 is refused"):
        check_defaults({"ranks": 0})
    with pytest.raises(InvalidSettings, match="'colour' is not a setting"):
        check_defaults({"colour": "red"})
    with pytest.raises(InvalidSettings, match="must be a JSON object"):
        check_defaults(["backend", "azureml"])
    assert check_defaults(None) == {}


def test_the_dag_uses_the_same_params():
    source = (REPO / "dags" / "video_style_transfer.py").read_text()
    assert "from intake.settings import PARAMS" in source and "params=PARAMS" in source
