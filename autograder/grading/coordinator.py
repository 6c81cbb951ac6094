"""`make grade`: autograde a course's submissions, every student sandboxed, and write grades, feedback, a report.

    python -m autograder.grading --examples      # the example students of autograder/examples/*.yml, in build/examples
    python -m autograder.grading                 # whatever is in <course>/submitted/<student>/<notebook>/
    options: --course FOLDER, --jobs N, --force, --unsafe-no-sandbox, limits (see --help)

This process is the coordinator: it alone writes the course folder. It collects one job per student and notebook
(student ids checked, files read without following links), skips those graded before with the same notebook
and release, and grades the rest with autograder.grading.unit on --jobs worker processes (each student in a private
course, its kernel sandboxed). Each result is checked (its test cells must be the source's) before it goes into
the gradebook (nbgrader's Gradebook and SaveAutoGrades), autograded/, logs/<student>/<notebook>.log and
grading_report.csv (one row per student and notebook: score, max, status ok / flagged / failed, reason). A
flagged student's score is withheld: every test cell gets a manual score of 0 for an instructor to review in the
formgrader. Then feedback per student, under its own time limit, and the summary table.
"""
import argparse
import csv
import io
import itertools
import os
import re
import shutil
import sqlite3
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import nbformat

from .. import examples as example_submissions
from .. import notebooks
from ..course import COURSE, EXAMPLES_COURSE, nbgrader, source_notebooks
from ..lms import export
from ..lms.feedback import install_mathjax
from . import cluster, unit

STUDENT_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
REPORT_FIELDS = ["student", "notebook", "score", "max", "status", "reason", "submission_hash", "release_hash"]
FEEDBACK_SECONDS = 120

# nbgrader's Gradebook.update_or_create_submission warns about its own session handling; the rows are right.
warnings.filterwarnings("ignore", message="Object of type <Submitted", module="nbgrader")


# ---------------------------------------------------------------------------------------------------------------
# Jobs

def released_notebooks(course):
    """The notebooks released in the course folder (run `make release` first)."""
    names = [source.stem for source in source_notebooks()
             if (course / "release" / source.stem / f"{source.stem}.ipynb").is_file()]
    if not names:
        raise SystemExit(f"No released notebooks in {course}/release: run `make release` first.")
    return names


def read_files(folder, pattern="*"):
    """{relative path: bytes} of the regular files below `folder` matching `pattern`, never following a link;
    and the names of the links found instead."""
    files, links = {}, []
    for path in sorted(folder.rglob(pattern)):
        if path.is_symlink():
            links.append(str(path.relative_to(folder)))
        elif path.is_file():
            descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(descriptor, "rb") as file:
                files[str(path.relative_to(folder))] = file.read(unit.SUBMISSION_SIZE_LIMIT + 1)
    return files, links


def submitted_notebook(folder, notebook):
    """({f"{notebook}.ipynb": bytes} or {}, notes): the notebook a student submitted, read without following
    links; a lone notebook under another name (e.g. "part1_vae (1).ipynb") counts as it."""
    files, links = read_files(folder, "*.ipynb")
    expected = f"{notebook}.ipynb"
    if expected in links:
        raise unit.Refused(f"{expected} is a symbolic link, not a notebook file; ask the student to upload the "
                           f"notebook itself")
    if expected not in files and len(files) == 1:
        (name, data), = files.items()
        return {expected: data}, [f"submitted {name!r}; graded it as {expected}"]
    return ({expected: files[expected]} if expected in files else files), []


def refused(notebook, student, reason, submission=None):
    """The failed result of a submission refused before grading."""
    job = {"assignment": notebook, "student": student, "source": {}, "release": {}, "submission": submission or {}}
    return unit.new_result(job, reason=reason, log=reason)


