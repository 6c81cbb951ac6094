"""Small steps that turn a source notebook (MyST markdown, see solutions/README.md) into what the course needs.

Each function does one thing to a notebook or a cell, in the spirit of nbgrader's preprocessors; release.py
chains them. Notebooks are nbformat NotebookNode objects.
"""
import ast
import copy
import re
import sys
import textwrap

import jupytext
import nbformat

SOLUTION_MARKERS = ("### BEGIN SOLUTION", "### END SOLUTION")
HIDDEN_TESTS = re.compile(r"^### BEGIN HIDDEN TESTS\n(.*?)^### END HIDDEN TESTS$", flags=re.DOTALL | re.MULTILINE)
# The two functions of a hidden test (solutions/README.md): probe(seed) in the student's kernel, judge(observed,
# seed) in the grader's process only.
PROBE, JUDGE = "probe", "judge"
KERNEL_RUNNER = "run_hidden_tests"  # the function the kernel's hidden tests run in
NBGRADER_SCHEMA_VERSION = 3


def read_source(path):
    """The source notebook at `path`, with cell ids that do not change from one build to the next."""
    notebook = jupytext.read(path)
    for index, cell in enumerate(notebook.cells):
        cell.id = f"cell-{index}"
    return notebook


def read(path):
    """An .ipynb notebook."""
    return nbformat.read(path, as_version=4)


def grade_id(cell):
    """The grade_id a source cell declares, or None."""
    return cell.metadata.get("grade_id")


def has_tag(cell, tag):
    return tag in cell.metadata.get("tags", [])


def drop_tagged(notebook, tag):
    """A copy of `notebook` without the cells tagged `tag`."""
    kept = copy.deepcopy(notebook)
    kept.cells = [cell for cell in kept.cells if not has_tag(cell, tag)]
    return kept


def without_solution_markers(source):
    """The cell's text as a student who solved it would write it: the solution marker lines removed."""
    lines = source.splitlines()
    return "\n".join(line for line in lines if line.strip() not in SOLUTION_MARKERS)


def nbgrader_metadata(cell):
    """nbgrader's metadata for a source cell's role (solution, tests, answer, locked), or None for a plain cell.

    A locked cell is nbgrader's read-only cell: code the tests rely on (stand-ins), which autograding restores
    from the source whatever the student did to it."""
    role = cell.metadata.get("role")
    if role is None:
        return None
    if role not in ("solution", "tests", "answer", "locked"):
        raise ValueError(f"cell {cell.id}: unknown role {role!r} (solution, tests, answer or locked)")
    if grade_id(cell) is None:
        raise ValueError(f"cell {cell.id}: a {role} cell needs a grade_id")
    graded = role in ("tests", "answer")
    if graded and "points" not in cell.metadata:
        raise ValueError(f"cell {grade_id(cell)}: a {role} cell needs points")
    metadata = {
        "grade": graded,
        "grade_id": grade_id(cell),
        "locked": role in ("tests", "locked"),
        "schema_version": NBGRADER_SCHEMA_VERSION,
        "solution": role in ("solution", "answer"),
        "task": False,
    }
    if graded:
        metadata["points"] = cell.metadata["points"]
    return metadata


def to_nbgrader_source(notebook):
    """The nbgrader source notebook: module-only and judge-only cells dropped, each role turned into nbgrader
    metadata, each hidden test as the student's kernel runs it (its probe; kernel_hidden_tests)."""
    source = drop_tagged(drop_tagged(notebook, "module-only"), "judge-only")
    for cell in source.cells:
        metadata = nbgrader_metadata(cell)
        for key in ("role", "grade_id", "points"):
            cell.metadata.pop(key, None)
        if metadata is not None:
            cell.metadata["nbgrader"] = metadata
        if cell.cell_type == "code":
            cell.source = kernel_hidden_tests(cell.source, cell.id)
    return source


def hidden_tests(source, where):
    """The code of the hidden tests region of a cell's `source`, or None; a region must define probe(seed) and
    judge(observed, seed) at its top level (solutions/README.md), and a cell has one region at most."""
    regions = HIDDEN_TESTS.findall(source)
    if not regions and re.search(r"^\s+### BEGIN HIDDEN TESTS$", source, flags=re.MULTILINE):
        raise ValueError(f"{where}: hidden tests go at the cell's top level, after the visible tests "
                         f"(solutions/README.md), not inside a function")
    if not regions:
        return None
    if len(regions) > 1:
        raise ValueError(f"{where}: one hidden tests region per cell")
    functions = {node.name for node in ast.parse(regions[0]).body if isinstance(node, ast.FunctionDef)}
    if not {PROBE, JUDGE} <= functions:
        raise ValueError(f"{where}: a hidden tests region defines {PROBE}(seed), which runs in the student's kernel, "
                         f"and {JUDGE}(observed, seed), which runs in the grader (solutions/README.md)")
    return regions[0]


