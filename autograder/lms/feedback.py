"""Feedback that teaches without giving the tests away: the steps that nbgrader_config.py adds to nbgrader's
`generate_feedback`, and `python -m autograder.lms.feedback` (`make feedback`) to write the feedback again once the
written answers are graded.

    HideHiddenTests      a test cell shows its visible tests only; a failure shows the exception's type and
                         message (every hidden assert carries a message saying what it checked), never a
                         traceback, whose source lines would quote the hidden tests
    NoteUngradedAnswers  while written answers wait for a grader, the page says so at the top, so that a test
                         score is not read as the final one
    FeedbackExporter     nbgrader's feedback page, with math rendered by the MathJax copy that
                         install_mathjax(course) puts in <course>/feedback/mathjax/ (no network needed), and no
                         student script: the notebook goes through autograder.lms.sanitize first, and every
                         markdown and HTML the page renders (a grader's comment too) through its sanitiser

Each student still sees every test's name and points in the page's table of contents and cell headings.
"""
import argparse
import importlib.util
import shutil
from pathlib import Path

import nbformat
from jinja2 import pass_context
from nbconvert.exporters import HTMLExporter
from nbgrader.api import Gradebook
from nbgrader.preprocessors import ClearHiddenTests, NbGraderPreprocessor

from .. import notebooks
from ..course import COURSE, nbgrader
from . import sanitize

# The MathJax 3 copy the book uses too (the package sphinx-mathjax-offline ships it).
MATHJAX = Path(importlib.util.find_spec("sphinx-mathjax-offline").origin).parent / "static" / "mathjax"
HIDDEN_NOTE = "# More tests ran here, hidden; a failing one shows its message below."
UNGRADED_NOTE = ("**Written answers not graded yet.** The score above counts the tests only; your written "
                 "answers ({points:g} points) are added when they have been graded.")


def message_only(output):
    """An error output reduced to its exception type and message."""
    return nbformat.v4.new_output("error", ename=output.ename, evalue=output.evalue,
                                  traceback=[f"{output.ename}: {output.evalue}"])


class HideHiddenTests(ClearHiddenTests):
    """Remove the hidden tests from the test cells (nbgrader's own region removal), and reduce the errors of
    those cells to their messages. Only test cells: text a student writes elsewhere is left as written."""

    def preprocess_cell(self, cell, resources, cell_index):
        if cell.cell_type == "code" and notebooks.is_test_cell(cell) and self._remove_hidden_test_region(cell):
            cell.source = cell.source.rstrip() + "\n\n" + HIDDEN_NOTE
            cell.outputs = [message_only(output) if output.output_type == "error" else output
                            for output in cell.outputs]
        return cell, resources


class NoteUngradedAnswers(NbGraderPreprocessor):
    """Open the feedback with a note when written answers of this submission still wait for a grader."""

    def preprocess(self, nb, resources):
        ids = resources["nbgrader"]
        with Gradebook(ids["db_url"]) as gradebook:
            submitted = gradebook.find_submission_notebook(ids["notebook"], ids["assignment"], ids["student"])
            waiting = sum(grade.max_score for grade in submitted.grades if grade.needs_manual_grade)
        if waiting:
            nb.cells.insert(0, nbformat.v4.new_markdown_cell(UNGRADED_NOTE.format(points=waiting)))
        return nb, resources


class FeedbackExporter(HTMLExporter):
    """nbgrader's feedback page (template `feedback`) through our template `course_feedback`
    (autograder/templates/), which changes only where MathJax comes from. nbgrader_config.py configures it, for
    generate_feedback alone: the formgrader's pages keep nbgrader's templates.

    What a student wrote runs nothing here: the notebook is sanitised before nbgrader's steps (which add only the
    grades, the hidden tests' messages and our note), and the page's markdown (nbgrader's feedback template renders
    markdown cells and comments without nbconvert's sanitize_html) and HTML filters are sanitising too."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sanitize_html = True  # nbconvert then drops JavaScript and widget outputs and cleans HTML outputs

    def from_notebook_node(self, nb, resources=None, **kwargs):
        return super().from_notebook_node(sanitize.notebook(nb), resources, **kwargs)

    @pass_context
    def markdown2html(self, context, source):
        return sanitize.html(super().markdown2html(context, source))

    def default_filters(self):
        yield from super().default_filters()
        yield ("clean_html", sanitize.html)  # what nbconvert's templates call with sanitize_html on


def install_mathjax(course):
    """Put the MathJax copy that feedback pages load into <course>/feedback/mathjax/ (once)."""
    target = Path(course) / "feedback" / "mathjax"
    if not (target / "tex-chtml.js").is_file():
        shutil.copytree(MATHJAX, target, dirs_exist_ok=True)
    return target


def generate(course, assignment):
    """nbgrader's generate_feedback for one assignment of the course, and the MathJax copy its pages load."""
    nbgrader("generate_feedback", assignment, "--force", course=course)
    install_mathjax(course)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write the feedback pages of every autograded submission again "
                                     "(after grading written answers in the formgrader).")
    parser.add_argument("--course", type=Path, default=COURSE, help=f"nbgrader course folder (default {COURSE})")
    course = parser.parse_args(argv).course.resolve()
    assignments = sorted({path.name for path in (course / "autograded").glob("*/*") if path.is_dir()})
    for assignment in assignments:
        generate(course, assignment)
        print(f"feedback: {course / 'feedback'}/<student>/{assignment}/{assignment}.html")
    if not assignments:
        print(f"feedback: nothing autograded in {course} yet (run `make grade` first)")


if __name__ == "__main__":
    main()