def collect(course, notebook, limits, sandbox):
    """(jobs, refused results) for every student folder with a `notebook` folder in <course>/submitted/."""
    source, _ = read_files(course / "source" / notebook)
    release, _ = read_files(course / "release" / notebook)
    jobs, failures = [], []
    for folder in sorted((course / "submitted").glob(f"*/{glob_escape(notebook)}")):
        student = folder.parent.name
        if not STUDENT_ID.fullmatch(student):
            failures.append(refused(notebook, student, f"student id {student!r} is not a plain id (letters, "
                                                        f"digits, _ . -); rename its folder in submitted/"))
            continue
        if folder.is_symlink() or folder.parent.is_symlink():
            failures.append(refused(notebook, student, f"submitted/{student}/{notebook} is a symbolic link, not a "
                                                        f"folder; copy the student's files in instead"))
            continue
        try:
            submission, notes = submitted_notebook(folder, notebook)
        except unit.Refused as refusal:
            failures.append(refused(notebook, student, str(refusal)))
            continue
        jobs.append({"assignment": notebook, "student": student, "source": source, "release": release,
                     "submission": submission, "limits": limits, "sandbox": sandbox, "hidden": [str(course)],
                     "notes": notes})
    return jobs, failures


def glob_escape(name):
    return re.sub(r"([*?\[])", r"[\1]", name)


# ---------------------------------------------------------------------------------------------------------------
# The course folder: report, gradebook, autograded notebooks, logs

def read_report(course):
    """{(student, notebook): row} of <course>/grading_report.csv."""
    path = course / "grading_report.csv"
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as file:
        return {(row["student"], row["notebook"]): row for row in csv.DictReader(file)}


def write_report(course, report):
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=REPORT_FIELDS)
    writer.writeheader()
    writer.writerows(sorted(report.values(), key=lambda row: (row["notebook"], row["student"])))
    partial = course / "grading_report.csv.partial"
    partial.write_text(text.getvalue(), encoding="utf-8")
    partial.replace(course / "grading_report.csv")  # a batch killed here keeps the old report or the new one


def report_row(result, maximum):
    withheld = result["status"] != "ok"
    return {"student": result["student"], "notebook": result["assignment"],
            "score": "" if withheld else f"{sum(score for score, _ in result['scores'].values()):g}",
            "max": f"{maximum:g}", "status": result["status"], "reason": result["reason"],
            "submission_hash": result["submission_hash"], "release_hash": result["release_hash"]}


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


def test_cells_differ(autograded, source):
    """The test cells whose code in the returned notebook is not the source's (empty when all are)."""
    returned = unit.test_cells(autograded)
    return [grade_id for grade_id, cell in unit.test_cells(source).items()
            if grade_id not in returned or returned[grade_id].source != cell.source]


def checked(result, source):
    """The result, or a failed one when its notebook's test cells or scores are not those of the source."""
    if result["autograded"] is None:
        return result
    autograded = nbformat.reads(result["autograded"].decode(), as_version=4)
    differ = test_cells_differ(autograded, source)
    if differ or set(result["scores"]) != set(unit.test_cells(source)):
        reason = f"grader returned test cells that are not the assignment's ({', '.join(differ) or 'scores'})"
        return {**result, "status": "failed", "reason": reason, "autograded": None, "scores": {}}
    return result


def save_to_gradebook(course, result, timestamp):
    """Write a checked result into the course's gradebook with nbgrader's own SaveAutoGrades; a flagged
    submission's tests get a manual score of 0, for review; a failed one keeps no grades."""
    from nbgrader.api import Gradebook, MissingEntry
    from nbgrader.preprocessors import SaveAutoGrades

    assignment, student = result["assignment"], result["student"]
    with Gradebook(gradebook_url(course)) as gradebook:
        gradebook.update_or_create_student(student)
        if result["autograded"] is None:
            try:
                gradebook.remove_submission(assignment, student)
            except MissingEntry:
                pass
            return
        gradebook.update_or_create_submission(assignment, student, **({"timestamp": timestamp} if timestamp else {}))
    autograded = nbformat.reads(result["autograded"].decode(), as_version=4)
    resources = {"nbgrader": {"db_url": gradebook_url(course), "assignment": assignment, "notebook": assignment,
                              "student": student}}
    SaveAutoGrades().preprocess(autograded, resources)
    with Gradebook(gradebook_url(course)) as gradebook:
        for grade_id in result["scores"]:
            grade = gradebook.find_grade(grade_id, assignment, assignment, student)
            if result["status"] == "flagged":
                grade.manual_score, grade.needs_manual_grade = 0, True
            elif grade.auto_score != result["scores"][grade_id][0]:
                raise RuntimeError(f"{student} {grade_id}: nbgrader scores {grade.auto_score}, the unit said "
                                   f"{result['scores'][grade_id][0]}")
        gradebook.db.commit()


