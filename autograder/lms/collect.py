"""`make collect ZIP=...`: read the submissions an LMS lets you download into the nbgrader course folder.

    python -m autograder.lms.collect submissions.zip [--course build/course] [--lms canvas] [--assignment part1_vae]

nbgrader's own `zip_collect` does the work: the zip goes to <course>/downloaded/<assignment>/archive/, nbgrader
extracts it and hands every notebook's path to a collector plugin, which reads the student from the file name
the LMS gave it. One plugin per LMS (file layouts as each LMS writes them):

    canvas        <login>[_late]_<user id>_<submission id>_<file>         (late flag in the name)
    moodle        <Full Name>_<participant id>_assignsubmission_file_/<file>
    brightspace   <id>-<id> - <Full Name> - <Mon D, YYYY HMM AM> - <file>  (plus index.html)
    blackboard    <Assignment>_<username>_attempt_<YYYY-MM-DD-HH-MM-SS>_<file>  (plus a .txt with the name)

Each notebook lands in <course>/submitted/<student>/<assignment>/ under the name the student gave it (the
grader renames a lone notebook to the assignment's name); a submission time the LMS gives goes to nbgrader's
timestamp.txt. The student's name goes to the gradebook, and the LMS's id, name and late flag to
<course>/submissions.csv, which `python -m autograder.lms.export` reads to write grades the LMS can import.
Without --assignment, a notebook belongs to the released assignment its file name starts with.
"""
import argparse
import csv
import re
import shutil
import sys
import zipfile
from datetime import datetime
from pathlib import Path

from nbgrader.api import Gradebook
from nbgrader.apps import ZipCollectApp
from nbgrader.plugins import FileNameCollectorPlugin

from ..course import COURSE

RECORDS = "submissions.csv"  # in the course folder: one row per assignment and student
FIELDS = ["assignment", "student_id", "lms", "lms_id", "first_name", "last_name", "late", "submitted_at", "file"]
NOT_AN_ID = re.compile(r"[^a-z0-9]+")


def plain_id(text):
    """A student id nbgrader and the grader accept: 'Jane Doe-Smith' -> 'jane_doe_smith'."""
    return NOT_AN_ID.sub("_", text.lower()).strip("_")


def split_name(full_name):
    """'Jane Ann Doe' -> ('Jane Ann', 'Doe'): LMSs write the full name first name first."""
    first, _, last = full_name.strip().rpartition(" ")
    return first, last


class LmsCollector(FileNameCollectorPlugin):
    """nbgrader's file name collector for one LMS: `named_regexp` reads the file's path, `describe` turns the
    match into the student's record. Keeps the records of what it collected in `records`."""

    lms = ""
    assignment = None  # set by collect(): the assignment collected, or None to infer it from the file name
    released = ()      # set by collect(): the names of the released assignments

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.records = {}
        self.collected_paths = []

    def describe(self, match, path):
        """{student_id, lms_id, first_name, last_name, late, submitted_at} of a matched file."""
        raise NotImplementedError

    def belongs_here(self, file_name):
        target = self.parent.coursedir.assignment_id
        if self.assignment is not None:
            return True
        owners = [name for name in self.released if file_name.startswith(name)]
        return max(owners, key=len, default=None) == target

    def collect(self, submitted_file):
        info = super().collect(submitted_file)
        if info is None or not self.belongs_here(info["file_id"]):
            return None
        record = self.describe(info, Path(submitted_file))
        record.update(lms=self.lms, file=info["file_id"], assignment=self.parent.coursedir.assignment_id)
        self.records[record["student_id"]] = record
        self.collected_paths.append(submitted_file)
        info = {"student_id": record["student_id"], "file_id": info["file_id"]}
        if record["submitted_at"]:
            info["timestamp"] = record["submitted_at"]
        return info


class CanvasCollector(LmsCollector):
    lms = "canvas"
    named_regexp = (r".*/(?P<login>[^/_]+)(?P<late>_late)?_(?P<user_id>\d+)_(?P<submission_id>\d+)_"
                    r"(?P<file_id>[^/]+)$")

    def describe(self, match, path):
        return {"student_id": f"{plain_id(match['login'])}_{match['user_id']}", "lms_id": match["user_id"],
                "first_name": "", "last_name": match["login"], "late": "yes" if match["late"] else "no",
                "submitted_at": ""}


class MoodleCollector(LmsCollector):
    lms = "moodle"
    named_regexp = r".*/(?P<full_name>[^/]+)_(?P<participant>\d+)_assignsubmission_file_/(?P<file_id>[^/]+)$"

    def describe(self, match, path):
        first, last = split_name(match["full_name"])
        student = plain_id(match["full_name"])
        taken = self.records.get(student)
        if taken is not None and taken["lms_id"] != match["participant"]:  # two students of the same name
            student = f"{student}_{match['participant']}"
        return {"student_id": student, "lms_id": match["participant"], "first_name": first, "last_name": last,
                "late": "", "submitted_at": ""}


class BrightspaceCollector(LmsCollector):
    lms = "brightspace"
    named_regexp = (r".*/(?P<submission>\d+-\d+) - (?P<full_name>.+?) - "
                    r"(?P<date>[A-Z][a-z]{2} \d{1,2}, \d{4} \d{3,4} [AP]M) - (?P<file_id>[^/]+)$")

    def describe(self, match, path):
        first, last = split_name(match["full_name"])
        submitted = datetime.strptime(match["date"], "%b %d, %Y %I%M %p")
        return {"student_id": plain_id(match["full_name"]), "lms_id": match["submission"],
                "first_name": first, "last_name": last, "late": "", "submitted_at": submitted.isoformat()}


