"""Where the course's files are, and how nbgrader is run on the course folder."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "solutions"
AUTOGRADER = ROOT / "autograder"
EXAMPLES = AUTOGRADER / "examples"  # the example students' files, <notebook>.yml (autograder/examples/README.md)
COURSE = ROOT / "build" / "course"  # the nbgrader course folder: source, release, submitted, autograded...
# What `make release` writes of each assignment in a course folder: nbgrader's source (the hidden tests' probes) and
# release, and the judges (the hidden tests' other half, which no kernel sees; grading/judge.py).
ASSIGNMENT_FOLDERS = ("source", "release", "judges")
EXAMPLES_COURSE = ROOT / "build" / "examples"  # the example students' own course folder, never mixed with real ones


STUDENT_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # the course folder's student folders are named so


def is_plain_student_id(student):
    """Letters, digits, _ . - only: safe as a folder name, in a glob, on a command line."""
    return STUDENT_ID.fullmatch(student) is not None


def source_notebooks():
    """The source notebooks, in course order: solutions/part1_*.md, part2_*.md, ..."""
    return sorted(SOLUTIONS.glob("part*_*.md"))


def read_nbgrader_config(folder):
    """The nbgrader_config.py of `folder` as nbgrader reads it there, a traitlets Config."""
    from traitlets.config.loader import PyFileConfigLoader

    return PyFileConfigLoader("nbgrader_config.py", path=str(folder)).load_config()


def nbgrader_config(course):
    """The course's nbgrader configuration (autograder/nbgrader_config.py) for the course folder `course`, as
    nbgrader's Python API (nbgrader.apps.NbGraderAPI) takes it; `nbgrader` below is the command-line way."""
    config = read_nbgrader_config(AUTOGRADER)
    config.CourseDirectory.root = str(course)
    return config


def nbgrader(*args, course, timeout=None):
    """Run an nbgrader command on the course folder with the course's configuration (autograder/).

    Raises RuntimeError with nbgrader's output when it fails, TimeoutError when it runs past `timeout` s.
    """
    command = [sys.executable, "-m", "nbgrader", *args, f"--CourseDirectory.root={course}"]
    # nbgrader runs `alembic` from PATH: put this environment's executables first.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    try:
        result = subprocess.run(command, cwd=AUTOGRADER, capture_output=True, text=True, timeout=timeout,
                                env={**os.environ, "PATH": path})
    except subprocess.TimeoutExpired as error:
        raise TimeoutError(f"{' '.join(command[2:])} ran past {timeout} s") from error
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[2:])} failed:\n{result.stdout}{result.stderr}")
    return result