def record(course, result, source, timestamp, notes):
    """Check one result and write it into the course folder: gradebook, autograded/, logs/; return the result."""
    assignment, student = result["assignment"], result["student"]
    result = checked(result, source)
    if STUDENT_ID.fullmatch(student):
        autograded = course / "autograded" / student / assignment
        shutil.rmtree(autograded, ignore_errors=True)
        shutil.rmtree(course / "feedback" / student / assignment, ignore_errors=True)
        if result["autograded"] is not None:
            autograded.mkdir(parents=True)
            (autograded / f"{assignment}.ipynb").write_bytes(result["autograded"])
        save_to_gradebook(course, result, timestamp)
        log = course / "logs" / student / f"{assignment}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("\n".join([*notes, f"status: {result['status']}", f"reason: {result['reason']}",
                                  f"seconds: {result['seconds']:.1f}", "", result["log"]]), encoding="utf-8")
    return result


def submission_timestamp(course, student, assignment):
    path = course / "submitted" / student / assignment / "timestamp.txt"
    if STUDENT_ID.fullmatch(student) and path.is_file() and not path.is_symlink():
        return path.read_text(encoding="utf-8").strip()[:100] or None
    return None


# ---------------------------------------------------------------------------------------------------------------
# The batch

class Pool:
    """`jobs` threads, each driving its own unit.Worker process (start-up paid once per thread, not per student)."""

    def __init__(self, jobs):
        self.executor = ThreadPoolExecutor(max_workers=jobs)
        self.local = threading.local()
        self.workers = []

    def worker(self):
        if not hasattr(self.local, "worker"):
            self.local.worker = unit.Worker()
            self.workers.append(self.local.worker)
        return self.local.worker

    def submit(self, method, *arguments):
        return self.executor.submit(lambda: getattr(self.worker(), method)(*arguments))

    def map_batches(self, jobs):
        """The results of `jobs`, as they finish (the interface of cluster.DaskExecutor)."""
        return (future.result() for future in as_completed([self.submit("grade", job) for job in jobs]))

    def close(self):
        self.executor.shutdown()
        for worker in self.workers:
            worker.close()


def grade_course(course, notebook_names, pool, limits, sandbox, force, feedback_seconds, students=None,
                 executor=None):
    """Grade what is new in the course (of `students`, or everyone) on `executor` (default: `pool`, which also
    makes the feedback); return the report rows of this batch, each with 'done': graded or skipped."""
    report = read_report(course)
    rows = []
    for notebook in notebook_names:
        source = notebooks.read(course / "source" / notebook / f"{notebook}.ipynb")
        maximum = sum(cell.metadata.nbgrader.points for cell in unit.test_cells(source).values())
        jobs, failures = collect(course, notebook, limits, sandbox)
        if students:
            jobs = [job for job in jobs if job["student"] in students]
            failures = [result for result in failures if result["student"] in students]
        fresh = [job for job in jobs if force or not unchanged(report.get((job["student"], notebook)), job)]
        skipped = [report[(job["student"], notebook)] for job in jobs if all(job is not new for new in fresh)]
        print(f"Autograding {notebook}: {len(fresh)} submissions, {len(skipped)} unchanged since their last "
              f"grading (skipped), {len(failures)} refused", flush=True)
        rows += [{**row, "done": "skipped"} for row in skipped]
        notes = {job["student"]: job.pop("notes") for job in jobs}
        graded = cluster.progress_bar((executor or pool).map_batches(fresh), len(fresh), notebook)
        for result in itertools.chain(failures, graded):
            student = result["student"]
            result = record(course, result, source, submission_timestamp(course, student, notebook),
                            notes.get(student, []))
            row = report_row(result, maximum)
            report[(student, notebook)] = row
            write_report(course, report)
            rows.append({**row, "done": "graded", "scores": result["scores"]})
            print(f"  {notebook} {student}: {result['status']} {result['seconds']:.1f} s"
                  + (f"  {result['reason']}" if result["reason"] else ""), flush=True)
        feedback = {row["student"]: pool.submit("feedback", course, notebook, row["student"], feedback_seconds)
                    for row in rows if row["notebook"] == notebook and row["done"] == "graded"
                    and row["status"] == "ok"}
        for student, future in feedback.items():
            if problem := future.result():
                row = report[(student, notebook)]
                row["reason"] = "; ".join(filter(None, [row["reason"], problem]))
                print(f"  {notebook} {student}: {problem}")
        if feedback:
            install_mathjax(course)  # the feedback pages load it from <course>/feedback/mathjax/
        write_report(course, report)
    return rows


