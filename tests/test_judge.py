"""The trusted judge (autograder/grading/judge.py): observations cross from the kernel as data only, read without
trusting them; the release splits every hidden test into the probe the kernel runs and the judge it never sees;
the judged notebook keeps what a student may see and scores a failed judge 0."""
import base64
import io
import json
import math

import nbformat
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from nbgrader.utils import determine_grade

from autograder import notebooks
from autograder.grading import judge
from solutions import course_utils

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.uint8,
          torch.bool]


def crossed(value):
    """`value` as the judge gets it: to data in the kernel, through JSON, back to values in the grader."""
    return course_utils.observations_from_data(json.loads(json.dumps(course_utils.observations_to_data(value))))


@st.composite
def tensors(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.lists(st.integers(0, 4), max_size=3))
    values = torch.randn(shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 2**16)))) * 100
    tensor = values.to(dtype)
    return tensor.to("meta") if draw(st.booleans()) and dtype.is_floating_point else tensor


observations = st.recursive(
    st.none() | st.booleans() | st.integers(-2**62, 2**62) | st.floats() | st.text(max_size=20) | tensors()
    | st.sampled_from(DTYPES) | st.sampled_from([torch.device("cpu"), torch.device("meta")]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10)


def same(value, other):
    """Equal as observations: tensors by dtype, shape, device and values (nan equal to nan)."""
    if isinstance(value, torch.Tensor):
        return (isinstance(other, torch.Tensor) and (value.dtype, value.shape, value.device.type)
                == (other.dtype, other.shape, other.device.type)
                and (value.is_meta or torch.equal(torch.nan_to_num(value.float(), nan=7.0),
                                                  torch.nan_to_num(other.float(), nan=7.0))))
    if isinstance(value, (list, tuple)):
        return isinstance(other, list) and len(value) == len(other) and all(map(same, value, other))
    if isinstance(value, dict):
        return isinstance(other, dict) and value.keys() == other.keys() and all(same(value[k], other[k]) for k in value)
    if isinstance(value, float) and math.isnan(value):
        return isinstance(other, float) and math.isnan(other)
    return type(value) is type(other) and value == other


@settings(max_examples=150, deadline=None)
@given(observations)
def test_observations_cross_as_data_unchanged(value):
    assert same(value, crossed(value))


def test_gradients_and_sizes_cross_as_tensors_and_lists():
    leaf = torch.ones(2, requires_grad=True)
    (leaf * 3).sum().backward()
    observed = crossed({"grad": leaf.grad, "shape": torch.Size([4, 2]), "requires_grad": leaf * 2})
    assert torch.equal(observed["grad"], torch.full((2,), 3.0)) and observed["shape"] == [4, 2]
    assert observed["requires_grad"].requires_grad


def test_a_student_object_is_no_observation():
    with pytest.raises(TypeError, match="not Linear"):
        course_utils.observations_to_data({"model": torch.nn.Linear(2, 2)})


def npy(array, allow_pickle=False):
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize("data", [
    {"tensor": {"npy": npy(np.array([{"a": 1}], dtype=object), allow_pickle=True), "shape": [1],
                "dtype": "float32"}},  # a pickle inside .npy
    {"tensor": {"npy": npy(np.zeros(3)), "shape": [4], "dtype": "float64"}},  # its shape says otherwise
    {"tensor": {"npy": None, "shape": [3], "dtype": "float32", "device": "cpu"}},  # no values, not meta
    {"tensor": {"npy": npy(np.zeros(3)), "shape": [3], "dtype": "os"}},  # not a dtype
    {"dtype": "nn"}, {"float": "1e400"}, {"module": "os"}, {"dict": [1]}, {"a": 1, "b": 2},
], ids=["pickle", "shape", "no-values", "not-a-dtype", "not-a-dtype-name", "float", "unknown", "dict", "two-keys"])
def test_observations_are_read_without_trusting_them(data):
    with pytest.raises(ValueError):
        course_utils.observations_from_data(data)


HIDDEN = '''def test_f():
    assert f(1) == 2, "f(1)"


test_f()
del test_f
### BEGIN HIDDEN TESTS
import math


def cases(seed):
    return [seed, seed + 1]


def probe(seed):
    return {"values": [f(x) for x in cases(seed)]}


@staticmethod
def judge(observed, seed):
    assert observed["values"] == [2 * x for x in cases(seed)], "f doubles its argument"
### END HIDDEN TESTS'''


def test_the_kernel_runs_the_probe_and_never_sees_the_judge():
    kernel = notebooks.kernel_hidden_tests(HIDDEN, "cell 3")
    assert "judge" not in kernel.replace("send_to_judge", "") and "f doubles" not in kernel
    assert "    def probe(seed):" in kernel and "    def cases(seed):" in kernel and "    import math" in kernel
    assert kernel.endswith("    course_utils.send_to_judge(probe)\n\n\nrun_hidden_tests()\ndel run_hidden_tests\n"
                           "### END HIDDEN TESTS")
    assert notebooks.without_hidden_tests(kernel) == notebooks.without_hidden_tests(HIDDEN)


@pytest.mark.parametrize("region", ["def probe(seed):\n    return 1\n", "def judge(observed, seed):\n    pass\n",
                                    "def test():\n    pass\n"])
def test_a_hidden_test_without_probe_or_judge_is_refused(region):
    with pytest.raises(ValueError, match="probe.*judge"):
        notebooks.kernel_hidden_tests(f"x = 1\n### BEGIN HIDDEN TESTS\n{region}### END HIDDEN TESTS", "cell 3")


def test_hidden_tests_inside_a_function_are_refused():
    """The former form, whose asserts would run in the kernel: release stops and says what to do."""
    source = "def test_f():\n    assert f(1) == 2\n    ### BEGIN HIDDEN TESTS\n    assert f(2) == 4\n    ### END HIDDEN TESTS\n"
    with pytest.raises(ValueError, match="top level"):
        notebooks.kernel_hidden_tests(source, "cell 3")


def executed_test_cell(outputs):
    nbgrader = {"grade": True, "solution": False, "locked": True, "grade_id": "test_f", "points": 2,
                "schema_version": 3}
    cell = nbformat.v4.new_code_cell(HIDDEN, metadata={"nbgrader": nbgrader})
    cell.outputs = outputs
    return nbformat.v4.new_notebook(cells=[cell])


def display(value):
    return nbformat.v4.new_output("display_data", data={course_utils.OBSERVATIONS_TYPE: value})


JUDGES = judge.Judges("math", (), {"test_f": notebooks.hidden_tests(HIDDEN, "test")})
VISIBLE = nbformat.v4.new_output("stream", name="stdout", text="visible test ran\n")
PROBE_PRINTS = nbformat.v4.new_output("stream", name="stdout", text="the student's code printed this\n")


def judged_outputs(*outputs, seed=5):
    notebook = executed_test_cell(list(outputs))
    judge.judged(notebook, JUDGES, JUDGES.namespace(), seed)
    cell = notebook.cells[0]
    return [(output.output_type, output.get("text", output.get("evalue"))) for output in cell.outputs], \
        determine_grade(cell)[0]


def observed(values):
    return display({course_utils.OBSERVATIONS: course_utils.observations_to_data({"values": values})})


def test_a_right_answer_keeps_the_visible_outputs_only():
    outputs, score = judged_outputs(VISIBLE, display(course_utils.PROBE_STARTED), PROBE_PRINTS, observed([10, 12]))
    assert (outputs, score) == ([("stream", "visible test ran\n")], 2)


def test_a_wrong_answer_shows_the_judges_message_and_scores_0():
    outputs, score = judged_outputs(VISIBLE, display(course_utils.PROBE_STARTED), PROBE_PRINTS, observed([10, 11]))
    assert (outputs, score) == ([("stream", "visible test ran\n"), ("error", "f doubles its argument")], 0)


def test_the_last_observations_count_and_inputs_come_from_the_graders_seed():
    right_for_seed_0 = observed([0, 2])
    outputs, score = judged_outputs(VISIBLE, display(course_utils.PROBE_STARTED), observed([10, 12]), right_for_seed_0)
    assert score == 0


@pytest.mark.parametrize("outputs, message", [
    ([VISIBLE], "sent no observations"),
    ([display(course_utils.PROBE_STARTED), display({course_utils.OBSERVATIONS: {"tensor": {"npy": "!!"}}})], "unreadable"),
    ([display(course_utils.PROBE_STARTED), display({course_utils.OBSERVATIONS: {"dict": {}}})], "not what the hidden"),
], ids=["none", "unreadable", "unexpected"])
def test_missing_or_bad_observations_fail_with_a_message(outputs, message):
    shown, score = judged_outputs(*outputs)
    assert score == 0 and message in shown[-1][1]


def test_an_error_in_the_cell_is_kept_and_the_judge_does_not_run():
    error = nbformat.v4.new_output("error", ename="AssertionError", evalue="f(1)", traceback=["AssertionError: f(1)"])
    assert judged_outputs(VISIBLE, error) == ([("stream", "visible test ran\n"), ("error", "f(1)")], 0)


def test_a_value_the_students_code_displays_is_no_score():
    """nbgrader reads a test cell's execute_result as its partial credit (text as full marks), before the error
    that follows it: a student's sys.displayhook("pass") would score a failed test."""
    result = nbformat.v4.new_output("execute_result", data={"text/plain": "'pass'"}, execution_count=1)
    outputs, score = judged_outputs(result, display(course_utils.PROBE_STARTED), observed([10, 11]))
    assert (outputs, score) == ([("display_data", None), ("error", "f doubles its argument")], 0)


def test_the_probes_names_leave_the_notebooks_alone():
    """The kernel runs a hidden test inside a function: a name it defines (math, cases) neither replaces nor
    removes the notebook's."""
    namespace = {"math": "the notebook's math", "f": lambda x: 2 * x, "course_utils": course_utils}
    sent = []
    kernel = notebooks.kernel_hidden_tests(HIDDEN, "cell 3")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(course_utils.JUDGE_SEED_VARIABLE, "4")
        patch.setattr("IPython.display.display", lambda value, raw: sent.append(value))
        exec(kernel, namespace)
    assert namespace["math"] == "the notebook's math" and "cases" not in namespace and "probe" not in namespace
    assert sent[-1][course_utils.OBSERVATIONS_TYPE]["observations"] == {"dict": {"values": [8, 10]}}
