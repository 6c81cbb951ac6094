"""Grading benchmarks, run from the repository root after `make release`. The machine's load shows in the
figures: run them on a quiet machine, or compare only figures of one run.

    python -m bench.grading [--jobs 2] [--notebooks part1_vae]
        Wall time of autograding the example students (autograder/examples/*.yml), three ways on the same --jobs,
        and the kernel's memory cap at work:
        per-student nbgrader   one `nbgrader autograde --student` process per student, no sandbox (the grader
                               before the unit: nbgrader's start-up paid for every student)
        unit, no sandbox       autograder.grading.worker processes (nbgrader imported once per worker),
                               --unsafe-no-sandbox
        unit, sandbox          the same, every kernel in the bubblewrap sandbox (the default), forked from the
                               worker's zygote, which has imported torch, numpy, matplotlib and ipykernel once
        It grades in a temporary course folder; grades are not written anywhere.

    python -m bench.grading --throughput [--students 100] [--jobs 2] [--batch-size 5]
        Notebooks per minute of `python -m autograder.grading` on a synthetic course (--students per part: the
        example students copied under new ids, student i being example i mod n), sandboxed, with the local pool
        of --jobs workers and with a Dask cluster of the same size on this machine (`--cluster local`: a
        scheduler and --jobs worker processes on 127.0.0.1), so that what Dask costs shows. Figures: the grading
        phase (first job sent to last result written into the gradebook, summed over the parts), the whole run
        (feedback and grades.csv included), the load average before and after.

Scaling on paper (grading on a cluster). A notebook costs a worker w seconds (about 4.4 s on a quiet core here,
mostly the student's code and the tests, now that kernels are forked from a zygote) and the coordinator c
seconds: writing the result (the gradebook through nbgrader's SaveAutoGrades into SQLite, the autograded notebook,
the log, the report) plus its feedback HTML, which the coordinator makes with its local pool of --jobs
processes. N machines of k cores grade about N*k/w notebooks per second, until that reaches what the coordinator
keeps up with, about 1/c_record for the results (serial, one thread) and jobs/c_feedback for the feedback; past
N*k = w/c adding machines gives nothing.
Dask's own cost is per batch (one task of a few hundred kilobytes: the assignment's source and release and the
batch's submissions, and one round trip), paid once per --batch-size students, and its scheduler handles well
over a thousand tasks a second, so it is not the limit for tasks that take a minute. SQLite takes one writer at a
time, which the coordinator is anyway; a PostgreSQL gradebook would make it a server, not a faster writer. So the
limits, in order: the coordinator's feedback, then its recording of results, then the file system that holds the
course folder. Today the coordinator also grades one notebook (part) after the other and makes that part's feedback
before sending the next part's students, so the cluster waits during the feedback: sending every part at once
is the first thing to change for a large cluster.
"""
import argparse
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import nbformat

from autograder import examples, notebooks
from autograder.course import ASSIGNMENT_FOLDERS, COURSE, nbgrader, source_notebooks
from autograder.grading import cluster, coordinator, expectations, records, submission, worker
from autograder.limits import Limits


def example_jobs(course, names, sandbox, limits=Limits()):
    jobs = []
    for name in names:
        expectations.prepare_examples_course(course, name, COURSE)
        jobs += submission.collect(course, name, limits, sandbox).jobs
    return jobs


def time_units(jobs, workers):
    """Seconds to grade `jobs` on `workers` worker processes; the results."""
    pool = worker.Pool(workers)
    started = time.perf_counter()
    try:
        results = [future.result() for future in [pool.grade(job) for job in jobs]]
    finally:
        pool.close()
    return time.perf_counter() - started, results


def time_nbgrader_per_student(course, jobs, workers):
    """Seconds to grade the same submissions with one nbgrader process per student (the former grader)."""
    def autograde(job):
        nbgrader("autograde", job.assignment, f"--student={job.student}", "--force", course=course)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(autograde, jobs))
    return time.perf_counter() - started


def memory_bomb_job(course, name):
    """The untouched release of `name` whose first code cell allocates 8 GiB, under a 1 GiB limit."""
    release = notebooks.read(course / "release" / name / f"{name}.ipynb")
    first = next(cell for cell in release.cells if cell.cell_type == "code")
    first.source = "hog = [b'x' * 2**26 for _ in range(128)]\n" + first.source
    job = example_jobs(course, [name], True, Limits(memory_bytes=2**30))[0]
    return replace(job, student="memory_bomb", submission={job.notebook: nbformat.writes(release).encode()})


