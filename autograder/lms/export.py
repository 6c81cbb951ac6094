"""`make export`: write the course's grades (tests and written answers) for the instructor and for the LMS.

    python -m autograder.lms.export [--course build/course]

Writes into the course folder, real students only (never the example students of autograder/examples/):
    grades.csv                nbgrader's export's columns (assignment, student, timestamp, score with late penalty...),
                              plus the LMS each submission came from, its id there and the LMS's late flag
    canvas.csv                for Canvas's gradebook import: Student, ID, SIS User ID, SIS Login ID, Section,
                              then one column per assignment (students collected from Canvas)
    moodle_<assignment>.csv   for Moodle's "Upload grading worksheet" of that assignment: Identifier
                              ("Participant N", Moodle's id of the student in that assignment), Full name,
                              Grade, Maximum grade (students collected from Moodle)
Scores include the written answers graded in the formgrader; the summary says when some are not graded yet. Every
cell of every file is written through sheets.write_csv, so that names that start with =, +, -, @ reach no
spreadsheet as formulas.
"""
import argparse
from pathlib import Path

from nbgrader.api import Gradebook, MissingEntry

from .. import examples
from ..course import COURSE
from .collect import RECORDS
from .sheets import read_csv, write_csv

GRADE_COLUMNS = ["assignment", "duedate", "timestamp", "student_id", "last_name", "first_name", "email", "raw_score",
                 "late_submission_penalty", "score", "max_score"]  # nbgrader's CsvExportPlugin's
LMS_COLUMNS = ["lms", "lms_id", "late"]


def read_records(course):
    """{(assignment, student_id): row} of <course>/submissions.csv (written by autograder.lms.collect)."""
    return {(row["assignment"], row["student_id"]): row for row in read_csv(course / RECORDS)}


def example_students(assignments):
    return {example.student for assignment in assignments for example in examples.load_examples(assignment)}


def submitted(gradebook, assignment, student):
    """(timestamp, raw score, late penalty) of a submission, or None when nothing was submitted."""
    try:
        submission = gradebook.find_submission(assignment, student)
    except MissingEntry:
        return None
    return submission.timestamp, submission.score, submission.late_submission_penalty or 0.0


def score(gradebook, assignment, student):
    """A submission's score as nbgrader exports it (late penalty taken off), or None when nothing was submitted."""
    found = submitted(gradebook, assignment, student)
    return None if found is None else max(0.0, found[1] - found[2])


def number(value):
    return "" if value is None else f"{value:g}"


def grade_row(gradebook, assignment, student):
    """A student's row of grades.csv as nbgrader's CsvExportPlugin computes it (nothing submitted scores 0)."""
    timestamp, raw, penalty = submitted(gradebook, assignment.name, student.id) or (None, 0.0, 0.0)
    return [assignment.name, assignment.duedate, timestamp, student.id, student.last_name, student.first_name,
            student.email, raw, penalty, score(gradebook, assignment.name, student.id) or 0.0, assignment.max_score]


def write_grades(course, gradebook, students, records):
    """grades.csv: nbgrader's columns for `students`, then the LMS columns. Written here rather than by
    CsvExportPlugin, which joins the cells with commas unquoted: a name with a comma shifted the columns."""
    empty = dict.fromkeys(LMS_COLUMNS, "")
    rows = [grade_row(gradebook, assignment, student)
            + [records.get((assignment.name, student.id), empty)[key] for key in LMS_COLUMNS]
            for assignment in gradebook.assignments for student in gradebook.students if student.id in set(students)]
    return write_csv(course / "grades.csv", GRADE_COLUMNS + LMS_COLUMNS, rows)


def write_canvas(course, gradebook, assignments, records):
    """canvas.csv: one row per student collected from Canvas, one column per assignment."""
    canvas = {row["student_id"]: row for row in records.values() if row["lms"] == "canvas"}
    rows = []
    for student, row in sorted(canvas.items()):
        name = ", ".join(part for part in (row["last_name"], row["first_name"]) if part)
        rows.append([name, row["lms_id"], "", "", "",
                     *(number(score(gradebook, assignment, student)) for assignment in assignments)])
    return write_csv(course / "canvas.csv", ["Student", "ID", "SIS User ID", "SIS Login ID", "Section",
                                             *assignments], rows)


def write_moodle(course, gradebook, assignment, records):
    """moodle_<assignment>.csv: the grading worksheet of one Moodle assignment."""
    maximum = gradebook.find_assignment(assignment).max_score
    rows = [[f"Participant {row['lms_id']}", f"{row['first_name']} {row['last_name']}".strip(),
             number(score(gradebook, assignment, student)), number(maximum)]
            for (name, student), row in sorted(records.items()) if name == assignment and row["lms"] == "moodle"]
    return write_csv(course / f"moodle_{assignment}.csv", ["Identifier", "Full name", "Grade", "Maximum grade"],
                     rows)


def export(course=COURSE):
    """Write every grades file of the course; return their paths."""
    records = read_records(course)
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        assignments = sorted(assignment.name for assignment in gradebook.assignments)
        left_out = example_students(assignments)
        students = sorted(student.id for student in gradebook.students if student.id not in left_out)
        if left_out & {student.id for student in gradebook.students}:
            print(f"export: left out the example students ({len(left_out)}); they belong in their own course")
        waiting = [f"{assignment} {student}" for assignment in assignments for student in students
                   if needs_manual_grade(gradebook, assignment, student)]
        if waiting:
            print(f"export: written answers not graded yet (score counts the tests only): {', '.join(waiting)}; "
                  f"grade them in the formgrader (make formgrader), then export again")
        written = [write_grades(course, gradebook, students, records)]
        if any(row["lms"] == "canvas" for row in records.values()):
            written.append(write_canvas(course, gradebook, assignments, records))
        written += [write_moodle(course, gradebook, assignment, records) for assignment in assignments
                    if any(key[0] == assignment and row["lms"] == "moodle" for key, row in records.items())]
    return written


def needs_manual_grade(gradebook, assignment, student):
    try:
        return gradebook.find_submission(assignment, student).needs_manual_grade
    except MissingEntry:
        return False


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--course", type=Path, default=COURSE, help=f"nbgrader course folder (default {COURSE})")
    course = parser.parse_args(argv).course.resolve()
    if not (course / "gradebook.db").is_file():
        raise SystemExit(f"No gradebook in {course}: release, collect and grade first (see README.md).")
    for path in export(course):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
