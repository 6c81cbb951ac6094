"""The example submissions: notebooks built from the release and the source, as autograder/examples/*.yml say.

See autograder/examples/README.md for the file format. A student's notebook is the release with every exercise
and answer filled in from the source (the reference), then the student's edits; or the release untouched.
"""
import copy
from dataclasses import dataclass, field

import yaml

from . import notebooks
from .course import EXAMPLES


@dataclass
class Example:
    """One example student of one notebook, and the score it must get."""
    notebook: str
    student: str
    about: str
    start: str = "solution"
    edits: list = field(default_factory=list)
    loses: list = field(default_factory=list)

    def expected_full(self, test_id):
        """Whether this student must score full marks on the test cell `test_id` (else: must lose points)."""
        return self.start != "release" and test_id not in self.loses


def load_examples(notebook):
    """The example students of `notebook` (e.g. 'part1_vae'), from autograder/examples/<notebook>.yml."""
    path = EXAMPLES / f"{notebook}.yml"
    if not path.is_file():
        return []
    entries = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    examples = [Example(notebook=notebook, **entry) for entry in entries]
    for example in examples:
        if example.start not in ("solution", "release"):
            raise ValueError(f"{path}, student {example.student}: start is 'solution' or 'release'")
    return examples


def reference_notebook(release, source):
    """The release with every solution cell (exercise or answer) filled in from the nbgrader source notebook."""
    filled = copy.deepcopy(release)
    solved = notebooks.cells_by_grade_id(source)
    for cell in filled.cells:
        if notebooks.is_solution_cell(cell):
            cell.source = notebooks.without_solution_markers(solved[cell.metadata["nbgrader"]["grade_id"]].source)
    return filled


def apply_edit(cells, edit, where):
    """Change one solution cell: replace a text that occurs exactly once, or the whole source."""
    cell = cells.get(edit["cell"])
    if cell is None:
        raise ValueError(f"{where}: no cell with grade_id {edit['cell']!r}")
    if "source" in edit:
        cell.source = edit["source"].rstrip("\n")
        return
    count = cell.source.count(edit["replace"])
    if count != 1:
        raise ValueError(f"{where}: {edit['replace']!r} occurs {count} times in cell {edit['cell']!r}, "
                         f"not once; update the example to the current solution")
    cell.source = cell.source.replace(edit["replace"], edit["with"])


def submission(example, release, source):
    """The notebook that `example` submits."""
    if example.start == "release":
        return copy.deepcopy(release)
    notebook = reference_notebook(release, source)
    cells = notebooks.cells_by_grade_id(notebook)
    for edit in example.edits:
        apply_edit(cells, edit, where=f"{example.notebook}.yml, student {example.student}")
    return notebook
