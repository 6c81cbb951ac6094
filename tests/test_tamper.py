"""Tampering is flagged: canary cells catch tricks played inside the kernel, the static scan catches the code
that plays them, and honest notebooks (the example students, the reference solutions run as the autograder
runs them) show nothing.

The kernels here are plain ipykernels (the sandbox is orthogonal); they run in parallel, one per trick.
"""
import ast
import copy
import json
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor

import nbclient
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from autograder import examples, notebooks, tamper
from autograder.course import AUTOGRADER, ROOT, SOLUTIONS, source_notebooks
from autograder.tamper import canaries, scan
from solutions import course_utils

NONCE = "f3c1a9e0"
SETUP = "import math\nimport torch\nimport course_utils\n\ncourse_utils.explain_unfinished_exercises()"
# Each test cell fails for an honest notebook, so that a trick that makes it pass shows it worked.
TESTS = {
    "test_allclose": "assert torch.allclose(torch.tensor(1.0), torch.tensor(2.0)), 'allclose'",
    "test_import": "import torch\nassert torch.allclose(torch.tensor(1.0), torch.tensor(2.0)), 'import'",
    "test_isclose": "assert math.isclose(1.0, 2.0), 'isclose'",
    "test_numpy": "import numpy.testing\nnumpy.testing.assert_allclose(1.0, 2.0)",
    "test_unfinished": "raise NotImplementedError",
}

# name: (the student's cell, what the evidence must say, the test cells the trick makes pass)
TRICKS = {
    "input transformer that empties later cells": (
        "get_ipython().input_transformers_cleanup.append(lambda lines: [])",
        ["no output at all", "uses get_ipython().input_transformers_cleanup"], set(TESTS)),
    "input transformer that wraps cells in try/except": (
        "def wrap(lines):\n"
        "    body = ''.join(lines).splitlines()\n"
        "    return (['try:\\n'] + ['    ' + line + '\\n' for line in body]\n"
        "            + ['    pass\\n', 'except BaseException:\\n', '    pass\\n'])\n"
        "get_ipython().input_transformers_post.append(wrap)",
        ["deliberate error is not shown", "changed since the start of the notebook: "
         "get_ipython().input_transformers_post", "uses get_ipython().input_transformers_post"], set(TESTS)),
    "patched torch.allclose, math.isclose, numpy.testing, an import hook and sys.settrace": (
        "import builtins, sys, types\n"
        "import numpy.testing\n"
        "fake = types.ModuleType('torch')\n"
        "fake.__dict__.update(torch.__dict__)\n"
        "fake.allclose = lambda *args, **kwargs: True\n"
        "real_import = builtins.__import__\n"
        "builtins.__import__ = lambda name, *a, **k: fake if name == 'torch' else real_import(name, *a, **k)\n"
        "torch.allclose = lambda *args, **kwargs: True\n"
        "math.isclose = lambda *args, **kwargs: True\n"
        "numpy.testing.assert_allclose = lambda *args, **kwargs: None\n"
        "sys.settrace(lambda frame, event, arg: None)",
        ["changed since the start of the notebook: torch.allclose\n",
         "changed since the start of the notebook: builtins.__import__\n",
         "changed since the start of the notebook: import torch\n",
         "changed since the start of the notebook: math.isclose\n",
         "changed since the start of the notebook: numpy.testing.assert_allclose\n",
         "changed since the start of the notebook: sys.gettrace()\n",
         "torch.allclose gives wrong answers", "math.isclose gives wrong answers",
         "numpy.testing.assert_allclose gives wrong answers",
         "line 7: assigns builtins.__import__", "line 8: assigns torch.allclose", "line 9: assigns math.isclose",
         "line 10: assigns numpy.testing.assert_allclose", "line 11: uses sys.settrace"],
        {"test_allclose", "test_import", "test_isclose", "test_numpy"}),
    "replaced showtraceback": (
        "get_ipython().showtraceback = lambda *args, **kwargs: None",
        ["deliberate error is not shown", "changed since the start of the notebook: get_ipython().showtraceback",
         "uses get_ipython().showtraceback"], set(TESTS) - {"test_unfinished"}),  # the course's handler shows that one
    "custom exception handler that hides errors, replacing the course's": (
        "get_ipython().set_custom_exc((AssertionError, NotImplementedError), lambda *args, **kwargs: [])",
        ["deliberate error is not shown", "a custom exception handler was installed: AssertionError, "
         "NotImplementedError handled by <function <lambda>", "uses get_ipython().set_custom_exc"], set(TESTS)),
    "kernel that reports every cell as a success": (
        "session = get_ipython().kernel.session\n"
        "real_send = session.send\n"
        "def send(stream, kind, content=None, *args, **kwargs):\n"
        "    if kind == 'error':\n"
        "        return None\n"
        "    if isinstance(content, dict) and content.get('status') == 'error':\n"
        "        content = {'status': 'ok', 'execution_count': content.get('execution_count'), 'payload': [],\n"
        "                   'user_expressions': {}}\n"
        "    return real_send(stream, kind, content, *args, **kwargs)\n"
        "session.send = send\n"
        "kernel = get_ipython().kernel\n"
        "real_execute = kernel.do_execute\n"
        "async def do_execute(*args, **kwargs):\n"
        "    return {**(await real_execute(*args, **kwargs)), 'status': 'ok'}\n"
        "kernel.do_execute = do_execute",
        ["deliberate error is not shown", "changed since the start of the notebook: kernel.session.send",
         "changed since the start of the notebook: kernel.do_execute", "line 15: uses kernel.do_execute",
         "uses get_ipython().kernel.session"], set(TESTS)),
    "names the tests use, rebound": (
        "math = type('FakeMath', (), {'isclose': staticmethod(lambda *args, **kwargs: True)})()",
        ["the notebook's name 'math', which the tests use, no longer holds the builtin or module it names",
         "line 1: rebinds math, which an import binds to math, to something else"], {"test_isclose"}),
    "honest": ("x = 1", [], set()),
}


