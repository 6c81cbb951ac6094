"""Every CSV the course writes is safe to open in a spreadsheet: students whose LMS names start with =, +, -, @
reach submissions.csv (collect), grades.csv, canvas.csv and moodle_<assignment>.csv (export) as text, and the
grades stay numbers."""
import csv
import io
import json
import os
import sys
import zipfile
from pathlib import Path

import pytest
from nbgrader.api import Gradebook

from autograder.lms import collect, export
from autograder.lms.sheets import FORMULA_START, NUMBER, safe_cell

NOTEBOOK = "part1_vae"
FILE = f"{NOTEBOOK}.ipynb"
# Students as the LMSs would name their files, each name a formula.
MOODLE = {"4321": "=HYPERLINK(evil.example,click) Smith", "4322": "-2+3 Doe", "4323": "+A1+A2 Roe",
          "4324": "@SUM(1+1) Poe"}
CANVAS = {"12345": "=cmd|' -C calc'!A0"}  # Canvas's login part


def download(members):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in members:
            archive.writestr(name, json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """A course with one assignment, collected from a Moodle and a Canvas download, every submission scored 3 of
    5 (nbgrader runs this environment's alembic to make the gradebook)."""
    course = tmp_path_factory.mktemp("exports") / "course"
    (course / "release" / NOTEBOOK).mkdir(parents=True)
    path = os.environ["PATH"]
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{path}"
    try:
        with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
            gradebook.add_assignment(NOTEBOOK)
            gradebook.add_notebook(NOTEBOOK, NOTEBOOK)
            gradebook.add_grade_cell("test_kld", NOTEBOOK, NOTEBOOK, max_score=5, cell_type="code")
    finally:
        os.environ["PATH"] = path
    moodle = course.parent / "moodle.zip"
    moodle.write_bytes(download([f"{name}_{id_}_assignsubmission_file_/{FILE}" for id_, name in MOODLE.items()]))
    canvas = course.parent / "canvas.zip"
    canvas.write_bytes(download([f"{login}_{id_}_1_{FILE}" for id_, login in CANVAS.items()]))
    collect.collect(moodle, course)
    collect.collect(canvas, course)
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        for student in [student.id for student in gradebook.students]:
            gradebook.add_submission(NOTEBOOK, student)
            gradebook.find_grade("test_kld", NOTEBOOK, NOTEBOOK, student).auto_score = 3
        gradebook.db.commit()
    export.export(course)
    return course


def cells(path):
    with path.open(newline="", encoding="utf-8") as file:
        return [cell for row in csv.reader(file) for cell in row]


@pytest.mark.parametrize("name", ["submissions.csv", "grades.csv", "canvas.csv", f"moodle_{NOTEBOOK}.csv"])
def test_no_cell_of_a_course_csv_is_a_formula(course, name):
    written = cells(course / name)
    assert written
    live = [cell for cell in written if cell.startswith(FORMULA_START) and not NUMBER.fullmatch(cell)]
    assert not live, f"{name}: cells a spreadsheet would run: {live}"


def test_the_names_are_kept_as_text_and_the_grades_as_numbers(course):
    grades = {row["student_id"]: row for row in csv.DictReader((course / "grades.csv").open(encoding="utf-8"))}
    assert grades["moodle_4321"]["first_name"] == "'=HYPERLINK(evil.example,click)"
    assert grades["moodle_4321"]["last_name"] == "Smith", "a comma in a name shifts no column"
    assert grades["canvas_12345"]["last_name"] == "'=cmd|' -C calc'!A0"
    assert {row["score"] for row in grades.values()} == {"3.0"}
    moodle = list(csv.DictReader((course / f"moodle_{NOTEBOOK}.csv").open(encoding="utf-8")))
    assert [(row["Identifier"], row["Full name"], row["Grade"]) for row in moodle] == [
        ("Participant 4321", "'=HYPERLINK(evil.example,click) Smith", "3"), ("Participant 4322", "'-2+3 Doe", "3"),
        ("Participant 4323", "'+A1+A2 Roe", "3"), ("Participant 4324", "'@SUM(1+1) Poe", "3")]
    canvas = list(csv.DictReader((course / "canvas.csv").open(encoding="utf-8")))
    assert [(row["Student"], row["ID"], row[NOTEBOOK]) for row in canvas] == [("'=cmd|' -C calc'!A0", "12345", "3")]


@pytest.mark.parametrize("value, cell", [
    ("=1+1", "'=1+1"), ("+1 Roe", "'+1 Roe"), ("-2+3", "'-2+3"), ("@SUM(A1)", "'@SUM(A1)"), ("\t=1", "'\t=1"),
    ("\r=1", "'\r=1"), ("-1.5", "-1.5"), ("+2", "+2"), ("-3e-2", "-3e-2"), (-4, "-4"), (None, ""), ("Ann", "Ann"),
    ("'=1", "'=1")])
def test_safe_cell(value, cell):
    assert safe_cell(value) == cell
