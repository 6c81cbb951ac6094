"""Grading benchmark: wall time of autograding the example students (autograder/examples/*.yml), three ways on
the same --jobs, and the kernel's memory cap at work.

    per-student nbgrader   one `nbgrader autograde --student` process per student, no sandbox (the grader before
                           the unit: nbgrader's start-up paid for every student)
    unit, no sandbox       autograder.unit workers (nbgrader imported once per worker), --unsafe-no-sandbox
    unit, sandbox          the same, every kernel in the bubblewrap sandbox (the default)

Run from the repository root after `make release`:  python -m bench.grading [--jobs 2] [--notebooks part1_vae]
It grades in a temporary course folder; grades are not written anywhere. The machine's load shows in the
figures: run it on a quiet machine, or compare only figures of one run.
"""
import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat

from autograder import grade, notebooks, unit
from autograder.course import COURSE, nbgrader, source_notebooks


def example_jobs(course, names, sandbox, limits):
    jobs = []
    for name in names:
        grade.prepare_examples_course(course, name, COURSE)
        jobs += grade.collect(course, name, limits, sandbox)[0]
    for job in jobs:
        job.pop("notes")
    return jobs


def time_units(jobs, workers):
    """Seconds to grade `jobs` on `workers` unit workers; the results."""
    pool = grade.Pool(workers)
    started = time.perf_counter()
    try:
        results = [future.result() for future in [pool.submit("grade", job) for job in jobs]]
    finally:
        pool.close()
    return time.perf_counter() - started, results


def time_nbgrader_per_student(course, jobs, workers):
    """Seconds to grade the same submissions with one nbgrader process per student (the former grader)."""
    def autograde(job):
        nbgrader("autograde", job["assignment"], f"--student={job['student']}", "--force", course=course)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(autograde, jobs))
    return time.perf_counter() - started


def memory_bomb_job(course, name):
    """The untouched release of `name` whose first code cell allocates 8 GiB, under a 1 GiB limit."""
    release = notebooks.read(course / "release" / name / f"{name}.ipynb")
    first = next(cell for cell in release.cells if cell.cell_type == "code")
    first.source = "hog = [b'x' * 2**26 for _ in range(128)]\n" + first.source
    job = example_jobs(course, [name], True, {"memory_bytes": 2**30})[0]
    return {**job, "student": "memory_bomb", "submission": {f"{name}.ipynb": nbformat.writes(release).encode()}}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.grading", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2, help="students graded at the same time (default 2)")
    parser.add_argument("--notebooks", nargs="*", default=[source.stem for source in source_notebooks()])
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        course = Path(scratch) / "course"
        count = len(example_jobs(course, args.notebooks, True, {}))
        print(f"{count} example submissions of {', '.join(args.notebooks)}, --jobs {args.jobs}")
        seconds = {"per-student nbgrader": time_nbgrader_per_student(course, example_jobs(course, args.notebooks,
                                                                                            False, {}), args.jobs)}
        for label, sandbox in (("unit, no sandbox", False), ("unit, sandbox", True)):
            seconds[label], results = time_units(example_jobs(course, args.notebooks, sandbox, {}), args.jobs)
            statuses = sorted({result["status"] for result in results})
            print(f"  {label}: statuses {statuses}")
        for label, value in seconds.items():
            print(f"{label:22s} {value:7.1f} s in all, {value / count * args.jobs:5.1f} s per notebook per job")
        print(f"sandbox overhead: {seconds['unit, sandbox'] / seconds['unit, no sandbox'] - 1:+.0%}; "
              f"start-up work: {seconds['per-student nbgrader'] / seconds['unit, sandbox']:.2f}x faster "
              f"(sandboxed) than the former per-student nbgrader")

        _, (bomb,) = time_units([memory_bomb_job(course, args.notebooks[0])], 1)
        print(f"memory bomb (8 GiB asked, 1 GiB limit): status {bomb['status']}, reason {bomb['reason']!r}, "
              f"{bomb['seconds']:.1f} s")


if __name__ == "__main__":
    main()
