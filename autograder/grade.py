"""`make grade`: autograde submissions with nbgrader, write grades and feedback, print a table of scores.

    python -m autograder.grade --examples      # the example students of autograder/examples/*.yml
    python -m autograder.grade                 # whatever is in <course>/submitted/<student>/<notebook>/

Each student is autograded by its own nbgrader process with a time limit, so a broken notebook, a crashing or
an endless cell costs that student only, never the batch. Before grading, a submission whose notebook has the
wrong name (the only notebook in its folder, e.g. "part1_vae (1).ipynb") is renamed, and one that is not a
valid notebook is reported. Afterwards: feedback HTML per student and notebook, grades.csv for the course.
With --examples it also checks that every example student scores as its file says, and fails if not.
"""
import argparse
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat

from . import examples as example_submissions
from . import feedback, notebooks
from .course import COURSE, nbgrader, source_notebooks

STUDENT_TIME_LIMIT = 600  # seconds for one student's notebook, all cells together


def released_notebooks(course):
    """The notebooks released in the course folder (run `make release` first)."""
    names = [source.stem for source in source_notebooks()
             if (course / "release" / source.stem / f"{source.stem}.ipynb").is_file()]
    if not names:
        raise SystemExit(f"No released notebooks in {course}/release: run `make release` first.")
    return names


def write_example_submissions(course, notebook):
    """Write the example students' notebooks into the course's submitted/ folder; return the examples."""
    release = notebooks.read(course / "release" / notebook / f"{notebook}.ipynb")
    source = notebooks.read(course / "source" / notebook / f"{notebook}.ipynb")
    examples = example_submissions.load_examples(notebook)
    for example in examples:
        folder = course / "submitted" / example.student / notebook
        shutil.rmtree(folder, ignore_errors=True)
        notebooks.write(example_submissions.submission(example, release, source), folder / f"{notebook}.ipynb")
    return examples


def check_submission(folder, notebook):
    """Fix what can be fixed in one student's submission folder; return a problem to report, or None."""
    expected = folder / f"{notebook}.ipynb"
    if not expected.exists():
        candidates = sorted(folder.glob("*.ipynb"))
        if len(candidates) != 1:
            return (f"no {expected.name} in {folder} (found: {[c.name for c in candidates] or 'nothing'}); "
                    f"ask the student to submit it under that name")
        candidates[0].rename(expected)
        print(f"  note: {folder.parent.name} submitted {candidates[0].name!r}; graded it as {expected.name}")
    try:
        nbformat.validate(nbformat.read(expected, as_version=4))
    except Exception as error:
        return (f"{expected} is not a valid notebook ({type(error).__name__}: {str(error)[:200]}); "
                f"ask the student to resubmit it")
    return None


def autograde_student(course, notebook, student):
    """Autograde one student's notebook in its own nbgrader process; return a problem, or None."""
    try:
        nbgrader("autograde", notebook, f"--student={student}", "--force", course=course,
                 timeout=STUDENT_TIME_LIMIT)
    except TimeoutError:
        return f"autograding took over {STUDENT_TIME_LIMIT} s and was stopped"
    except RuntimeError as error:
        return f"nbgrader could not autograde it: {str(error).splitlines()[-1]}"
    return None


def test_scores(course, notebook, student):
    """{test grade_id: (score, max_score)} of a student's autograded notebook, from the gradebook."""
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        submitted = gradebook.find_submission_notebook(notebook, notebook, student)
        return {grade.name: (grade.score, grade.max_score) for grade in submitted.grades
                if grade.cell.cell_type == "code"}


def grade_student(course, notebook, student):
    """Check and autograde one student's notebook; return (scores or None, problem or None)."""
    started = time.perf_counter()
    problem = (check_submission(course / "submitted" / student / notebook, notebook)
               or autograde_student(course, notebook, student))
    scores = None if problem else test_scores(course, notebook, student)
    print(f"  {notebook} {student}: {time.perf_counter() - started:.1f} s"
          + (f"  PROBLEM: {problem}" if problem else ""), flush=True)
    return scores, problem


def grade_notebook(course, notebook, students=None, jobs=1):
    """Autograde the submissions of one notebook (all, or those of `students`), `jobs` students at a time.

    Returns {student: (scores or None, problem or None)}.
    """
    names = sorted(folder.parent.name for folder in (course / "submitted").glob(f"*/{notebook}"))
    names = [name for name in names if students is None or name in students]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = dict(zip(names, pool.map(lambda student: grade_student(course, notebook, student), names)))
    if any(scores is not None for scores, _ in results.values()):
        feedback.generate(course, notebook)
    return results


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


def summary_row(notebook, student, scores, problem, example=None):
    if scores is None:
        return [notebook, student, "-", problem, ""]
    total = sum(score for score, _ in scores.values())
    maximum = sum(max_score for _, max_score in scores.values())
    lost = [test_id for test_id, (score, max_score) in scores.items() if score < max_score]
    lost = "every test" if len(lost) == len(scores) else ", ".join(lost)
    verdict = ""
    if example is not None:
        problems = expectation_problems(example, scores)
        verdict = "as expected" if not problems else "UNEXPECTED: " + "; ".join(problems)
    return [notebook, student, f"{total:g}/{maximum:g}", lost or "-", verdict]


def print_table(rows):
    header = ["notebook", "student", "tests", "lost points on", "check"]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * width for width in widths], *rows]:
        print("  ".join(str(value).ljust(width) for value, width in zip(row, widths)).rstrip())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", help="notebooks to grade (default: all released)")
    parser.add_argument("--course", type=Path, default=COURSE, help=f"nbgrader course folder (default {COURSE})")
    parser.add_argument("--jobs", type=int, default=os.cpu_count(),
                        help="students autograded at the same time (default: one per CPU core, %(default)s)")
    parser.add_argument("--examples", action="store_true",
                        help="grade the example students of autograder/examples/ and check their scores")
    args = parser.parse_args(argv)
    course = args.course.resolve()
    names = args.notebooks or released_notebooks(course)

    rows, unexpected, started = [], 0, time.perf_counter()
    for notebook in names:
        expected = {}
        if args.examples:
            expected = {example.student: example for example in write_example_submissions(course, notebook)}
        print(f"Autograding {notebook}:")
        results = grade_notebook(course, notebook, expected if args.examples else None, args.jobs)
        for student, (scores, problem) in results.items():
            row = summary_row(notebook, student, scores, problem, expected.get(student))
            unexpected += row[-1].startswith("UNEXPECTED") or (args.examples and scores is None)
            rows.append(row)
    grades = course / "grades.csv"
    nbgrader("export", f"--to={grades}", course=course)

    print()
    print_table(rows)
    print(f"\nAutograded {len(rows)} submissions in {time.perf_counter() - started:.0f} s.")
    print(f"Grades:   {grades}")
    print(f"Feedback: {course / 'feedback'}/<student>/<notebook>/<notebook>.html")
    if unexpected:
        sys.exit(f"{unexpected} example submissions did not score as expected.")


if __name__ == "__main__":
    main()
