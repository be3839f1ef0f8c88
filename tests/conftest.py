"""Shared fixtures: sample clips made from real photos."""

from __future__ import annotations

from pathlib import Path

import pytest

from scoring.media.samples import make_clip


@pytest.fixture(scope="session")
def clip_factory(tmp_path_factory):
    """Makes (and caches) sample clips: ``clip_factory(seconds=2, fps="25", ...)``."""
    folder = tmp_path_factory.mktemp("clips")
    made: dict = {}

    def make(seconds=2.0, fps="25", size=(160, 90), audio=True, suffix=".mp4") -> Path:
        key = (seconds, fps, size, audio, suffix)
        if key not in made:
            name = f"clip-{len(made)}{suffix}"
            make_clip(folder / name, seconds, fps, size, audio)
            made[key] = folder / name
        return made[key]

    return make


# The modules that start an Airflow stack (test_images builds docker/'s images first), longest
# first: under `pytest -n 2 --dist loadfile` (make test) each module runs whole on one worker, in
# this order, so the long ones start at once on both workers instead of meeting at the end.
STACK_MODULES = ("test_images", "test_dags", "test_reliability", "test_prod", "test_uploads",
                 "test_azureml_airflow")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.nodeid.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")
        return STACK_MODULES.index(name) if name in STACK_MODULES else len(STACK_MODULES)

    items.sort(key=rank)  # stable: the tests of a module keep their order


FIGURES_SENT = pytest.StashKey[dict]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Hands the figures a module's tests measured (its ``FIGURES`` list) to the report, which
    carries them to the terminal summary, from an xdist worker too."""
    report = (yield).get_result()
    figures = getattr(getattr(item, "module", None), "FIGURES", None)
    if figures:
        sent = item.config.stash.setdefault(FIGURES_SENT, {})
        start = sent.get(item.module.__name__, 0)
        report.user_properties.extend(("figure", line) for line in figures[start:])
        sent[item.module.__name__] = len(figures)


def pytest_terminal_summary(terminalreporter):
    """The figures the reliability and upload tests measured, shown even without ``-s``."""
    lines = [value for reports in terminalreporter.stats.values() for report in reports
             for key, value in getattr(report, "user_properties", ()) if key == "figure"]
    if lines:
        terminalreporter.section("figures the tests measured")
        for line in lines:
            terminalreporter.write_line(line)
