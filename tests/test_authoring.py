"""The steps that turn a source notebook into the nbgrader source, the module and the example submissions."""
import nbformat
import pytest

from autograder import examples, notebooks


def code_cell(source, **metadata):
    return nbformat.v4.new_code_cell(source, metadata=metadata)


def notebook_of(*cells):
    return nbformat.v4.new_notebook(cells=list(cells))


SOLVED = "def square(x):\n    ### BEGIN SOLUTION\n    return x * x\n    ### END SOLUTION"


def test_roles_become_nbgrader_metadata():
    source = notebooks.to_nbgrader_source(notebook_of(
        code_cell(SOLVED, role="solution", grade_id="square"),
        code_cell("assert square(2) == 4", role="tests", grade_id="test_square", points=2),
        nbformat.v4.new_markdown_cell("An answer.", metadata={"role": "answer", "grade_id": "q1", "points": 1}),
        code_cell("class StandIn: pass", role="locked", grade_id="standins"),
        code_cell("x = 1"),
    ))
    solution, tests, answer, locked, plain = (cell.metadata.get("nbgrader") for cell in source.cells)
    assert solution["solution"] and not solution["grade"] and not solution["locked"]
    assert tests["grade"] and tests["locked"] and tests["points"] == 2 and not tests["solution"]
    assert answer["grade"] and answer["solution"] and answer["points"] == 1
    assert locked["locked"] and not locked["grade"] and not locked["solution"] and locked["grade_id"] == "standins"
    assert plain is None
    assert all("role" not in cell.metadata for cell in source.cells)


@pytest.mark.parametrize("metadata, complaint", [
    ({"role": "test", "grade_id": "t"}, "unknown role"),
    ({"role": "solution"}, "needs a grade_id"),
    ({"role": "tests", "grade_id": "t"}, "needs points"),
])
def test_a_badly_marked_cell_is_named(metadata, complaint):
    with pytest.raises(ValueError, match=complaint):
        notebooks.to_nbgrader_source(notebook_of(code_cell("x = 1", **metadata)))


def test_module_only_cells_stay_out_of_the_notebook():
    source = notebooks.to_nbgrader_source(notebook_of(code_cell("def main(): pass", tags=["module-only"])))
    assert source.cells == []


def test_export_keeps_tagged_code_without_markers_and_with_package_imports():
    module = notebooks.export_module(notebook_of(
        code_cell("import course_utils\nfrom course_utils import progress", tags=["export"]),
        code_cell(SOLVED, tags=["export"], role="solution", grade_id="square"),
        code_cell("print('not exported')"),
        code_cell("def main(argv=None):\n    pass", tags=["module-only"]),
    ), header="# GENERATED")
    assert module.startswith("# GENERATED")
    assert "from . import course_utils\nfrom .course_utils import progress" in module
    assert "return x * x" in module and "SOLUTION" not in module
    assert "not exported" not in module
    assert module.rstrip().endswith('if __name__ == "__main__":\n    main()')
    compile(module, "module.py", "exec")


def test_export_gathers_the_imports_of_every_cell_at_the_top():
    """After the docstring, each name once, in isort's sections and order; imports inside functions stay."""
    module = notebooks.export_module(notebook_of(
        code_cell('"""The module."""\nfrom __future__ import annotations\nimport torch\nimport math\n\n'
                  "from course_utils import progress\n\nSCALE = math.pi", tags=["export"]),
        code_cell("import argparse\nimport math\nfrom dataclasses import asdict\n"
                  "from course_utils import seed_everything  # the run's seed\n\n\n"
                  "def main(argv=None):\n    import json\n    return json.dumps(asdict(argparse.Namespace()))",
                  tags=["module-only"]),
        code_cell("from dataclasses import dataclass\n\n\n@dataclass\nclass Config:\n    scale: float = SCALE",
                  tags=["export"]),
    ), header="# GENERATED")
    assert module == '''\
# GENERATED


"""The module."""
from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass

import torch

from .course_utils import progress, seed_everything  # the run's seed


SCALE = math.pi


def main(argv=None):
    import json
    return json.dumps(asdict(argparse.Namespace()))


@dataclass
class Config:
    scale: float = SCALE


if __name__ == "__main__":
    main()
'''


def test_a_module_without_main_gets_no_entry_point():
    module = notebooks.export_module(notebook_of(code_cell("x = 1", tags=["export"])), header="#")
    assert "__main__" not in module


def release_and_source():
    source = notebooks.to_nbgrader_source(notebook_of(code_cell(SOLVED, role="solution", grade_id="square")))
    release = notebooks.to_nbgrader_source(notebook_of(code_cell(
        "def square(x):\n    raise NotImplementedError", role="solution", grade_id="square")))
    return release, source


def test_the_reference_submission_is_the_solution_as_a_student_writes_it():
    example = examples.Example(notebook="n", student="reference", about="")
    submitted = examples.submission(example, *release_and_source())
    assert submitted.cells[0].source == "def square(x):\n    return x * x"


def test_an_edit_changes_exactly_one_place():
    example = examples.Example(notebook="n", student="cube", about="",
                               edits=[{"cell": "square", "replace": "x * x", "with": "x ** 3"}])
    assert "return x ** 3" in examples.submission(example, *release_and_source()).cells[0].source


@pytest.mark.parametrize("edit, complaint", [
    ({"cell": "cube", "source": ""}, "no cell with grade_id 'cube'"),
    ({"cell": "square", "replace": "x + x", "with": "x"}, "occurs 0 times"),
])
def test_an_edit_that_no_longer_fits_the_solution_says_so(edit, complaint):
    example = examples.Example(notebook="n", student="s", about="", edits=[edit])
    with pytest.raises(ValueError, match=complaint):
        examples.submission(example, *release_and_source())


def test_the_untouched_release_is_the_release():
    release, source = release_and_source()
    example = examples.Example(notebook="n", student="u", about="", start="release")
    assert examples.submission(example, release, source) == release
