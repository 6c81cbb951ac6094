"""The generated files: up to date, marked as generated, and the release gives nothing away."""
import re

import pytest

from autograder import book as book_pages, notebooks, release
from autograder.course import ROOT, source_notebooks

NOTEBOOKS = [source.stem for source in source_notebooks()]
STUB = "# PUT YOUR CODE HERE  #\n"


def test_every_generated_file_is_up_to_date(fresh_build):
    stale = release.stale_files(fresh_build.written, fresh_build.out)
    assert not stale, f"run `make release`: these committed files differ from what the sources make: {stale}"


def test_generated_files_say_so_in_their_first_lines(fresh_build):
    for path in fresh_build.written:
        committed = ROOT / path.relative_to(fresh_build.out)
        first_lines = committed.read_text(encoding="utf-8")[:400]
        assert "generated" in first_lines.lower() and "make release" in first_lines, committed


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_release_holds_no_solution_hidden_test_or_model_answer(name):
    source = notebooks.to_nbgrader_source(notebooks.read_source(ROOT / "solutions" / f"{name}.md"))
    released = notebooks.cells_by_grade_id(notebooks.read(ROOT / "assignment" / f"{name}.ipynb"))
    text = (ROOT / "assignment" / f"{name}.ipynb").read_text(encoding="utf-8")
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
        assert marker not in text
    for grade_id, cell in notebooks.cells_by_grade_id(source).items():
        given = released[grade_id].source
        if notebooks.is_test_cell(cell):
            shown = re.sub(r"### BEGIN HIDDEN TESTS.*?### END HIDDEN TESTS", "", cell.source, flags=re.DOTALL)
            assert given.split() == shown.split(), f"{grade_id} must show exactly its visible tests"
        elif cell.cell_type == "code":
            assert STUB in given + "\n", f"{grade_id} has no PUT YOUR CODE HERE stub"
        else:
            assert given == "YOUR ANSWER HERE", f"{grade_id} shows its model answer"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_test_cell_hides_at_least_as_many_checks_as_it_shows(name):
    source = notebooks.to_nbgrader_source(notebooks.read_source(ROOT / "solutions" / f"{name}.md"))
    for grade_id, cell in notebooks.cells_by_grade_id(source).items():
        if notebooks.is_test_cell(cell):
            visible, _, hidden = cell.source.partition("### BEGIN HIDDEN TESTS")
            count = lambda code: len(re.findall(r"\bassert", code))  # noqa: E731
            assert count(visible) >= 1, f"{grade_id} shows no test"
            assert count(hidden) >= count(visible), f"{grade_id}: fewer hidden checks than visible ones"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_release_keeps_book_only_cells_out_and_the_book_keeps_them(name):
    source = notebooks.read_source(ROOT / "solutions" / f"{name}.md")
    book_only = [cell.source for cell in source.cells if notebooks.has_tag(cell, "book-only")]
    released = notebooks.read(ROOT / "assignment" / f"{name}.ipynb")
    book = notebooks.read(ROOT / "book" / f"{name}.ipynb")
    for text in book_only:
        assert not any(cell.source == text for cell in released.cells)
        assert any(cell.source == book_pages.fill_placeholders(text, book_pages.RESULTS / name) for cell in book.cells)
