"""Autograding with nbgrader: every example student scores as its file says, in the examples' own course folder;
a second run grades nothing; --force grades again; what cannot be graded is reported and never stops a batch.
(tests/test_hostile.py grades the hostile submissions.)"""
import sqlite3

import nbformat
import pytest

from autograder import examples
from autograder.course import ASSIGNMENT_FOLDERS, source_notebooks
from autograder.grading import coordinator, records, submission
from autograder.grading.job import Job
from autograder.limits import Limits
from autograder.preprocessors import TruncateLongOutputs

NOTEBOOKS = [source.stem for source in source_notebooks()]


def run_grade(fresh_build, course, capsys, *arguments):
    """coordinator.main on the example students in `course`; its printed output."""
    try:
        coordinator.main(["--examples", "--course", str(course), "--released-in", str(fresh_build.course), *arguments])
    finally:
        out = capsys.readouterr().out
        print(out)  # the table, in pytest's report when something fails
    return out


@pytest.fixture(scope="module")
def examples_course(fresh_build, tmp_path_factory):
    """The example students of every notebook, graded once in their own course folder."""
    course = tmp_path_factory.mktemp("examples") / "course"
    coordinator.main(["--examples", "--course", str(course), "--released-in", str(fresh_build.course)])
    return course


def test_every_example_submission_scores_as_its_file_says(examples_course, fresh_build):
    """The reference gets full marks, the release zero, each mistake loses points on its own test only
    (coordinator.main exits with an error otherwise); the report has a row per student and notebook."""
    report = records.read_report(examples_course)
    assert set(report) == {(example.student, name) for name in NOTEBOOKS for example in examples.load_examples(name)}
    assert {row["status"] for row in report.values()} == {"ok"}
    for name in NOTEBOOKS:
        reference, untouched = report[("reference", name)], report[("untouched", name)]
        assert reference["score"] == reference["max"] and untouched["score"] == "0"
        assert (examples_course / "feedback" / "reference" / name / f"{name}.html").is_file()
        assert (examples_course / "logs" / "reference" / f"{name}.log").is_file()
    assert (examples_course / "grades.csv").is_file()
    assert not (fresh_build.course / "submitted").exists()  # never in the real course


def test_a_second_run_grades_nothing_and_says_what_it_skipped(examples_course, fresh_build, capsys):
    out = run_grade(fresh_build, examples_course, capsys)
    assert f"Graded 0 submissions, skipped {len(records.read_report(examples_course))} unchanged" in out
    assert "reference" in out and "skipped" in out


def test_force_grades_again(examples_course, fresh_build, capsys):
    out = run_grade(fresh_build, examples_course, capsys, "--force", "--student", "kld_mean", NOTEBOOKS[0])
    assert "Graded 1 submissions, skipped 0" in out
    assert "as expected" in out


def notebook_bytes(cells):
    notebook = nbformat.v4.new_notebook(cells=cells)
    return nbformat.writes(notebook).encode()


def test_a_notebook_under_another_name_is_graded_under_its_own(tmp_path):
    (tmp_path / "part1_vae (1).ipynb").write_bytes(notebook_bytes([]))
    files, notes = submission.submitted_notebook(tmp_path, "part1_vae")
    assert list(files) == ["part1_vae.ipynb"] and "part1_vae (1).ipynb" in notes[0]


def test_a_symlinked_notebook_is_refused(tmp_path):
    (tmp_path / "elsewhere.ipynb").write_bytes(notebook_bytes([]))
    (tmp_path / "part1_vae.ipynb").symlink_to(tmp_path / "elsewhere.ipynb")
    with pytest.raises(submission.Refused, match="symbolic link"):
        submission.submitted_notebook(tmp_path, "part1_vae")


@pytest.mark.parametrize("files, complaint", [
    ({"part1_vae.ipynb": b"{ this is not json"}, "not valid JSON"),
    ({"part1_vae.ipynb": b'{"cells": 3}'}, "not a"),
    ({}, "no part1_vae.ipynb"),
])
def test_a_submission_that_cannot_be_read_is_refused(files, complaint):
    job = Job("part1_vae", "ada", source={}, release={}, submission=files)
    with pytest.raises(submission.Refused, match=complaint):
        submission.read_submission(job)


def graded_cell(grade_id, source, solution=False):
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata.nbgrader = {"grade": not solution, "solution": solution, "grade_id": grade_id, "points": 1}
    return cell


def test_test_cells_must_appear_exactly_once():
    source = nbformat.v4.new_notebook(cells=[graded_cell("kld", "x = 1", solution=True),
                                             graded_cell("test_kld", "assert x == 1"),
                                             graded_cell("test_bpd", "assert x > 0")])
    duplicated = nbformat.v4.new_notebook(cells=[source.cells[0], source.cells[1],
                                                 graded_cell("test_kld", "assert x == 1")])
    refusals, _ = submission.cell_problems(duplicated, source, source)
    assert "duplicated test cell test_kld (its grade_id appears 2 times)" in refusals
    assert "missing test cell test_bpd" in refusals
    copied = nbformat.v4.new_notebook(cells=[*source.cells, nbformat.v4.new_code_cell("assert x == 1")])
    assert submission.cell_problems(copied, source, source) == ([], ["cell 3 is a copy of test cell test_kld"])


def test_a_student_id_that_is_not_plain_is_refused_not_globbed(fresh_build, tmp_path):
    course = tmp_path / "course"
    course.mkdir()
    for folder in ASSIGNMENT_FOLDERS:
        (course / folder).symlink_to(fresh_build.course / folder)
    for student in ("[g]lob", "g"):
        (course / "submitted" / student / NOTEBOOKS[0]).mkdir(parents=True)
    found = submission.collect(course, NOTEBOOKS[0], Limits(), sandbox=True)
    assert [job.student for job in found.jobs] == ["g"]
    assert [result.student for result in found.refused] == ["[g]lob"]
    assert "not a plain id" in found.refused[0].reason and found.refused[0].status == "failed"


def test_a_corrupted_gradebook_is_reported_and_nothing_is_graded(tmp_path):
    (tmp_path / "gradebook.db").write_bytes(b"SQLite format 3\x00" + b"\x00garbage" * 1000)
    with pytest.raises(SystemExit, match="gradebook.db is corrupted .* Restore the backup"):
        records.check_gradebook(tmp_path)


def test_the_gradebook_is_backed_up(tmp_path):
    with sqlite3.connect(tmp_path / "gradebook.db") as database:
        database.execute("create table grade (score)")
    records.back_up_gradebook(tmp_path)
    with sqlite3.connect(tmp_path / "gradebook.db.backup") as backup:
        assert backup.execute("select count(*) from grade").fetchone() == (0,)


def test_a_huge_output_is_cut_to_a_bounded_size():
    cell = nbformat.v4.new_code_cell("print('x' * 10**8)")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="x" * 10**7),
                    nbformat.v4.new_output("error", ename="E", evalue="y" * 10**7, traceback=["z" * 10**7])]
    truncated, _ = TruncateLongOutputs(max_characters=1000).preprocess_cell(cell, {}, 0)
    assert all(len(text) < 1100 for text in [truncated.outputs[0].text, truncated.outputs[1].evalue,
                                               *truncated.outputs[1].traceback])