class BlackboardCollector(LmsCollector):
    lms = "blackboard"
    named_regexp = (r".*/(?P<prefix>.+_(?P<username>[^_/]+)_attempt_(?P<date>\d{4}(?:-\d\d){5}))_"
                    r"(?P<file_id>[^/]+)$")
    NAME_LINE = re.compile(r"^Name:\s*(?P<full_name>.+?)\s*\((?P<username>[^)]+)\)\s*$", flags=re.MULTILINE)

    def describe(self, match, path):
        receipt = path.with_name(match["prefix"] + ".txt")  # Blackboard's receipt: "Name: Jane Doe (jdoe)", ...
        found = self.NAME_LINE.search(receipt.read_text(errors="replace")) if receipt.is_file() else None
        first, last = split_name(found["full_name"]) if found else ("", match["username"])
        submitted = datetime.strptime(match["date"], "%Y-%m-%d-%H-%M-%S")
        return {"student_id": plain_id(match["username"]), "lms_id": match["username"], "first_name": first,
                "last_name": last, "late": "", "submitted_at": submitted.isoformat()}


COLLECTORS = {collector.lms: collector for collector in
              (CanvasCollector, MoodleCollector, BrightspaceCollector, BlackboardCollector)}


def detect_lms(names):
    """Which LMS wrote a zip with these member names (None when none fits)."""
    for lms, collector in COLLECTORS.items():
        if any(re.match(collector.named_regexp, "/" + name) for name in names if name.endswith(".ipynb")):
            return lms
    return None


def released_assignments(course):
    names = sorted(path.name for path in (course / "release").iterdir() if path.is_dir())
    if not names:
        raise SystemExit(f"No released assignment in {course}/release: run "
                         f"`python -m autograder.release --course {course}` first.")
    return names


def zip_collect(course, assignment, archive, collector):
    """nbgrader zip_collect of one assignment from `archive`, with `collector`; return its records and the
    paths of the files it collected."""
    folder = course / "downloaded" / assignment / "archive"
    shutil.rmtree(folder, ignore_errors=True)  # exactly this download: an older one must not come back
    folder.mkdir(parents=True)
    shutil.copy(archive, folder / archive.name)
    app = ZipCollectApp()
    # nbgrader logs every file of every assignment's pass; collect() reports what matters (what it skipped).
    app.initialize([assignment, "--force", "--log-level=ERROR", f"--CourseDirectory.root={course}"])
    app.collector_plugin = collector
    app.start()
    return list(app.collector_plugin_inst.records.values()), app.collector_plugin_inst.collected_paths


def save_records(course, records):
    """Add `records` to <course>/submissions.csv (replacing the rows of the same assignment and student), and
    the students' names to the gradebook."""
    path = course / RECORDS
    rows = {}
    if path.is_file():
        with path.open(newline="", encoding="utf-8") as file:
            rows = {(row["assignment"], row["student_id"]): row for row in csv.DictReader(file)}
    rows.update({(record["assignment"], record["student_id"]): record for record in records})
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows[key] for key in sorted(rows))
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        for record in records:
            gradebook.update_or_create_student(record["student_id"], first_name=record["first_name"] or None,
                                               last_name=record["last_name"] or None)


def collect(archive, course=COURSE, lms=None, assignment=None):
    """Collect the LMS download `archive` into `course`; return the records of the submissions collected."""
    with zipfile.ZipFile(archive) as opened:
        names = opened.namelist()
    lms = lms or detect_lms(names)
    if lms is None:
        raise SystemExit(f"{archive}: no notebook in it is named as Canvas, Moodle, Brightspace or Blackboard "
                         f"name them (see `python -m autograder.lms.collect --help`); pass --lms if you know which.")
    released = released_assignments(course)
    if assignment is not None and assignment not in released:
        raise SystemExit(f"{assignment} is not released in {course} (released: {', '.join(released)})")
    collector = type(COLLECTORS[lms].__name__, (COLLECTORS[lms],), {"assignment": assignment, "released": released})
    records, paths = [], []
    for name in [assignment] if assignment else released:
        collected = zip_collect(course, name, archive, collector)
        records += collected[0]
        paths += collected[1]
    for member in names:
        if member.endswith(".ipynb") and not any(path.endswith("/" + member) for path in paths):
            print(f"skipped {member}: its name is not laid out as {lms} names submissions, or matches no "
                  f"released assignment ({', '.join(released)}); pass --assignment NAME to collect it into NAME")
    save_records(course, records)
    return records


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("zip", type=Path, help="the submissions as downloaded from the LMS")
    parser.add_argument("--course", type=Path, default=COURSE, help=f"nbgrader course folder (default {COURSE})")
    parser.add_argument("--lms", choices=sorted(COLLECTORS), help="the LMS that wrote the zip (default: detect)")
    parser.add_argument("--assignment", help="collect every notebook of the zip into this assignment "
                        "(default: the released assignment each file name starts with)")
    args = parser.parse_args(argv)
    if not args.zip.is_file():
        sys.exit(f"{args.zip}: no such file; pass the zip you downloaded from the LMS")
    records = collect(args.zip.resolve(), args.course.resolve(), args.lms, args.assignment)
    for record in records:
        late = " (late)" if record["late"] == "yes" else ""
        print(f"collected {record['assignment']} {record['student_id']}: {record['file']}{late}")
    print(f"{len(records)} submissions collected into {args.course / 'submitted'}; records in "
          f"{args.course / RECORDS}. Next: make grade")


if __name__ == "__main__":
    main()