def unchanged(row, job):
    return (row is not None and row["submission_hash"] == unit.content_hash(job["submission"])
            and row["release_hash"] == unit.release_hash(job))


def check_sandbox(unsafe):
    if unsafe:
        print("WARNING: --unsafe-no-sandbox: students' code runs with your rights and can read the solutions, "
              "the gradebook and other students' work. Use it for trusted submissions only.")
        return
    try:
        from ..sandbox import kernelspec as sandbox

        sandbox.check_available()
    except Exception as error:  # ImportError or sandbox.SandboxUnavailable: say why either way
        raise SystemExit(f"Refusing to grade without the sandbox: {error}\nStudents' code would run with your "
                         f"rights and could read the solutions, hidden tests and gradebook, or change them. "
                         f"Install bubblewrap (`apt-get install bubblewrap`), or, for trusted submissions only, "
                         f"pass --unsafe-no-sandbox.") from None


# ---------------------------------------------------------------------------------------------------------------
# The example students and the summary

def prepare_examples_course(course, notebook, released_in):
    """Copy the assignment from the course folder `released_in` (built by `make release`) into the examples
    course when it changed, and write the example students' submissions; return the examples."""
    source, release = released_in / "source" / notebook, released_in / "release" / notebook
    if not release.is_dir():
        raise SystemExit(f"No {notebook} in {released_in}/release: run `make release` first.")
    if read_files(source)[0] != read_files(course / "source" / notebook)[0]:
        shutil.rmtree(course / "source" / notebook, ignore_errors=True)
        shutil.copytree(source, course / "source" / notebook)
        nbgrader("generate_assignment", notebook, "--force", course=course)
    released = notebooks.read(release / f"{notebook}.ipynb")
    solved = notebooks.read(source / f"{notebook}.ipynb")
    examples = example_submissions.load_examples(notebook)
    for example in examples:
        path = course / "submitted" / example.student / notebook / f"{notebook}.ipynb"
        text = nbformat.writes(example_submissions.submission(example, released, solved)) + "\n"
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    return examples


def expectation_problems(example, scores):
    """How an example student's scores differ from what its file says (empty when as expected)."""
    problems = []
    for test_id, (score, max_score) in scores.items():
        if example.expected_full(test_id) and score < max_score:
            problems.append(f"{test_id} scored {score:g}/{max_score:g}, expected full marks")
        if not example.expected_full(test_id) and score >= max_score:
            problems.append(f"{test_id} scored full marks, expected to lose points")
    problems += [f"{test_id} is not a test cell" for test_id in example.loses if test_id not in scores]
    return problems


def summary_row(row, example=None):
    scores = row.get("scores", {})
    lost = [test_id for test_id, (score, max_score) in scores.items() if score < max_score]
    lost = "every test" if scores and len(lost) == len(scores) else ", ".join(lost)
    verdict = ""
    if example is not None and row["done"] == "graded":
        problems = (expectation_problems(example, scores) if row["status"] == "ok"
                    else [f"status {row['status']}: {row['reason']}"])
        verdict = "as expected" if not problems else "UNEXPECTED: " + "; ".join(problems)
    score = f"{row['score']}/{row['max']}" if row["score"] else f"-/{row['max']}"
    return [row["notebook"], row["student"], score, row["status"], row["done"],
            "; ".join(filter(None, [row["reason"], lost and f"lost points on {lost}"])), verdict]


