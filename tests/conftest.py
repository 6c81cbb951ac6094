"""Shared fixtures and markers: one fresh build of the whole release per test session, in a temporary folder;
running a cell of a release notebook; the `mnist` marker for tests that need the data set."""
import socket
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest

from autograder import release
from solutions import course_utils


def pytest_runtest_setup(item):
    """Tests marked `mnist` need the MNIST files: skip them, saying where they were looked for, when missing."""
    raw = course_utils.data_root() / "MNIST" / "raw"
    if item.get_closest_marker("mnist") and not raw.is_dir():
        pytest.skip(f"MNIST is not in {raw.resolve()} (set {course_utils.DATA_DIR_VARIABLE})")


@pytest.fixture
def run_release_cell():
    """run(notebook, containing, namespace): run the code cell of assignment/<notebook>.ipynb that contains
    `containing` in `namespace` (a dict, updated and returned)."""
    assignment = Path(__file__).resolve().parent.parent / "assignment"

    def run(notebook, containing, namespace):
        release = nbformat.read(assignment / f"{notebook}.ipynb", as_version=4)
        cell = next(cell for cell in release.cells if cell.cell_type == "code" and containing in cell.source)
        exec(cell.source, namespace)
        return namespace

    return run


@pytest.fixture(scope="session")
def fresh_build(tmp_path_factory):
    """Everything `make release` makes, built from the current sources into a temporary folder.

    out: the generated files, laid out as in the repository; course: the nbgrader course folder.
    """
    scratch = tmp_path_factory.mktemp("release")
    out, course = scratch / "out", scratch / "course"
    written = release.build_release(out=out, course=course)
    return SimpleNamespace(out=out, course=course, written=written)


def free_port():
    """A TCP port of 127.0.0.1 that nothing listens on now (for a server a test starts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
