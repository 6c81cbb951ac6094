"""The example students (autograder/examples/*.yml, `python -m autograder.grading --examples`): their course folder,
the scores each must get, and the summary table that says, for every student graded, whether it got them.
"""
import shutil

import nbformat

from .. import examples as example_submissions
from .. import notebooks
from ..course import nbgrader
from .submission import judges_file, read_files


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
    judges = judges_file(course, notebook)
    judges.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(judges_file(released_in, notebook), judges)
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
    """The table's row of a report row of this batch; with the student's Example, whether it scored as expected."""
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


def is_unexpected(summary):
    return summary[-1].startswith("UNEXPECTED")


def print_table(rows):
    header = ["notebook", "student", "score", "status", "this run", "reason", "check"]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * width for width in widths], *rows]:
        print("  ".join(str(value).ljust(width) for value, width in zip(row, widths)).rstrip())