def synthetic_course(folder, students, parts):
    """A course folder with the release of build/course and `students` submissions per part."""
    for part in ASSIGNMENT_FOLDERS:
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
    """coordinator.progress_bar that also adds each part's grading time (first job sent to last result written)."""
    def timed_progress_bar(results, total, label):
        started = time.perf_counter()
        yield from progress_bar(results, total, label)
        phases.append(time.perf_counter() - started)

    return timed_progress_bar


def run(label, options, folder, students, parts):
    """Grade a fresh synthetic course with the coordinator's `options`; return a row of figures."""
    course = folder / label
    synthetic_course(course, students, parts)
    phases, load, progress_bar = [], os.getloadavg()[0], coordinator.progress_bar
    coordinator.progress_bar = timed(progress_bar, phases)
    started = time.perf_counter()
    try:
        coordinator.main(["--course", str(course), *parts, *options])
    finally:
        coordinator.progress_bar = progress_bar
    total = time.perf_counter() - started
    graded = students * len(parts)
    statuses = [row["status"] for row in records.read_report(course).values()]
    return (f"{label}: {graded} notebooks ({statuses.count('ok')} ok), grading {sum(phases):.0f} s = "
            f"{60 * graded / sum(phases):.1f} notebooks/min; whole run with feedback {total:.0f} s = "
            f"{60 * graded / total:.1f} notebooks/min; load average {load:.1f} -> {os.getloadavg()[0]:.1f}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.grading", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2, help="students graded at the same time (default 2)")
    parser.add_argument("--notebooks", nargs="*", default=[source.stem for source in source_notebooks()])
    parser.add_argument("--throughput", action="store_true",
                        help="notebooks per minute, local pool and Dask, on a synthetic course")
    parser.add_argument("--students", type=int, default=100, help="with --throughput: students per part")
    parser.add_argument("--batch-size", type=int, default=cluster.BATCH_SIZE,
                        help="with --throughput: students per Dask task (default %(default)s)")
    args = parser.parse_args(argv)
    if args.throughput:
        throughput(args)
    else:
        unit_timings(args)


def throughput(args):
    """Notebooks per minute of the coordinator on a synthetic course, with the local pool and with a loopback Dask cluster."""
    local_cluster = (f"local: {{n_workers: {args.jobs}, threads_per_worker: 1, host: 127.0.0.1, "
                     f"dashboard_address: '127.0.0.1:0'}}\n")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-grading-") as scratch:
        folder = Path(scratch)
        (folder / "cluster.yml").write_text(local_cluster, encoding="utf-8")
        rows.append(run("local pool", ["--jobs", str(args.jobs)], folder, args.students, args.notebooks))
        dask_options = ["--cluster", "local", "--cluster-config", str(folder / "cluster.yml"),
                        "--batch-size", str(args.batch_size)]
        rows.append(run("Dask, loopback", dask_options, folder, args.students, args.notebooks))
    print(f"\n{args.students} students x {len(args.notebooks)} parts, {args.jobs} workers, {os.cpu_count()} cores, "
          f"sandboxed")
    print("\n".join(rows))


def unit_timings(args):
    """The example students graded three ways (per-student nbgrader, unit, unit sandboxed); the memory cap."""
    with tempfile.TemporaryDirectory() as scratch:
        course = Path(scratch) / "course"
        count = len(example_jobs(course, args.notebooks, True))
        print(f"{count} example submissions of {', '.join(args.notebooks)}, --jobs {args.jobs}")
        seconds = {"per-student nbgrader": time_nbgrader_per_student(course, example_jobs(course, args.notebooks,
                                                                                            False), args.jobs)}
        for label, sandbox in (("unit, no sandbox", False), ("unit, sandbox", True)):
            seconds[label], results = time_units(example_jobs(course, args.notebooks, sandbox), args.jobs)
            statuses = sorted({result.status for result in results})
            print(f"  {label}: statuses {statuses}")
        for label, value in seconds.items():
            print(f"{label:22s} {value:7.1f} s in all, {value / count * args.jobs:5.1f} s per notebook per job")
        print(f"the sandboxed unit (kernels forked from a zygote) against the unsandboxed one (fresh kernels): "
              f"{seconds['unit, sandbox'] / seconds['unit, no sandbox']:.2f}x the time; against the former "
              f"per-student nbgrader: {seconds['per-student nbgrader'] / seconds['unit, sandbox']:.2f}x faster")

        _, (bomb,) = time_units([memory_bomb_job(course, args.notebooks[0])], 1)
        print(f"memory bomb (8 GiB asked, 1 GiB limit): status {bomb.status}, reason {bomb.reason!r}, "
              f"{bomb.seconds:.1f} s")


if __name__ == "__main__":
    main()
