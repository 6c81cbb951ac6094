"""`make grade`: autograde a course's submissions, every student sandboxed, and write grades, feedback, a report.

    python -m autograder.grading --examples      # the example students of autograder/examples/*.yml, in build/examples
    python -m autograder.grading                 # whatever is in <course>/submitted/<student>/<notebook>/
    options: --course FOLDER, --jobs N, --force, --unsafe-no-sandbox, limits (see --help)

This process is the coordinator: it alone writes the course folder. Per notebook, it collects one job per student
(submission.py), skips those graded before with the same notebook and release (grading_report.csv says), and
grades the rest on --jobs worker processes (worker.py; each student in a private course, its kernel sandboxed:
unit.py) or on a Dask cluster (cluster.py). It records each result (records.py: gradebook, autograded/, logs/,
grading_report.csv), then makes the feedback of each student graded ok, under its own time limit, and prints
the summary table; with --examples, it also checks that every example student scored as expected
(expectations.py).
"""
import argparse
import itertools
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .. import notebooks
from ..course import COURSE, EXAMPLES_COURSE, nbgrader, source_notebooks
from ..limits import FEEDBACK_SECONDS, Limits
from ..lms import export
from ..lms.feedback import install_mathjax
from . import cluster, expectations, records, submission, worker


@dataclass
class Batch:
    """What one run grades, and where: the course folder, the run's options, the local worker pool (which also
    makes the feedback) and the executor that grades the jobs (the pool, or a cluster.DaskExecutor)."""
    course: Path
    limits: Limits
    sandbox: bool
    force: bool  # grade again what was graded before, unchanged
    feedback_seconds: int
    students: list  # grade only these (--student); empty for everyone
    pool: worker.Pool
    executor: object  # map_batches(jobs) yields their results as they finish

    def wants(self, student):
        return not self.students or student in self.students


def grade_course(batch, notebook_names):
    """Grade what is new in the course; return the report rows of this batch, each with 'done': graded or
    skipped."""
    report = records.read_report(batch.course)
    return [row for notebook in notebook_names for row in grade_notebook(batch, notebook, report)]


def grade_notebook(batch, notebook, report):
    """Grade one notebook's new submissions, recording each result as it comes, then their feedback; update
    `report` (and grading_report.csv) and return this batch's rows."""
    source = notebooks.read(batch.course / "source" / notebook / f"{notebook}.ipynb")
    maximum = sum(cell.metadata.nbgrader.points for cell in notebooks.test_cells(source).values())
    found = submission.collect(batch.course, notebook, batch.limits, batch.sandbox)
    refused = [result for result in found.refused if batch.wants(result.student)]
    fresh, skipped = [], []
    for job in (job for job in found.jobs if batch.wants(job.student)):
        row = report.get((job.student, notebook))
        if batch.force or not records.graded_before(row, job):
            fresh.append(job)
        else:
            skipped.append({**row, "done": "skipped"})
    print(f"Autograding {notebook}: {len(fresh)} submissions, {len(skipped)} unchanged since their last "
          f"grading (skipped), {len(refused)} refused", flush=True)
    rows = skipped
    graded = progress_bar(batch.executor.map_batches(fresh), len(fresh), notebook)
    for result in itertools.chain(refused, graded):
        timestamp = records.submission_timestamp(batch.course, result.student, notebook)
        result = records.record(batch.course, result, source, timestamp, found.notes.get(result.student, []))
        report[(result.student, notebook)] = row = records.report_row(result, maximum)
        records.write_report(batch.course, report)
        rows.append({**row, "done": "graded", "scores": result.scores})
        print(f"  {notebook} {result.student}: {result.status} {result.seconds:.1f} s"
              + (f"  {result.reason}" if result.reason else ""), flush=True)
    write_feedback(batch, notebook, report, [row["student"] for row in rows
                                             if row["done"] == "graded" and row["status"] == "ok"])
    records.write_report(batch.course, report)  # with the feedback's problems
    return rows