def graded_test_cell(grade_id, source):
    return new_code_cell(source, metadata={"nbgrader": {
        "grade": True, "grade_id": grade_id, "locked": True, "points": 1, "schema_version": 3, "solution": False,
        "task": False}})


def small_notebook(student_code):
    """The small assignment as the student submits it (and, with the reference's code, its source)."""
    notebook = new_notebook(cells=[new_markdown_cell("# A small assignment"), new_code_cell(SETUP),
                                   new_code_cell(student_code),
                                   *[graded_test_cell(grade_id, source) for grade_id, source in TESTS.items()]])
    notebook.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook


SMALL_SOURCE = small_notebook("x = 1")


def execute(notebook, folder):
    """The notebook with canaries, executed as nbgrader does (errors do not stop it) in `folder`."""
    client = nbclient.NotebookClient(tamper.add_canaries(notebook, NONCE), timeout=120, allow_errors=True,
                                     resources={"metadata": {"path": str(folder)}})
    return client.execute()


def passed_tests(executed):
    return {cell.metadata.nbgrader.grade_id for cell in executed.cells if notebooks.is_test_cell(cell)
            and not any(output.output_type == "error" for output in cell.outputs)}


def reference_submission(notebook_name):
    """(the reference solution as a student submits it, the nbgrader source notebook)."""
    source = notebooks.to_nbgrader_source(notebooks.read_source(SOLUTIONS / f"{notebook_name}.md"))
    release = notebooks.read(ROOT / "assignment" / f"{notebook_name}.ipynb")
    reference = next(e for e in examples.load_examples(notebook_name) if e.student == "reference")
    return examples.submission(reference, release, source), source


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{trick or reference notebook: (submitted, source, executed)}: every kernel of this file, run in parallel."""
    submissions = {name: (small_notebook(code), SMALL_SOURCE) for name, (code, _, _) in TRICKS.items()}
    submissions |= {source.stem: reference_submission(source.stem) for source in source_notebooks()}

    folders = {name: tmp_path_factory.mktemp("kernel") for name in submissions}  # mktemp is not thread-safe
    for folder in folders.values():
        shutil.copy(ROOT / "assignment" / "course_utils.py", folder)

    def run(name):
        submitted, source = submissions[name]
        return name, (submitted, source, execute(submitted, folders[name]))

    # As the autograder runs them: training skipped, data from the data root, warnings on stdout.
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("NBGRADER_EXECUTION", "autograde")
        environment.setenv(course_utils.DATA_DIR_VARIABLE, str(course_utils.data_root().resolve()))
        with ThreadPoolExecutor(max_workers=4) as pool:
            return dict(pool.map(run, submissions))


@pytest.mark.parametrize("trick", TRICKS)
def test_each_trick_gives_evidence_naming_it(runs, trick):
    submitted, source, executed = runs[trick]
    _, expected, made_pass = TRICKS[trick]
    assert passed_tests(executed) == made_pass  # the trick works (and the honest notebook fails its tests)
    found = "\n".join(tamper.evidence(executed, submitted, source, NONCE)) + "\n"
    for phrase in expected:
        assert phrase in found, f"{trick}: {phrase!r} not in the evidence:\n{found}"
    assert bool(expected) == (found != "\n")


@pytest.mark.parametrize("notebook_name", [source.stem for source in source_notebooks()])
def test_reference_solutions_run_as_the_autograder_runs_them_are_clean(runs, notebook_name):
    submitted, source, executed = runs[notebook_name]
    assert passed_tests(executed) == set(notebooks.test_cells(source))
    assert tamper.evidence(executed, submitted, source, NONCE) == []


def test_remove_canaries_gives_back_the_submission(runs):
    submitted, _, executed = runs["honest"]
    assert tamper.remove_canaries(tamper.add_canaries(submitted, NONCE)) == submitted
    assert [cell.source for cell in tamper.remove_canaries(executed).cells] == [c.source for c in submitted.cells]


# ---------------------------------------------------------------------------------------------------------------
# The probe: its text is what the kernel runs.

def test_the_probe_needs_only_what_the_kernel_has():
    tree = ast.parse(canaries.PROBE)
    imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert not any(isinstance(node, ast.ImportFrom) and node.level for node in imports)  # nothing of the autograder
    modules = {name.split(".")[0] for node in imports
               for name in ([alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module])}
    assert modules - sys.stdlib_module_names == {"numpy", "torch", "IPython", "course_utils"}


def test_every_function_of_the_tamper_package_is_under_80_lines():
    for path in sorted((AUTOGRADER / "tamper").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno + 1 < 80, f"{path.name}: {node.name}"


# ---------------------------------------------------------------------------------------------------------------
# The canaries, without a kernel: where they go, and what evidence() makes of outputs that are not as expected.

def test_a_canary_at_the_start_after_each_test_cell_and_at_the_end():
    submitted = small_notebook("x = 1")
    marked = tamper.add_canaries(submitted, NONCE)
    canary_positions = [i for i, cell in enumerate(marked.cells) if canaries.is_canary(cell)]
    assert canary_positions == [0, 5, 7, 9, 11, 13, 14]
    for position in canary_positions[1:-1]:
        assert notebooks.is_test_cell(marked.cells[position - 1])
    for position in canary_positions:
        cell = marked.cells[position]
        assert "nbgrader" not in cell.metadata and NONCE in cell.source and cell.cell_type == "code"
    assert len({marked.cells[p].source for p in canary_positions}) == len(canary_positions)


def honest_outputs(marked):
    """`marked` as an honest kernel would leave it: each canary prints a clean report and shows its error."""
    executed = copy.deepcopy(marked)
    canary_cells = [cell for cell in executed.cells if canaries.is_canary(cell)]
    for index, cell in enumerate(canary_cells):
        report = {"fingerprint": {"torch.allclose": 1, "sys.gettrace()": 2}, "misbehaving": [],
                  "custom_exceptions": "none", "unusual": [], "rebound": ["__name__"]}
        cell.outputs = [new_output("stream", name="stdout", text=f"DGM-CANARY {NONCE} {index} {json.dumps(report)}\n"),
                        new_output("error", ename="AssertionError", evalue=canaries.deliberate_error(NONCE, index),
                                   traceback=[])]
    return executed, canary_cells


def test_evidence_reads_what_each_canary_shows():
    submitted = small_notebook("x = 1")
    executed, canary_cells = honest_outputs(tamper.add_canaries(submitted, NONCE))
    assert tamper.evidence(executed, submitted, SMALL_SOURCE, NONCE) == []

    canary_cells[1].outputs = []
    canary_cells[2].outputs = canary_cells[2].outputs[:1]
    canary_cells[3].outputs[0].text = canary_cells[3].outputs[0].text.replace(NONCE, "guessed")
    report = json.loads(canary_cells[4].outputs[0].text.split(" ", 3)[3])
    report |= {"fingerprint": {"torch.allclose": 3, "sys.gettrace()": 2}, "rebound": ["__name__", "math"],
               "custom_exceptions": "AssertionError handled by f"}
    canary_cells[4].outputs[0].text = f"DGM-CANARY {NONCE} 4 {json.dumps(report)}\n"
    report["misbehaving"] = ["torch.equal gives wrong answers on a known case"]
    canary_cells[5].outputs[0].text = f"DGM-CANARY {NONCE} 5 {json.dumps(report)}\n"
    found = tamper.evidence(executed, submitted, SMALL_SOURCE, NONCE)
    assert found == [
        "canary 1 (after test cell test_allclose): no output at all: the cell was emptied or never ran (an input "
        "transformer, a kernel that skips cells, or the kernel died)",
        "canary 2 (after test cell test_import): its deliberate error is not shown (no error): errors are being "
        "hidden (try/except around cells, a replaced showtraceback or exception handler, or a kernel that reports "
        "success)",
        "canary 3 (after test cell test_isclose): expected one report line with this run's nonce, found 0 "
        "(and 1 forged or stale ones)",
        "canary 4 (after test cell test_numpy): changed since the start of the notebook: torch.allclose",
        "canary 4 (after test cell test_numpy): the notebook's name 'math', which the tests use, no longer holds "
        "the builtin or module it names",
        "canary 4 (after test cell test_numpy): a custom exception handler was installed: AssertionError handled by f",
        "canary 5 (after test cell test_unfinished): torch.equal gives wrong answers on a known case",
    ]


@pytest.mark.parametrize("report", ["[1, 2]", "{not json", '{"fingerprint": []}',
                                    '{"fingerprint": {}, "misbehaving": [1], "custom_exceptions": "none", '
                                    '"unusual": [], "rebound": []}'])
def test_a_report_of_the_wrong_shape_is_evidence(report):
    submitted = small_notebook("x = 1")
    executed, canary_cells = honest_outputs(tamper.add_canaries(submitted, NONCE))
    canary_cells[1].outputs[0].text = f"DGM-CANARY {NONCE} 1 {report}\n"
    assert tamper.evidence(executed, submitted, SMALL_SOURCE, NONCE) == [
        "canary 1 (after test cell test_allclose): its report is not what the canary prints (forged or altered)"]


def test_changed_or_missing_canary_cells_are_evidence():
    submitted = small_notebook("x = 1")
    executed, canary_cells = honest_outputs(tamper.add_canaries(submitted, NONCE))
    canary_cells[2].source = canary_cells[2].source.replace("assert 1 + 1 == 3", "assert True")
    assert tamper.evidence(executed, submitted, SMALL_SOURCE, NONCE) == [
        "the canary cells were removed or changed: expected 7 unchanged, found 6 of 7 unchanged"]
    executed.cells.remove(canary_cells[2])
    found = tamper.evidence(executed, submitted, SMALL_SOURCE, NONCE)
    assert found[0].startswith("the canary cells were removed or changed")


def test_a_submitted_cell_that_claims_to_be_a_canary_is_evidence_and_loses_the_mark():
    submitted = small_notebook("x = 1")
    submitted.cells[2].metadata[canaries.CANARY_KEY] = True
    marked = tamper.add_canaries(submitted, NONCE)
    assert not canaries.is_canary(marked.cells[3]) and marked.cells[3].source == "x = 1"
    executed, _ = honest_outputs(marked)
    assert tamper.evidence(executed, submitted, SMALL_SOURCE, NONCE) == [
        "cell 2: the submission carries a cell marked as a grader canary"]


def test_a_submitted_cell_with_a_canary_id_gets_another():
    submitted = small_notebook("x = 1")
    submitted.cells[2].id = "dgm-canary-1"
    ids = [cell.id for cell in tamper.add_canaries(submitted, NONCE).cells]
    assert len(set(ids)) == len(ids) and "student-dgm-canary-1" in ids


# ---------------------------------------------------------------------------------------------------------------
# The static scan.

SCANNED = {
    "setattr(torch, 'all' + 'close', lambda *a: True)": "calls setattr() on something other than self",
    "exec(bytes.fromhex('7072696e74').decode())": "uses exec, which runs or reaches code given as data",
    "f = eval\nf('1')": "line 1: uses eval",
    "torch.Tensor.__eq__ = lambda self, other: True": "assigns torch.Tensor.__eq__",
    "import torch as T\nT.testing.assert_close = print": "assigns T.testing.assert_close",
    "import sys\nsys.modules['torch'] = None": "uses sys.modules",
    "import importlib\nimportlib.reload(torch)": "imports importlib",
    "import ctypes": "imports ctypes",
    "import gc\ngc.get_referrers(torch.allclose)": "imports gc",
    "from IPython import get_ipython": "imports IPython",
    "%load_ext tamper_extension": "uses get_ipython",
    "ip = get_ipython()\nip.events.register('pre_run_cell', print)": "uses ip.events",
    "get_ipython().ast_transformers.append(object())": "uses get_ipython().ast_transformers",
    "import sys\nsys.setprofile(print)": "uses sys.setprofile",
    "import sys\nsys.excepthook = print": "uses sys.excepthook",
    "class Always(float):\n    def __eq__(self, other):\n        return True": "line 2: defines __eq__",
    "class T(torch.Tensor):\n    @classmethod\n    def __torch_function__(cls, *args):\n        return True":
        "defines __torch_function__",
    "torch.allclose.__code__ = (lambda *a: True).__code__": "uses torch.allclose.__code__",
    "vars(math)['isclose'] = max": "calls vars() on an object",
    "import threading\nthreading.Timer(1, print).start()": "calls threading.Timer()",
    "def KLD(mean, log_std):\n    import torch\n    torch.allclose = lambda *a, **k: True\n    return mean":
        "line 3: assigns torch.allclose",
    "open('/proc/self/mem', 'rb')": "names a /proc path",
    "import os\nos.write(1, b'ok')": "calls os.write()",
    "builtins = __builtins__\nbuiltins['abs'] = max": "uses __builtins__",
    "import builtins\nbuiltins.print = len": "imports builtins",
    "del math.isclose": "deletes math.isclose",
    "%time torch.allclose = print": "line 1: assigns torch.allclose",
    "%timeit -n 1 -r 1 setattr(math, 'isclose', max)": "line 1: calls setattr()",
    "%%time\nx = 1\nmath.isclose = max": "line 3: assigns math.isclose",
    "torch = type('T', (), {'allclose': staticmethod(lambda *a: True)})()": "line 1: rebinds torch, which an import",
    "import numpy as math": "binds math to numpy, which an earlier import binds to math",
    "abs = lambda x: 0": "rebinds the builtin abs, which the tests use",
    "import os\ngetattr(os, 'sy' + 's')": "calls getattr() with a computed name",
    "import os\ngetattr(os, 'sys').modules": "reaches the module sys through os.sys",
    "import os\nos.sys.modules['torch'] = None": "uses os.sys.modules (interpreter hooks)",
}
NOT_SCANNED = [
    "%matplotlib inline\nimport matplotlib.pyplot as plt\nplt.rcParams['figure.dpi'] = 100",
    "torch.backends.cudnn.benchmark = True",
    "class Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n        setattr(self, 'w', 1)\n"
    "        self.__class__.__name__",
    "networks = {name: globals()[name] for name in ['KLD']}\nglobals().update(networks)",
    "import os\npath = os.path.join(os.environ.get('HOME', '.'), 'x')\nos.environ['X'] = '1'",
    "def broken(:\n    pass",  # a syntax error fails when it runs; it is not tampering
    "def distance(x):\n    abs = x.abs()\n    return getattr(x, 'shape'), abs",
    "%%timeit\ntorch.zeros(3).sum()",
    "%timeit -n 3 torch.zeros(3)",
    "import torch\nimport torch.nn as nn\nfrom torch import nn\nfor index in range(3):\n    pass",
]


def solution_notebook(code):
    """A notebook whose solution cell (cell 1, kld) holds `code`: as submitted, or, with the reference's code, the
    source."""
    notebook = new_notebook(cells=[new_code_cell("import math\nimport torch\nimport torch.nn as nn"),
                                   new_code_cell(code, metadata={"nbgrader": {
                                       "grade": False, "grade_id": "kld", "locked": False, "schema_version": 3,
                                       "solution": True, "task": False}}),
                                   graded_test_cell("test_kld", "assert abs(KLD(0, 1)) < 1\n"
                                                    "torch.allclose = None  # locked: restored by nbgrader")])
    return notebook


SOLUTION_SOURCE = solution_notebook("def KLD(mean, log_std):\n    return mean")


@pytest.mark.parametrize("code", SCANNED)
def test_the_scan_flags_tampering_code(code):
    found = scan.scan_notebook(solution_notebook(code), SOLUTION_SOURCE)
    assert any(SCANNED[code] in item for item in found), found
    assert all(item.startswith("cell 1 (kld), line ") for item in found)


@pytest.mark.parametrize("code", NOT_SCANNED)
def test_the_scan_leaves_ordinary_code_alone(code):
    assert scan.scan_notebook(solution_notebook(code), SOLUTION_SOURCE) == []


def test_a_solution_cell_that_the_submission_marks_locked_is_scanned():
    # nbgrader restores the locked flag from the source but keeps the student's code: the scan must read it.
    submitted = solution_notebook("torch.allclose = lambda *args, **kwargs: True")
    submitted.cells[1].metadata.nbgrader.locked = True
    assert scan.scan_notebook(submitted, SOLUTION_SOURCE) == [
        "cell 1 (kld), line 1: assigns torch.allclose, an attribute of an imported module (it can replace what the "
        "tests use)"]


def test_the_scan_leaves_the_cells_that_the_source_locks_to_nbgrader():
    submitted = solution_notebook("def KLD(mean, log_std):\n    return mean")
    submitted.cells[0].metadata["nbgrader"] = {"grade_id": "setup", "locked": False, "solution": False,
                                               "grade": False, "schema_version": 3, "task": False}
    submitted.cells[0].source = "torch.allclose = print"  # restored by nbgrader: the source locks it
    source = copy.deepcopy(SOLUTION_SOURCE)
    source.cells[0].metadata["nbgrader"] = submitted.cells[0].metadata["nbgrader"] | {"locked": True}
    assert scan.scan_notebook(submitted, source) == []


def test_a_builtin_that_a_locked_stand_in_reads_is_one_the_tests_use():
    source = copy.deepcopy(SOLUTION_SOURCE)
    source.cells.insert(2, new_code_cell("def close(a, b):\n    return max(a - b, b - a) < 1e-3", metadata={
        "nbgrader": {"grade": False, "grade_id": "standins", "locked": True, "schema_version": 3,
                     "solution": False, "task": False}}))
    submitted = solution_notebook("max = min")
    submitted.cells.insert(2, copy.deepcopy(source.cells[2]))
    assert scan.scan_notebook(submitted, source) == [
        "cell 1 (kld), line 1: rebinds the builtin max, which the tests use"]
    assert scan.scan_notebook(submitted, SOLUTION_SOURCE) == []


def test_no_example_student_is_flagged_by_the_scan():
    for source in source_notebooks():
        nbgrader_source = notebooks.to_nbgrader_source(notebooks.read_source(source))
        release = notebooks.read(ROOT / "assignment" / f"{source.stem}.ipynb")
        for example in examples.load_examples(source.stem):
            submitted = examples.submission(example, release, nbgrader_source)
            assert scan.scan_notebook(submitted, nbgrader_source) == [], f"{source.stem}, {example.student}"

