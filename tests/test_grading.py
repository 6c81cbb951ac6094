"""Autograding with nbgrader: every example student scores as stated, and bad submissions cost only their own
student."""
import pytest

from autograder import grade
from autograder.course import source_notebooks

NOTEBOOKS = [source.stem for source in source_notebooks()]


def test_every_example_submission_scores_as_its_file_says(fresh_build, capsys):
    """The reference gets full marks, the release zero, each mistake loses points on its own test only."""
    try:
        grade.main(["--examples", "--course", str(fresh_build.course)])
    finally:
        print(capsys.readouterr().out)  # the table, in pytest's report when something fails
    assert (fresh_build.course / "grades.csv").is_file()
    for name in NOTEBOOKS:
        assert (fresh_build.course / "feedback" / "reference" / name / f"{name}.html").is_file()


def submitted_folder(course, student, notebook):
    folder = course / "submitted" / student / notebook
    folder.mkdir(parents=True)
    return folder


def test_a_notebook_under_another_name_is_graded_under_its_own(tmp_path):
    folder = submitted_folder(tmp_path, "ada", "part1_vae")
    (folder / "part1_vae (1).ipynb").write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    assert grade.check_submission(folder, "part1_vae") is None
    assert (folder / "part1_vae.ipynb").is_file()


@pytest.mark.parametrize("files, complaint", [
    ({"part1_vae.ipynb": "{ this is not json"}, "is not a valid notebook"),
    ({}, "no part1_vae.ipynb"),
    ({"a.ipynb": "{}", "b.ipynb": "{}"}, "no part1_vae.ipynb"),
])
def test_a_submission_that_cannot_be_graded_is_reported(tmp_path, files, complaint):
    folder = submitted_folder(tmp_path, "ada", "part1_vae")
    for name, text in files.items():
        (folder / name).write_text(text)
    assert complaint in grade.check_submission(folder, "part1_vae")


def test_a_broken_submission_does_not_stop_the_batch(fresh_build):
    notebook = NOTEBOOKS[0]
    broken = submitted_folder(fresh_build.course, "broken_json", notebook)
    (broken / f"{notebook}.ipynb").write_text("{ not a notebook")
    results = grade.grade_notebook(fresh_build.course, notebook, students={"broken_json"})
    scores, problem = results["broken_json"]
    assert scores is None and "is not a valid notebook" in problem
