"""Shared fixtures: sample clips made from real photos."""

from __future__ import annotations

from pathlib import Path

import pytest

from scoring.samples import make_clip


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


def pytest_terminal_summary(terminalreporter):
    """The figures the reliability tests measured, shown even without ``-s``."""
    import sys

    module = sys.modules.get("tests.test_reliability")
    if module is not None and module.FIGURES:
        terminalreporter.section("reliability figures")
        for line in module.FIGURES:
            terminalreporter.write_line(line)
