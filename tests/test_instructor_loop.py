"""The instructor's whole loop, end to end, as README.md tells it: an LMS download (a Canvas zip and a Moodle
zip, one example student each) -> collect -> grade -> written answers graded through the formgrader's API ->
feedback -> export, in a course folder of its own."""
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import zipfile

import pytest
from nbgrader.api import Gradebook

from autograder import examples, notebooks, release
from autograder.course import ROOT
from autograder.lms import collect, export
from conftest import free_port

NOTEBOOK = "part1_vae"
HIDDEN_TESTS = re.compile(r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS", flags=re.DOTALL)
# Two real students, as the LMSs name their files: one late in Canvas, one in Moodle (whose KLD is wrong).
CANVAS_FILE = f"doejane_late_12345_67890_{NOTEBOOK}.ipynb"
MOODLE_FILE = f"John Smith_4321_assignsubmission_file_/{NOTEBOOK}.ipynb"
STUDENTS = {"canvas_12345": "reference", "moodle_4321": "kld_mean"}  # student id (from the LMS's id): example


def example_notebook(course, student):
    release_notebook = notebooks.read(course / "release" / NOTEBOOK / f"{NOTEBOOK}.ipynb")
    source = notebooks.read(course / "source" / NOTEBOOK / f"{NOTEBOOK}.ipynb")
    example = next(e for e in examples.load_examples(NOTEBOOK) if e.student == student)
    return examples.submission(example, release_notebook, source)


def lms_zip(path, member, notebook):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, json.dumps(notebook))
    return path


def run(*args, cwd=ROOT):
    result = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


