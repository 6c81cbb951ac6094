"""Shared fixtures: one fresh build of the whole release per test session, in a temporary folder."""
from types import SimpleNamespace

import pytest

from autograder import release


@pytest.fixture(scope="session")
def fresh_build(tmp_path_factory):
    """Everything `make release` makes, built from the current sources into a temporary folder.

    out: the generated files, laid out as in the repository; course: the nbgrader course folder.
    """
    scratch = tmp_path_factory.mktemp("release")
    out, course = scratch / "out", scratch / "course"
    written = release.build_release(out=out, course=course)
    return SimpleNamespace(out=out, course=course, written=written)