def progress_bar(results, total, label):
    """Yield `results`, with a progress bar on a terminal: students done, ok, failed, flagged, time left."""
    counts = dict.fromkeys(["ok", "failed", "flagged"], 0)
    with tqdm(total=total, desc=label, unit="student", disable=None, leave=False) as bar:
        for result in results:
            counts[result.status] += 1
            bar.set_postfix(counts, refresh=False)
            bar.update()
            with tqdm.external_write_mode():  # what the caller prints while it holds the result goes above the bar
                yield result


def write_feedback(batch, notebook, report, students):
    """nbgrader's feedback for `students` on the local pool, each under its time limit; a problem goes into the
    student's reason in `report`."""
    futures = {student: batch.pool.feedback(batch.course, notebook, student, batch.feedback_seconds)
               for student in students}
    for student, future in futures.items():
        if problem := future.result():
            row = report[(student, notebook)]
            row["reason"] = "; ".join(filter(None, [row["reason"], problem]))
            print(f"  {notebook} {student}: {problem}")
    if futures:
        install_mathjax(batch.course)  # the feedback pages load it from <course>/feedback/mathjax/


def released_notebooks(course):
    """The notebooks released in the course folder (run `make release` first)."""
    names = [source.stem for source in source_notebooks()
             if (course / "release" / source.stem / f"{source.stem}.ipynb").is_file()]
    if not names:
        raise SystemExit(f"No released notebooks in {course}/release: run `make release` first.")
    return names


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


def parse_arguments(argv):
    parser = argparse.ArgumentParser(prog="python -m autograder.grading", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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
    parser.add_argument("--memory-gib", type=float, default=Limits.memory_bytes / 2**30,
                        help="memory of one student's kernel (default %(default)s GiB)")
    parser.add_argument("--cell-seconds", type=int, default=Limits.cell_seconds,
                        help="wall time of one cell (default %(default)s s)")
    parser.add_argument("--notebook-seconds", type=int, default=Limits.notebook_seconds,
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
    course.mkdir(parents=True, exist_ok=True)
    records.check_gradebook(course)
    expected = {}
    for notebook in names if args.examples else []:
        expected |= {(example.student, notebook): example for example in
                     expectations.prepare_examples_course(course, notebook, args.released_in.resolve())}
    records.back_up_gradebook(course)

    started, pool = time.perf_counter(), worker.Pool(args.jobs)
    executor = cluster.executor_from(args, sandbox=not args.unsafe_no_sandbox)
    limits = Limits(memory_bytes=int(args.memory_gib * 2**30), cell_seconds=args.cell_seconds,
                    notebook_seconds=args.notebook_seconds)
    try:
        batch = Batch(course, limits, sandbox=not args.unsafe_no_sandbox, force=args.force,
                      feedback_seconds=args.feedback_seconds, students=args.student or [], pool=pool,
                      executor=executor or pool)
        rows = grade_course(batch, names)
    finally:
        pool.close()
        if executor is not None:
            executor.close()
    records.check_gradebook(course)
    grades = course / "grades.csv"
    if args.examples:
        nbgrader("export", f"--to={grades}", course=course)
    else:  # real students only, with the LMS's columns and files (autograder/lms/export.py)
        export.export(course)

    table = [expectations.summary_row(row, expected.get((row["student"], row["notebook"]))) for row in rows]
    print()
    expectations.print_table(table)
    graded = sum(row["done"] == "graded" for row in rows)
    print(f"\nGraded {graded} submissions, skipped {len(rows) - graded} unchanged ones (--force grades them "
          f"again), in {time.perf_counter() - started:.0f} s.")
    print(f"Report:   {course / 'grading_report.csv'}  (logs: {course / 'logs'}/<student>/<notebook>.log)")
    print(f"Grades:   {grades}")
    print(f"Feedback: {course / 'feedback'}/<student>/<notebook>/<notebook>.html")
    unexpected = sum(map(expectations.is_unexpected, table))
    if unexpected:
        sys.exit(f"{unexpected} example submissions did not score as expected.")


if __name__ == "__main__":
    main()