def print_table(rows):
    header = ["notebook", "student", "score", "status", "this run", "reason", "check"]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * width for width in widths], *rows]:
        print("  ".join(str(value).ljust(width) for value, width in zip(row, widths)).rstrip())


def parse_arguments(argv):
    parser = argparse.ArgumentParser(prog="python -m autograder.grading", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", help="notebooks to grade (default: all released)")
    parser.add_argument("--course", type=Path, help=f"nbgrader course folder (default {COURSE}, with "
                                                    f"--examples {EXAMPLES_COURSE})")
    parser.add_argument("--examples", action="store_true",
                        help="grade the example students of autograder/examples/ and check their scores")
    parser.add_argument("--released-in", type=Path, default=COURSE,
                        help=f"with --examples: the course folder of `make release` (default {COURSE})")
    parser.add_argument("--student", action="append", help="grade only this student (repeat for more)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count(),
                        help="students graded at the same time (default: one per CPU core, %(default)s)")
    parser.add_argument("--force", action="store_true", help="grade again what was graded before, unchanged")
    parser.add_argument("--unsafe-no-sandbox", action="store_true",
                        help="run students' code without the sandbox (trusted submissions only)")
    defaults = unit.Limits()
    parser.add_argument("--memory-gib", type=float, default=defaults.memory_bytes / 2**30,
                        help="memory of one student's kernel (default %(default)s GiB)")
    parser.add_argument("--cell-seconds", type=int, default=defaults.cell_seconds,
                        help="wall time of one cell (default %(default)s s)")
    parser.add_argument("--notebook-seconds", type=int, default=defaults.notebook_seconds,
                        help="wall time of one student's notebook (default %(default)s s)")
    parser.add_argument("--feedback-seconds", type=int, default=FEEDBACK_SECONDS,
                        help="wall time of one student's feedback (default %(default)s s)")
    cluster.add_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_arguments(argv)
    course = (args.course or (EXAMPLES_COURSE if args.examples else COURSE)).resolve()
    check_sandbox(args.unsafe_no_sandbox)
    names = args.notebooks or released_notebooks(args.released_in if args.examples else course)
    limits = {"memory_bytes": int(args.memory_gib * 2**30), "cell_seconds": args.cell_seconds,
              "notebook_seconds": args.notebook_seconds}
    course.mkdir(parents=True, exist_ok=True)
    check_gradebook(course)
    expected = {}
    for notebook in names if args.examples else []:
        expected |= {(example.student, notebook): example
                     for example in prepare_examples_course(course, notebook, args.released_in.resolve())}
    back_up_gradebook(course)

    started, pool = time.perf_counter(), Pool(args.jobs)
    executor = cluster.executor_from(args, sandbox=not args.unsafe_no_sandbox)
    try:
        rows = grade_course(course, names, pool, limits, not args.unsafe_no_sandbox, args.force,
                            args.feedback_seconds, args.student, executor)
    finally:
        pool.close()
        if executor is not None:
            executor.close()
    check_gradebook(course)
    grades = course / "grades.csv"
    if args.examples:
        nbgrader("export", f"--to={grades}", course=course)
    else:  # real students only, with the LMS's columns and files (autograder/lms/export.py)
        export.export(course)

    table = [summary_row(row, expected.get((row["student"], row["notebook"]))) for row in rows]
    print()
    print_table(table)
    graded = sum(row["done"] == "graded" for row in rows)
    print(f"\nGraded {graded} submissions, skipped {len(rows) - graded} unchanged ones (--force grades them "
          f"again), in {time.perf_counter() - started:.0f} s.")
    print(f"Report:   {course / 'grading_report.csv'}  (logs: {course / 'logs'}/<student>/<notebook>.log)")
    print(f"Grades:   {grades}")
    print(f"Feedback: {course / 'feedback'}/<student>/<notebook>/<notebook>.html")
    unexpected = sum(row[-1].startswith("UNEXPECTED") for row in table)
    if unexpected:
        sys.exit(f"{unexpected} example submissions did not score as expected.")


if __name__ == "__main__":
    main()