def kernel_hidden_tests(source, where):
    """The cell's `source` with its hidden tests as the student's kernel runs them: the region without judge(),
    inside a function (its names neither replace nor remove the notebook's), which sends what probe() observes to
    the grader (course_utils.send_to_judge)."""
    region = hidden_tests(source, where)
    if region is None:
        return source
    kernel = probe_runner(region, "# The grader compares what probe() observed with its own answers, in its own "
                                  f"process.\n    course_utils.send_to_judge({PROBE})")
    kernel += f"\n\n{KERNEL_RUNNER}()\ndel {KERNEL_RUNNER}\n"
    return HIDDEN_TESTS.sub(lambda match: f"### BEGIN HIDDEN TESTS\n{kernel}### END HIDDEN TESTS", source)


def probe_runner(region, last):
    """The code of a function KERNEL_RUNNER that defines the region's names but judge() as its own and ends with
    the statement `last`."""
    return f"def {KERNEL_RUNNER}():\n{textwrap.indent(probe_code(region), '    ')}\n\n    {last}\n"


def probe_code(region):
    """The code of a hidden tests region without its judge() function."""
    lines = region.splitlines()
    for node in ast.parse(region).body:
        if isinstance(node, ast.FunctionDef) and node.name == JUDGE:
            first = min([node.lineno, *(decorator.lineno for decorator in node.decorator_list)])
            lines[first - 1:node.end_lineno] = [None] * (node.end_lineno - first + 1)
    return "\n".join(line for line in lines if line is not None).strip()


def without_hidden_tests(source):
    """The cell's `source` without its hidden tests region (what students run)."""
    return HIDDEN_TESTS.sub("", source)


def judges(notebook, module):
    """What the grader runs of a source notebook's hidden tests (grading/judge.py): the solution module that
    stands in for the student's names, the code of its locked and judge-only cells, and each test's region."""
    cells = drop_tagged(notebook, "module-only").cells
    return {
        "module": module,
        "preamble": [cell.source for cell in cells if cell.cell_type == "code"
                     and (cell.metadata.get("role") == "locked" or has_tag(cell, "judge-only"))],
        "tests": {grade_id(cell): region for cell in cells if cell.cell_type == "code"
                  and (region := hidden_tests(cell.source, grade_id(cell) or cell.id)) is not None},
    }


def export_module(notebook, header):
    """The solution module: the code of every cell tagged export or module-only, solution markers removed.

    Imports belong at the top of a module, whichever cell needs them first: the top-level import statements of
    every cell are gathered after the module's docstring (the first cell's, if it opens with one), as
    module_imports writes them."""
    imports, chunks = [], []
    for cell in notebook.cells:
        if cell.cell_type == "code" and (has_tag(cell, "export") or has_tag(cell, "module-only")):
            cell_imports, code = split_imports(relative_course_utils(without_solution_markers(cell.source)))
            imports += cell_imports
            chunks.append(code.strip())
    docstring, chunks[0] = split_docstring(chunks[0])
    chunks = [header.rstrip(), "\n".join(filter(None, [docstring, module_imports(imports)])), *chunks]
    if re.search(r"^def main\(", "\n".join(chunks), flags=re.MULTILINE):
        chunks.append('if __name__ == "__main__":\n    main()')
    return "\n\n\n".join(chunk for chunk in chunks if chunk) + "\n"


def split_imports(code):
    """The top-level import statements of `code`, each as (ast node, the comment on its line or ''), and the code
    without them."""
    lines = code.splitlines()
    imports = []
    for node in ast.parse(code).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            after = lines[node.end_lineno - 1].encode()[node.end_col_offset:].decode().strip()  # ast counts bytes
            imports.append((node, after if after.startswith("#") else ""))
            lines[node.lineno - 1:node.end_lineno] = [None] * (node.end_lineno - node.lineno + 1)
    return imports, "\n".join(line for line in lines if line is not None)


def split_docstring(code):
    """(the docstring statement that opens `code`, or '', and the rest of the code)."""
    body = ast.parse(code).body
    if not (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)):
        return "", code
    lines = code.splitlines()
    return "\n".join(lines[:body[0].end_lineno]), "\n".join(lines[body[0].end_lineno:]).strip()


