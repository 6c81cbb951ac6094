"""`make export`: write the course's grades (tests and written answers) for the instructor and for the LMS.

    python -m autograder.lms.export [--course build/course]

Writes into the course folder, real students only (never the example students of autograder/examples/):
    grades.csv                nbgrader's export (assignment, student, timestamp, score with late penalty...),
                              plus the LMS each submission came from, its id there and the LMS's late flag
    canvas.csv                for Canvas's gradebook import: Student, ID, SIS User ID, SIS Login ID, Section,
                              then one column per assignment (students collected from Canvas)
    moodle_<assignment>.csv   for Moodle's "Upload grading worksheet" of that assignment: Identifier
                              ("Participant N", Moodle's id of the student in that assignment), Full name,
                              Grade, Maximum grade (students collected from Moodle)
Scores include the written answers graded in the formgrader; the summary says when some are not graded yet.
"""
import argparse
import csv
from pathlib import Path

from nbgrader.api import Gradebook, MissingEntry
from nbgrader.plugins import CsvExportPlugin

from .. import examples
from ..course import COURSE
from .collect import RECORDS

LMS_COLUMNS = ["lms", "lms_id", "late"]


def read_records(course):
    """{(assignment, student_id): row} of <course>/submissions.csv (written by autograder.lms.collect)."""
    path = course / RECORDS
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as file:
        return {(row["assignment"], row["student_id"]): row for row in csv.DictReader(file)}


def example_students(assignments):
    return {example.student for assignment in assignments for example in examples.load_examples(assignment)}


def score(gradebook, assignment, student):
    """A submission's score as nbgrader exports it (late penalty taken off), or None when nothing was submitted."""
    try:
        submission = gradebook.find_submission(assignment, student)
    except MissingEntry:
        return None
    return max(0.0, submission.score - (submission.late_submission_penalty or 0.0))


def write_csv(path, header, rows):
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def number(value):
    return "" if value is None else f"{value:g}"


def write_grades(course, gradebook, students, records):
    """nbgrader's grades.csv of `students`, with the LMS columns appended."""
    path = course / "grades.csv"
    # nbgrader exports every student for an empty list; no id is "" so [""] exports none.
    CsvExportPlugin(to=str(path), student=students or [""]).export(gradebook)
    with path.open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    header = list(rows[0]) if rows else ["assignment", "student_id"]
    empty = dict.fromkeys(LMS_COLUMNS, "")
    return write_csv(path, header + LMS_COLUMNS, [
        [*row.values(), *[records.get((row["assignment"], row["student_id"]), empty)[key] for key in LMS_COLUMNS]]
        for row in rows])


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
