"""Submissions, checked before anything of them runs: the course folder's <course>/submitted/<student>/<notebook>/
read into jobs (student ids checked, files read without following links), and a job's notebook checked (a valid
notebook, under the size limit, with every test cell of the assignment exactly once). What fails a check is
Refused, with a message that says what to do; the batch goes on.
"""
import json
import os
import re
from dataclasses import dataclass

import nbformat

from .. import notebooks
from ..course import is_plain_student_id
from ..limits import Limits
from .job import Job, Result


class Refused(Exception):
    """The submission cannot be graded; the message says why and what to do."""


# ---------------------------------------------------------------------------------------------------------------
# Reading the course folder

def read_files(folder, pattern="*", max_bytes=-1):
    """{relative path: bytes} of the regular files below `folder` matching `pattern` (at most `max_bytes` of
    each, -1 for all), never following a link; and the names of the links found instead."""
    files, links = {}, []
    for path in sorted(folder.rglob(pattern)):
        if path.is_symlink():
            links.append(str(path.relative_to(folder)))
        elif path.is_file():
            descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(descriptor, "rb") as file:
                files[str(path.relative_to(folder))] = file.read(max_bytes)
    return files, links


def submitted_notebook(folder, assignment, limits=Limits()):
    """({f"{assignment}.ipynb": bytes} or {}, notes): the notebook a student submitted, read without following
    links (one byte past the size limit at most, so that read_submission can tell); a lone notebook under
    another name (e.g. "part1_vae (1).ipynb") counts as it."""
    files, links = read_files(folder, "*.ipynb", limits.submission_bytes + 1)
    expected = f"{assignment}.ipynb"
    if expected in links:
        raise Refused(f"{expected} is a symbolic link, not a notebook file; ask the student to upload the "
                      f"notebook itself")
    if expected not in files and len(files) == 1:
        (name, data), = files.items()
        return {expected: data}, [f"submitted {name!r}; graded it as {expected}"]
    return ({expected: files[expected]} if expected in files else files), []


@dataclass
class Submissions:
    """The submissions of one assignment in a course folder."""
    jobs: list  # a Job per student to grade
    refused: list  # a Result.refused per student folder that cannot become a job
    notes: dict  # {student: [how its notebook was read]}, for its log


def collect(course, assignment, limits, sandbox):
    """The Submissions of every student folder with an `assignment` folder in <course>/submitted/."""
    source, _ = read_files(course / "source" / assignment)
    release, _ = read_files(course / "release" / assignment)
    judges_path = judges_file(course, assignment)
    if not judges_path.is_file():
        raise SystemExit(f"{judges_path} is missing (the grader's half of the hidden tests): run `make release` "
                         f"(python -m autograder.release --course {course}) first")
    judges = judges_path.read_bytes()
    found = Submissions(jobs=[], refused=[], notes={})
    for folder in sorted((course / "submitted").glob(f"*/{glob_escape(assignment)}")):
        student = folder.parent.name
        try:
            if not is_plain_student_id(student):
                raise Refused(f"student id {student!r} is not a plain id (letters, digits, _ . -); rename its "
                              f"folder in submitted/")
            if folder.is_symlink() or folder.parent.is_symlink():
                raise Refused(f"submitted/{student}/{assignment} is a symbolic link, not a folder; copy the "
                              f"student's files in instead")
            submission, found.notes[student] = submitted_notebook(folder, assignment, limits)
        except Refused as refusal:
            found.refused.append(Result.refused(assignment, student, str(refusal)))
            continue
        found.jobs.append(Job(assignment, student, source, release, submission, limits, sandbox,
                              hidden=(str(course),), judges=judges))
    return found


def judges_file(course, assignment):
    """Where `make release` puts an assignment's judges (the grader's half of its hidden tests), outside the
    folders nbgrader copies next to a student's notebook."""
    return course / "judges" / f"{assignment}.json"


def glob_escape(name):
    return re.sub(r"([*?\[])", r"[\1]", name)


# ---------------------------------------------------------------------------------------------------------------
# Checking a job's notebook

def read_submission(job):
    """The submitted notebook as a NotebookNode, or Refused."""
    data = job.submission.get(job.notebook)
    if data is None:
        raise Refused(f"no {job.notebook} in the submission (found: {sorted(job.submission) or 'nothing'}); "
                      f"ask the student to submit it under that name")
    limit = job.limits.submission_bytes
    if len(data) > limit:
        raise Refused(f"{job.notebook} is {len(data) / 2**20:.0f} MiB, over the {limit // 2**20} MiB limit; ask "
                      f"the student to clear the outputs and resubmit")
    try:
        json.loads(data)
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise Refused(f"{job.notebook} is not valid JSON ({str(error)[:200]}); ask the student to resubmit the "
                      f"notebook file saved by Jupyter") from None
    try:
        notebook = nbformat.reads(data.decode("utf-8"), as_version=4)
    except Exception as error:
        raise Refused(f"{job.notebook} is not a notebook ({type(error).__name__}: {str(error)[:200]}); ask the "
                      f"student to resubmit it") from None
    try:
        nbformat.validate(notebook)
    except nbformat.ValidationError as error:
        raise Refused(f"{job.notebook} is not a valid notebook ({error.message[:200]}); ask the student to "
                      f"resubmit it") from None
    return notebook


def cell_problems(notebook, source, release):
    """(refusals, suspicions): the nbgrader cells of the submission compared with the source's.

    Every test cell must be there exactly once, with no nbgrader cell unknown to the source; a cell without
    nbgrader metadata that holds a test cell's code is a copy of it, for a person to review.
    """
    known, tests = notebooks.cells_by_grade_id(source), notebooks.test_cells(source)
    counts = {}
    for cell in notebook.cells:
        if (grade_id := notebooks.nbgrader_of(cell).get("grade_id")) is not None:
            counts[grade_id] = counts.get(grade_id, 0) + 1
    refusals = [f"duplicated {'test cell' if grade_id in tests else 'cell'} {grade_id} (its grade_id appears "
                f"{count} times)" for grade_id, count in counts.items() if count > 1]
    refusals += [f"missing test cell {grade_id}" for grade_id in tests if grade_id not in counts]
    refusals += [f"unknown nbgrader cell {grade_id} (not in the assignment)" for grade_id in counts
                 if grade_id not in known]
    visible_tests = {grade_id: cell.source.strip() for grade_id, cell in notebooks.test_cells(release).items()}
    suspicions = [f"cell {index} is a copy of test cell {grade_id}" for index, cell in enumerate(notebook.cells)
                  if cell.cell_type == "code" and not notebooks.nbgrader_of(cell)
                  for grade_id, text in visible_tests.items() if text and text in cell.source]
    return refusals, suspicions


def checked_submission(job):
    """(the submitted notebook, the assignment's source notebook, suspicions for a person to review), or Refused
    when the submission cannot be graded."""
    submitted = read_submission(job)
    source, release = (nbformat.reads(files[job.notebook].decode(), as_version=4)
                       for files in (job.source, job.release))
    refusals, suspicions = cell_problems(submitted, source, release)
    if refusals:
        raise Refused("; ".join(refusals) + "; ask the student to start from the release and copy the answers in")
    return submitted, source, suspicions