def module_imports(imports):
    """The statements of split_imports's `imports` as isort orders them: sections for __future__, the standard
    library, third-party packages and relative imports; in each, the `import x` lines, then one
    `from x import ...` line per module with every name once, alphabetically. Comments stay on their lines."""
    names, comments = {}, {}
    for node, comment in imports:
        if isinstance(node, ast.Import):
            keys = [(False, alias.name, f"import {alias.name}" + (f" as {alias.asname}" if alias.asname else ""))
                    for alias in node.names]
        else:
            module = "." * node.level + (node.module or "")
            keys = [(True, module, f"from {module} import")]
            names.setdefault(keys[0], set()).update(
                alias.name + (f" as {alias.asname}" if alias.asname else "") for alias in node.names)
        for key in keys:
            comments.setdefault(key, {})[comment] = None  # a dict keeps the first-seen order

    def section(module):
        top = module.split(".")[0]
        return 3 if not top else 0 if top == "__future__" else 1 if top in sys.stdlib_module_names else 2

    sections = [[], [], [], []]
    for key in sorted(comments, key=lambda key: (key[0], key[1].lower(), key[2])):
        is_from, module, statement = key
        if is_from:
            statement += " " + ", ".join(sorted(names[key]))
        comment = "; ".join(filter(None, comments[key]))
        sections[section(module)].append(statement + (f"  {comment}" if comment else ""))
    return "\n\n".join("\n".join(lines) for lines in sections if lines)


def relative_course_utils(code):
    """Notebooks import the helpers as `course_utils`; inside the solutions package they are `.course_utils`."""
    code = re.sub(r"^(\s*)from course_utils import", r"\1from .course_utils import", code, flags=re.MULTILINE)
    return re.sub(r"^(\s*)import course_utils$", r"\1from . import course_utils", code, flags=re.MULTILINE)


def with_header_cell(notebook, text):
    """A copy of `notebook` whose first cell is the markdown `text` (the 'generated file' notice)."""
    marked = copy.deepcopy(notebook)
    marked.cells.insert(0, nbformat.v4.new_markdown_cell(text, id="generated-notice"))
    return marked


# The cells of an nbgrader notebook (a release, a submission, an autograded notebook). Their roles live in the
# cells' nbgrader metadata, which a submission can change: what must hold whatever the student did (which cells
# are locked, which are tests) is read from the source notebook, not from the submission.

def nbgrader_of(cell):
    """The cell's nbgrader metadata ({} for a plain cell)."""
    return cell.get("metadata", {}).get("nbgrader", {})


def cells_by_grade_id(notebook):
    """{grade_id: cell} for the nbgrader cells of a notebook."""
    return {nbgrader_of(cell)["grade_id"]: cell for cell in notebook.cells if nbgrader_of(cell)}


def is_solution_cell(cell):
    return nbgrader_of(cell).get("solution", False)


def is_test_cell(cell):
    """A graded code cell that is not a solution: an autograded test."""
    nbgrader = nbgrader_of(cell)
    return cell.cell_type == "code" and nbgrader.get("grade", False) and not nbgrader.get("solution", False)


def is_locked_cell(cell):
    """A cell nbgrader restores from the source when it autogrades (test cells and the source's locked cells)."""
    return nbgrader_of(cell).get("locked", False)


def test_cells(notebook):
    """{grade_id: cell} of the test cells of an nbgrader notebook."""
    return {nbgrader_of(cell)["grade_id"]: cell for cell in notebook.cells if is_test_cell(cell)}


def locked_grade_ids(source):
    """The grade_ids of the cells that the source notebook locks (whatever a submission's metadata says)."""
    return {nbgrader_of(cell)["grade_id"] for cell in source.cells if is_locked_cell(cell)}


def cell_label(cell, index):
    """How every report names the cell at position `index`: "cell 12 (kld)", or "cell 12" without a grade_id
    (an nbgrader notebook's or a source notebook's)."""
    label = nbgrader_of(cell).get("grade_id") or grade_id(cell)
    return f"cell {index}" + (f" ({label})" if label else "")


def cell_label_by_id(notebook, cell_id):
    """cell_label of the cell with that Jupyter cell id ('' for no id; a grader's own cell is not the student's)."""
    if not cell_id:
        return ""
    for index, cell in enumerate(notebook.cells):
        if cell.get("id") == cell_id:
            return cell_label(cell, index)
    return "a grader check cell"


def write(notebook, path):
    """Write `notebook` as .ipynb with stable formatting (so that unchanged builds give identical files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(nbformat.writes(notebook) + "\n", encoding="utf-8")
