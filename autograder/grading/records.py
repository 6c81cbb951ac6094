"""What grading writes into the course folder, which the coordinator alone writes: each result, once checked (its
test cells must be the source's), goes into the gradebook (nbgrader's Gradebook and SaveAutoGrades),
autograded/<student>/<notebook>/, logs/<student>/<notebook>.log and grading_report.csv (one row per student and
notebook: score, max, status ok / flagged / failed, reason, and the hashes that tell what was graded). A flagged
student's score is withheld: every test cell gets a manual score of 0 for an instructor to review in the
formgrader. The gradebook is checked before and after a batch, and backed up before it.
"""
import shutil
import sqlite3
import warnings
from dataclasses import replace

import nbformat

from .. import notebooks
from ..course import is_plain_student_id
from ..lms import sanitize, sheets


REPORT_FIELDS = ["student", "notebook", "score", "max", "status", "reason", "submission_hash", "release_hash"]

# nbgrader's Gradebook.update_or_create_submission warns about its own session handling; the rows are right.
warnings.filterwarnings("ignore", message="Object of type <Submitted", module="nbgrader")


# ---------------------------------------------------------------------------------------------------------------
# grading_report.csv

def read_report(course):
    """{(student, notebook): row} of <course>/grading_report.csv."""
    return {(row["student"], row["notebook"]): row for row in sheets.read_csv(course / "grading_report.csv")}


def write_report(course, report):
    rows = sorted(report.values(), key=lambda row: (row["notebook"], row["student"]))
    partial = sheets.write_csv(course / "grading_report.csv.partial", REPORT_FIELDS,
                               [[row[field] for field in REPORT_FIELDS] for row in rows])
    partial.replace(course / "grading_report.csv")  # a batch killed here keeps the old report or the new one


def report_row(result, maximum):
    withheld = result.status != "ok"
    return {"student": result.student, "notebook": result.assignment,
            "score": "" if withheld else f"{sum(score for score, _ in result.scores.values()):g}",
            "max": f"{maximum:g}", "status": result.status, "reason": result.reason,
            "submission_hash": result.submission_hash, "release_hash": result.release_hash}


def graded_before(row, job):
    """Whether the report's `row` is of this very submission graded with this very release."""
    return (row is not None and row["submission_hash"] == job.submission_hash()
            and row["release_hash"] == job.release_hash())


# ---------------------------------------------------------------------------------------------------------------
# The gradebook

def gradebook_url(course):
    return f"sqlite:///{course / 'gradebook.db'}"


def check_gradebook(course):
    """Exit with a message saying what to do when the course's gradebook is not a sound SQLite database."""
    path = course / "gradebook.db"
    if not path.exists():
        return
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as database:
            verdict = database.execute("PRAGMA integrity_check").fetchone()[0]
    except sqlite3.DatabaseError as error:
        verdict = str(error)
    if verdict != "ok":
        raise SystemExit(f"{path} is corrupted (SQLite: {verdict}). Nothing was graded. Restore the backup "
                         f"({path.name}.backup, written before the last batch) over it, or move it away to "
                         f"start a new gradebook and grade again with --force.")


def back_up_gradebook(course):
    path = course / "gradebook.db"
    if path.exists():
        with sqlite3.connect(path) as database, sqlite3.connect(f"{path}.backup") as backup:
            database.backup(backup)


def save_to_gradebook(course, result, timestamp):
    """Write a checked result into the course's gradebook with nbgrader's own SaveAutoGrades; a flagged
    submission's tests get a manual score of 0, for review; a failed one keeps no grades."""
    from nbgrader.api import Gradebook, MissingEntry
    from nbgrader.preprocessors import SaveAutoGrades

    assignment, student = result.assignment, result.student
    with Gradebook(gradebook_url(course)) as gradebook:
        gradebook.update_or_create_student(student)
        if result.autograded is None:
            try:
                gradebook.remove_submission(assignment, student)
            except MissingEntry:
                pass
            return
        gradebook.update_or_create_submission(assignment, student, **({"timestamp": timestamp} if timestamp else {}))
    autograded = nbformat.reads(result.autograded.decode(), as_version=4)
    resources = {"nbgrader": {"db_url": gradebook_url(course), "assignment": assignment, "notebook": assignment,
                              "student": student}}
    SaveAutoGrades().preprocess(autograded, resources)
    with Gradebook(gradebook_url(course)) as gradebook:
        for grade_id, (score, _) in result.scores.items():
            grade = gradebook.find_grade(grade_id, assignment, assignment, student)
            if result.status == "flagged":
                grade.manual_score, grade.needs_manual_grade = 0, True
            elif grade.auto_score != score:
                raise RuntimeError(f"{student} {grade_id}: nbgrader scores {grade.auto_score}, the unit said {score}")
        gradebook.db.commit()


# ---------------------------------------------------------------------------------------------------------------
# One result, checked and recorded

def test_cells_differ(autograded, source):
    """The test cells whose code in the returned notebook is not the source's (empty when all are)."""
    returned = notebooks.test_cells(autograded)
    return [grade_id for grade_id, cell in notebooks.test_cells(source).items()
            if grade_id not in returned or returned[grade_id].source != cell.source]


def checked(result, source):
    """The result, or a failed one when its notebook's test cells or scores are not those of the source (a
    worker, on another machine perhaps, is trusted with nothing the course folder keeps)."""
    if result.autograded is None:
        return result
    autograded = nbformat.reads(result.autograded.decode(), as_version=4)
    differ = test_cells_differ(autograded, source)
    if differ or set(result.scores) != set(notebooks.test_cells(source)):
        reason = f"grader returned test cells that are not the assignment's ({', '.join(differ) or 'scores'})"
        return replace(result, status="failed", reason=reason, autograded=None, scores={})
    return result


def record(course, result, source, timestamp, notes):
    """Check one result and write it into the course folder: gradebook, autograded/, logs/; return the result."""
    assignment, student = result.assignment, result.student
    result = checked(result, source)
    if is_plain_student_id(student):
        autograded = course / "autograded" / student / assignment
        shutil.rmtree(autograded, ignore_errors=True)
        shutil.rmtree(course / "feedback" / student / assignment, ignore_errors=True)
        if result.autograded is not None:
            autograded.mkdir(parents=True)
            # What the formgrader shows runs no student script; the gradebook keeps nbgrader's own notebook,
            # whose answer cells' checksums must match the source's (sanitised text would not).
            (autograded / f"{assignment}.ipynb").write_bytes(sanitize.notebook_bytes(result.autograded))
        save_to_gradebook(course, result, timestamp)
        log = course / "logs" / student / f"{assignment}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("\n".join([*notes, f"status: {result.status}", f"reason: {result.reason}",
                                  f"seconds: {result.seconds:.1f}", "", result.log]), encoding="utf-8")
    return result


def submission_timestamp(course, student, assignment):
    """The time the LMS says the student submitted (submitted/<student>/<assignment>/timestamp.txt), or None."""
    path = course / "submitted" / student / assignment / "timestamp.txt"
    if is_plain_student_id(student) and path.is_file() and not path.is_symlink():
        return path.read_text(encoding="utf-8").strip()[:100] or None
    return None