class Formgrader:
    """`make formgrader`'s server (jupyter lab started in the course folder), reached over its REST API."""

    def __init__(self, course):
        self.token, self.port = "loop-test", free_port()
        bin_dir = os.path.dirname(sys.executable)
        self.server = subprocess.Popen(
            [os.path.join(bin_dir, "jupyter"), "lab", "--no-browser", f"--port={self.port}",
             f"--ServerApp.token={self.token}", "--ServerApp.port_retries=0",
             *(["--allow-root"] if os.geteuid() == 0 else [])],
            cwd=course, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            env={**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"]})

    def request(self, path, data=None):
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/formgrader/api/{path}",
                                         data=None if data is None else json.dumps(data).encode(),
                                         method="GET" if data is None else "PUT",
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    def wait(self, seconds=180):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.server.poll() is None, "the formgrader's server stopped"
            try:
                return self.request("status")
            except OSError:
                time.sleep(1)
        raise TimeoutError("the formgrader's server did not answer")

    def stop(self):
        self.server.terminate()
        self.server.wait(timeout=60)


@pytest.fixture(scope="module")
def course(fresh_build, tmp_path_factory):
    """A released course of its own (copied from the session's fresh build), with the two zips collected."""
    course = tmp_path_factory.mktemp("loop") / "course"
    shutil.copytree(fresh_build.course, course)
    release.write_course_config(course)
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        gradebook.update_or_create_student("untouched")  # an example student: must stay out of the exports
    downloads = course.parent
    canvas = lms_zip(downloads / "canvas.zip", CANVAS_FILE, example_notebook(course, "reference"))
    moodle = lms_zip(downloads / "moodle.zip", MOODLE_FILE, example_notebook(course, "kld_mean"))
    collect.main([str(canvas), "--course", str(course)])
    collect.main([str(moodle), "--course", str(course)])
    return course


def test_collect_files_each_student_with_name_id_and_late_flag(course):
    for student in STUDENTS:
        assert (course / "submitted" / student / NOTEBOOK / f"{NOTEBOOK}.ipynb").is_file()
    records = export.read_records(course)
    assert records[(NOTEBOOK, "canvas_12345")]["late"] == "yes"
    assert records[(NOTEBOOK, "moodle_4321")]["lms_id"] == "4321"
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        student = gradebook.find_student("moodle_4321")
        assert (student.first_name, student.last_name) == ("John", "Smith")


def test_collect_reads_brightspace_and_blackboard_names():
    brightspace = collect.LMSS["brightspace"].pattern.fullmatch(
        f"123-456 - Ann Lee - Mar 3, 2024 945 AM - {NOTEBOOK}.ipynb")
    blackboard = collect.LMSS["blackboard"].pattern.fullmatch(
        f"HW 1_alee_attempt_2024-03-03-09-45-00_{NOTEBOOK}.ipynb")
    assert brightspace["full_name"] == "Ann Lee"
    assert collect.LMSS["brightspace"].student(brightspace, download=None).student_id == "brightspace_456"
    assert brightspace["file"] == f"{NOTEBOOK}.ipynb"
    assert blackboard["username"] == "alee" and blackboard["file"] == f"{NOTEBOOK}.ipynb"
    assert collect.detect_lms([f"HW 1_alee_attempt_2024-03-03-09-45-00_{NOTEBOOK}.ipynb"]) == "blackboard"
    assert collect.detect_lms([MOODLE_FILE, "index.html"]) == "moodle"
    assert collect.detect_lms([CANVAS_FILE]) == "canvas"


@pytest.fixture(scope="module")
def graded(course):
    """The course after `make grade`, the written answers graded in the formgrader, and `make feedback`; the
    feedback pages as they were before the written answers were graded."""
    run("-m", "autograder.grading", NOTEBOOK, "--course", str(course))
    before = {student: feedback_page(course, student) for student in STUDENTS}
    formgrader = Formgrader(course)
    try:
        formgrader.wait()
        assert NOTEBOOK in [assignment["name"] for assignment in formgrader.request("assignments")]
        for submission in formgrader.request(f"submitted_notebooks/{NOTEBOOK}/{NOTEBOOK}"):
            for grade in formgrader.request(f"grades?submission_id={submission['id']}"):
                if grade["needs_manual_grade"]:  # the written answers: full marks, as a grader would give
                    formgrader.request(f"grade/{grade['id']}", {"manual_score": grade["max_score"]})
    finally:
        formgrader.stop()
    run("-m", "autograder.lms.feedback", "--course", str(course))
    return before


def feedback_page(course, student):
    return (course / "feedback" / student / NOTEBOOK / f"{NOTEBOOK}.html").read_text(encoding="utf-8")


def test_feedback_says_when_written_answers_are_not_graded_yet(course, graded):
    assert all("Written answers not graded yet" in page for page in graded.values())
    assert not any("Written answers not graded yet" in feedback_page(course, s) for s in STUDENTS)


def test_feedback_shows_test_names_and_messages_but_no_hidden_test_code(course, graded):
    source = notebooks.read(course / "source" / NOTEBOOK / f"{NOTEBOOK}.ipynb")
    hidden = {line.strip() for cell in source.cells for region in HIDDEN_TESTS.findall(cell.source)
              for line in region.splitlines() if len(line.strip()) >= 12}
    hidden -= {line.strip() for cell in source.cells for line in HIDDEN_TESTS.sub("", cell.source).splitlines()}
    assert len(hidden) > 20
    for student in STUDENTS:
        page = feedback_page(course, student)
        text = re.sub(r"<[^>]+>", "", page).replace("&quot;", '"').replace("&#39;", "'").replace("&gt;", ">") \
            .replace("&lt;", "<").replace("&amp;", "&")
        shown = sorted(hidden & {line.strip() for line in text.splitlines()})
        assert not shown, f"{student}'s feedback shows hidden tests: {shown[:3]}"
        assert "HIDDEN TESTS" not in page and "test_kld" in page
        assert 'src="../../mathjax/tex-chtml.js"' in page
    failed_kld = feedback_page(course, "moodle_4321").split('name="test_kld"')[1].split('name="test_')[0]
    assert "AssertionError" in failed_kld and "Traceback" not in failed_kld
    assert (course / "feedback" / "mathjax" / "tex-chtml.js").is_file()


def read_csv(path):
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def test_export_writes_real_students_grades_with_written_answers_and_lms_files(course, graded):
    export.main(["--course", str(course)])
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        maximum = gradebook.find_assignment(NOTEBOOK).max_score
        tests = sum(cell.max_score for cell in gradebook.find_notebook(NOTEBOOK, NOTEBOOK).grade_cells
                    if cell.cell_type == "code")
    grades = {row["student_id"]: row for row in read_csv(course / "grades.csv") if row["assignment"] == NOTEBOOK}
    assert set(grades) == set(STUDENTS), "grades.csv: the real students, never the example students"
    assert float(grades["canvas_12345"]["score"]) == maximum > tests, "written answers count in the score"
    assert float(grades["moodle_4321"]["score"]) < maximum
    assert grades["canvas_12345"]["late"] == "yes" and grades["moodle_4321"]["late"] == ""
    canvas = read_csv(course / "canvas.csv")
    assert list(canvas[0])[:5] == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]
    assert [(row["ID"], float(row[NOTEBOOK])) for row in canvas] == [("12345", maximum)]
    moodle = read_csv(course / f"moodle_{NOTEBOOK}.csv")
    assert [(row["Identifier"], row["Full name"]) for row in moodle] == [("Participant 4321", "John Smith")]
    assert float(moodle[0]["Grade"]) == float(grades["moodle_4321"]["score"])


def test_hidden_tests_leave_only_their_name_points_and_message():
    """HideHiddenTests on its own, with a failure in the hidden part and a student's cell that quotes the
    marker (left as written: only test cells are touched)."""
    import nbformat

    from autograder.lms.feedback import HideHiddenTests

    test = nbformat.v4.new_code_cell(
        "assert f(1) == 2, 'f(1)'\n### BEGIN HIDDEN TESTS\nassert f(5) == 11, 'f of an odd number is wrong'\n"
        "### END HIDDEN TESTS", metadata={"nbgrader": {"grade": True, "solution": False, "grade_id": "test_f",
                                                         "points": 2, "locked": True}})
    test.outputs = [nbformat.v4.new_output("error", ename="AssertionError", evalue="f of an odd number is wrong",
                                           traceback=["----> 3 assert f(5) == 11, 'f of an odd number is wrong'"])]
    student = nbformat.v4.new_code_cell("# BEGIN HIDDEN TESTS is just a comment here",
                                        metadata={"nbgrader": {"grade": False, "solution": True, "grade_id": "f"}})
    notebook, _ = HideHiddenTests().preprocess(nbformat.v4.new_notebook(cells=[test, student]), {})
    shown, kept = notebook.cells
    assert "f(5)" not in shown.source and shown.source.startswith("assert f(1) == 2, 'f(1)'")
    assert shown.metadata.nbgrader.grade_id == "test_f" and shown.metadata.nbgrader.points == 2
    assert shown.outputs[0].traceback == ["AssertionError: f of an odd number is wrong"]
    assert kept.source == "# BEGIN HIDDEN TESTS is just a comment here"
