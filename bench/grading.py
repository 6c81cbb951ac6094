"""Grading throughput: notebooks per minute of `python -m autograder.grade` on a synthetic course, with the local
process pool and with a Dask cluster of the same size on this machine (`--cluster local`: a scheduler and worker
processes on 127.0.0.1), so that what Dask costs is measured. Every student is sandboxed, as in a real run.

    python -m bench.grading                      # 100 students x 3 parts, 2 workers (the issue's benchmark)
    python -m bench.grading --students 10        # a quick look

The course: the release of build/course (run `make release` first) and, for each part, the example students of
autograder/examples/ copied under new ids (student i of the course is example i mod n). Figures: the grading phase
(from the first job sent to the last result written into the gradebook, summed over the parts), the whole run
(feedback and grades.csv included) and the load average of the machine while it ran.

Scaling on paper. A notebook costs a worker w seconds (about 6 s here on a quiet core, most of it the student's
code and the kernel's start-up) and the coordinator c seconds: writing the result (gradebook through nbgrader's
SaveAutoGrades into SQLite, the autograded notebook, the log, the report) plus its feedback HTML, which the
coordinator still makes with its local pool. N machines with k cores each grade about N*k/w notebooks per second
until that reaches the coordinator's 1/c (or, with feedback made on j local cores, j/c_feedback), so the
speed-up stops at about N*k = w/c. What the grading phase measures here: c_record (the coordinator's part of the
grading phase, serial) and the overhead of Dask per batch (a task is a few kilobytes: the job's source, release and
submission, and one round trip per batch of --batch-size students). SQLite takes one writer at a time, which is
the coordinator anyway; with a PostgreSQL gradebook (nbgrader's CourseDirectory.db_url) the database stops being
a local file, not a faster writer. The limits, in order: the coordinator's feedback, then its recording, then the
shared file system it writes the course folder to; Dask's scheduler (well over a thousand tasks per second) is
not among them for batches of several students taking minutes.
"""
import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import nbformat

from autograder import cluster, examples, grade, notebooks
from autograder.course import COURSE


def synthetic_course(folder, students, parts):
    """A course folder with the release of build/course and `students` submissions per part."""
    for part in ("source", "release"):
        shutil.copytree(COURSE / part, folder / part)
    shutil.copy(COURSE / "gradebook.db", folder / "gradebook.db")
    for notebook in parts:
        release = notebooks.read(COURSE / "release" / notebook / f"{notebook}.ipynb")
        source = notebooks.read(COURSE / "source" / notebook / f"{notebook}.ipynb")
        texts = [nbformat.writes(examples.submission(example, release, source))
                 for example in examples.load_examples(notebook)]
        for index in range(students):
            path = folder / "submitted" / f"student{index:04d}" / notebook / f"{notebook}.ipynb"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(texts[index % len(texts)], encoding="utf-8")


def timed(progress_bar, phases):
    """cluster.progress_bar that also adds each part's grading time (first job sent to last result written)."""
    def timed_progress_bar(results, total, label):
        started = time.perf_counter()
        yield from progress_bar(results, total, label)
        phases.append(time.perf_counter() - started)

    return timed_progress_bar


def run(label, options, folder, students, parts):
    """Grade a fresh synthetic course with grade.py's `options`; return a row of figures."""
    course = folder / label
    synthetic_course(course, students, parts)
    phases, load, progress_bar = [], os.getloadavg()[0], cluster.progress_bar
    cluster.progress_bar = timed(progress_bar, phases)
    started = time.perf_counter()
    try:
        grade.main(["--course", str(course), *parts, *options])
    finally:
        cluster.progress_bar = progress_bar
    total = time.perf_counter() - started
    graded = students * len(parts)
    statuses = [row["status"] for row in grade.read_report(course).values()]
    return (f"{label}: {graded} notebooks ({statuses.count('ok')} ok), grading {sum(phases):.0f} s = "
            f"{60 * graded / sum(phases):.1f} notebooks/min; whole run with feedback {total:.0f} s = "
            f"{60 * graded / total:.1f} notebooks/min; load average {load:.1f} -> {os.getloadavg()[0]:.1f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=100, help="students per part (default %(default)s)")
    parser.add_argument("--parts", nargs="*", default=[source.stem for source in grade.source_notebooks()],
                        help="notebooks to grade (default: all)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="local pool size = Dask worker processes (default: one per core, %(default)s)")
    parser.add_argument("--batch-size", type=int, default=cluster.BATCH_SIZE,
                        help="students per Dask task (default %(default)s)")
    args = parser.parse_args(argv)
    local_cluster = (f"local: {{n_workers: {args.workers}, threads_per_worker: 1, host: 127.0.0.1, "
                     f"dashboard_address: null}}\n")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-grading-") as scratch:
        folder = Path(scratch)
        (folder / "cluster.yml").write_text(local_cluster, encoding="utf-8")
        rows.append(run("local pool", ["--jobs", str(args.workers)], folder, args.students, args.parts))
        rows.append(run("Dask, loopback", ["--cluster", "local", "--cluster-config", str(folder / "cluster.yml"),
                                           "--batch-size", str(args.batch_size)], folder, args.students, args.parts))
    print(f"\n{args.students} students x {len(args.parts)} parts, {args.workers} workers, "
          f"{os.cpu_count()} cores, sandboxed")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
