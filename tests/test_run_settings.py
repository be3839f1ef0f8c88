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
    ({"style": "26"}, 'metadata: style="26" is refused'),  # the form's pattern: 0-25 only
    ({"style": "3:0"}, "metadata: style=\"3:0\" is refused: style spec '3:0' has no positive weight"),
    ({"style": "3:1.2.3"}, 'metadata: style="3:1.2.3" is refused'),
    ({"style_strength": "nan"}, "metadata: style_strength=NaN is refused"),
    ({"model_blob": "a/../b.pth"}, 'metadata: model_blob="a/../b.pth" is refused: blob name'),
    ({"output_name": "/abs.mp4"}, 'metadata: output_name="/abs.mp4" is refused: blob name'),
    ({"model_blob": "own.pth", "style_image": "wave.jpg"},
     "settings: style_image and model_blob each replace the style: give only one"),
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


def test_the_form_and_the_scoring_command_share_one_definition():
    """The Params take their bounds from scoring.options, which the scoring command and the
    network side use (torch-free); the form's style pattern accepts exactly the indices that
    style_weights does."""
    import re

    from scoring import options
    from scoring.media.errors import UserError
    from scoring.networks import models, stylizer, temporal

    params = intake.settings.PARAMS
    assert params["style"].schema["pattern"] == options.STYLE_PATTERN
    assert params["temporal"].schema["maximum"] == options.MAX_TEMPORAL
    assert params["precision"].schema["enum"] == list(options.PRECISIONS)
    assert models.NUM_STYLES == options.NUM_STYLES and models.parse_style("3:1,12:3")[12] == 0.75
    assert stylizer.check_strength is options.check_style_strength and temporal.check_strength is options.check_temporal
    for index in range(40):
        pattern_says = re.fullmatch(options.STYLE_PATTERN, str(index)) is not None
        try:
            rule_says = bool(options.style_weights(str(index)))
        except UserError:
            rule_says = False
        assert pattern_says == rule_says == (index < options.NUM_STYLES), index


def test_a_backfill_run_id_names_the_backfill_and_its_settings():
    """Airflow reuses a logical date's sweep run when a backfill reprocesses it: the run ids of
    the processing runs differ by how often it was cleared, and by the settings given."""
    from intake.inbox import reprocess_run_id

    first = reprocess_run_id("scheduled__2026-11-01T00:00:00+00:00#1", {"style": "7"}, "a.mp4", "0x1")
    assert first == reprocess_run_id("scheduled__2026-11-01T00:00:00+00:00#1", {"style": "7"}, "a.mp4", "0x1")
    assert first.startswith("reprocess__a.mp4__")
    others = {reprocess_run_id("scheduled__2026-11-01T00:00:00+00:00#2", {"style": "7"}, "a.mp4", "0x1"),
              reprocess_run_id("scheduled__2026-11-01T00:00:00+00:00#1", {"style": "3"}, "a.mp4", "0x1"),
              reprocess_run_id("scheduled__2026-11-01T00:00:00+00:00#1", {"style": "7"}, "a.mp4", "0x2")}
    assert first not in others and len(others) == 3


def test_the_ledger_hours_of_a_window():
    from datetime import UTC, datetime

    from intake.ledger import hours

    at = datetime(2026, 11, 1, 13, 30, tzinfo=UTC)
    assert hours(at, at.replace(minute=31)) == ["accepted/2026/11/01/13.jsonl"]
    assert hours(at, at.replace(hour=15, minute=0)) == ["accepted/2026/11/01/13.jsonl", "accepted/2026/11/01/14.jsonl"]
    assert hours(datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 1, 1, tzinfo=UTC)) == [
        "accepted/2026/11/01/00.jsonl"]


def test_run_starter_still_finds_the_task_sdk_internals_it_uses():
    """RunStarter (plugins/intake/inbox.py) starts runs through the Task SDK's own channel,
    for want of a public interface (docs/architecture.md#starting-runs). This fails, naming
    what moved, when an Airflow upgrade changes any piece of it."""
    import inspect

    from airflow.sdk.api.client import DagRunOperations
    from airflow.sdk.exceptions import ErrorType
    from airflow.sdk.execution_time import comms, supervisor, task_runner

    fields = comms.TriggerDagRun.model_fields
    assert {"dag_id", "run_id", "conf"} <= set(fields), f"TriggerDagRun's fields are now {sorted(fields)}"
    assert not [name for name, field in fields.items() if field.is_required() and name not in ("dag_id", "run_id")], \
        "TriggerDagRun wants more than dag_id and run_id now"
    assert comms.TriggerDagRun in comms.ToSupervisor.__args__[0].__args__, "the supervisor no longer takes TriggerDagRun"
    assert "TriggerDagRun" in inspect.getsource(supervisor.ActivitySubprocess._handle_request), \
        "the supervisor no longer handles TriggerDagRun"
    assert "SUPERVISOR_COMMS" in task_runner.__annotations__, "task_runner.SUPERVISOR_COMMS is gone"
    assert ErrorType.DAGRUN_ALREADY_EXISTS.value == "DAGRUN_ALREADY_EXISTS"
    assert "DAGRUN_ALREADY_EXISTS" in inspect.getsource(DagRunOperations.trigger), \
        "an existing run no longer answers DAGRUN_ALREADY_EXISTS"
    assert "get_dr_count" in dir(task_runner.RuntimeTaskInstance)


def test_a_backfill_of_a_day_sweeps_exactly_its_hours(monkeypatch):
    """What `airflow backfill create --from-date 2026-11-01T00:00 --to-date 2026-11-01T23:00`
    creates (Airflow's own walk over the sweep's timetable): the 24 hours of that day and no
    other, each run dated by the start of its hour."""
    from datetime import UTC, datetime

    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization

    monkeypatch.delenv("VST_SWEEP_MINUTES", raising=False)
    dag = DagBag(str(REPO / "dags")).dags["blob_sweep"]
    serialized = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    day = datetime(2026, 11, 1, tzinfo=UTC)
    infos = list(serialized.iter_dagrun_infos_between(day, day.replace(hour=23)))
    assert [(i.data_interval.start.hour, i.data_interval.end.hour) for i in infos] == [
        (h, (h + 1) % 24) for h in range(24)]
    assert infos[0].data_interval.start == day and infos[-1].data_interval.end == datetime(2026, 11, 2, tzinfo=UTC)
    assert all(i.logical_date == i.data_interval.start for i in infos)
