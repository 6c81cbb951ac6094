"""The trusted judge: the second half of every hidden test, run in the grading process, never in the student's.

A hidden test is written as probe(seed) and judge(observed, seed) (solutions/README.md). nbgrader runs the probe in
the student's sandboxed kernel (course_utils.send_to_judge), which outputs what it observed as data; here, after
nbgrader's autograde, each test cell's judge gets those observations and the same seed, builds the test's inputs
again, computes the expected answers with the reference solution (the exported solution module stands in for the
student's names) and compares. The expected values, tolerances and comparisons never enter the student's process,
so nothing a student's code reads or prints there can reveal them, and observations forged there gain nothing.

The executed notebook comes back with each judged test cell's outputs as the student may see them: those of its
visible tests, its first error, and a failed judge's message as the cell's error, which nbgrader scores 0. What the
probe printed and the observations themselves are dropped, and no output of a test cell can pass for a score.
"""
import json
import traceback
from dataclasses import dataclass

from nbformat.v4 import new_output

from solutions import course_utils

from .. import notebooks
from ..preprocessors import OUTPUTS_CUT_MARK

@dataclass(frozen=True)
class Judges:
    """The judges of one assignment, as release.py writes them (notebooks.judges) to <course>/judges/<name>.json."""
    module: str  # the solution module, e.g. "solutions.vae"
    preamble: tuple  # code of the source's locked and judge-only cells, run after `from module import *`
    tests: dict  # {test grade_id: the code of its hidden tests region}

    @classmethod
    def from_data(cls, found):
        """From notebooks.judges's dict."""
        return cls(found["module"], tuple(found["preamble"]), dict(found["tests"]))

    @classmethod
    def from_bytes(cls, data):
        """From the JSON file release.py writes."""
        return cls.from_data(json.loads(data.decode("utf-8")))

    def namespace(self):
        """The names every judge of the assignment sees: the reference solution's, then the preamble's."""
        namespace = {"__name__": "__judge__"}
        exec(f"from {self.module} import *", namespace)
        for code in self.preamble:
            exec(compile(code, f"<{self.module} locked cell>", "exec"), namespace)
        return namespace

    def judge(self, grade_id, observed, seed, namespace):
        """Run the judge of test `grade_id` on `observed` in a copy of `namespace`; its failure message, or ''."""
        names = dict(namespace)
        exec(compile(self.tests[grade_id], f"<hidden tests of {grade_id}>", "exec"), names)
        try:
            names[notebooks.JUDGE](observed, seed)
        except AssertionError as failure:
            return str(failure) or f"{grade_id} failed"
        return ""


def judged(notebook, judges, namespace, seed):
    """Judge every test cell of the executed `notebook` that has hidden tests, in place, with the names
    `namespace` (judges.namespace()); returns the log lines (why a judge could not run, with its traceback)."""
    log = []
    for grade_id, cell in notebooks.test_cells(notebook).items():
        cell.outputs = [without_score(output) for output in cell.outputs]
        if grade_id not in judges.tests:
            continue
        cut = any(OUTPUTS_CUT_MARK in output.get("text", "") for output in cell.outputs)
        kept, observed = probe_outputs(cell.outputs)
        message = ""
        if not any(output.output_type == "error" for output in kept):
            message, problem = verdict(judges, grade_id, observed, seed, namespace, cut)
            log += [f"judge of {grade_id}: {problem}"] if problem else []
        cell.outputs = kept + ([failure_output(message)] if message else [])
    return log


def verdict(judges, grade_id, observed, seed, namespace, cut=False):
    """(the message of a failed test or '', a problem for the log or '') of one test's judge; `cut`: the cell's
    outputs were cut at the grader's limit."""
    if observed is None and cut:
        return ("the hidden tests' observations did not reach the grader: the cell's outputs were cut at the "
                "grader's limit (does your code print or display a lot here?)"), ""
    if observed is None:
        return "the hidden tests' probe sent no observations: did your code stop or replace it?", ""
    try:
        observations = course_utils.observations_from_data(observed)
    except (ValueError, TypeError, KeyError) as error:
        return f"the observations of the hidden tests are unreadable ({error})", ""
    try:
        return judges.judge(grade_id, observations, seed, namespace), ""
    except Exception as error:  # observations of an unexpected kind or shape (or a judge's own bug: logged)
        return (f"your code's results are not what the hidden tests expect to compare "
                f"({type(error).__name__}: {str(error)[:300]})", traceback.format_exc())


def probe_outputs(outputs):
    """(the outputs a student may see: those before the probe began, and every error; the last observations the
    probe sent, as data, or None)."""
    kept, observed, probing = [], None, False
    for output in outputs:
        data = output.get("data", {}).get(course_utils.OBSERVATIONS_TYPE)
        if data == course_utils.PROBE_STARTED:
            probing = True
        elif isinstance(data, dict) and course_utils.OBSERVATIONS in data:
            observed = data[course_utils.OBSERVATIONS]
        elif output.output_type == "error" or not probing:
            kept.append(output)
    return kept, observed


def without_score(output):
    """A test cell's output that nbgrader cannot read as a score: an execute_result becomes the display of the same
    data. A test cell ends with no value, so such a result is the student's code's (sys.displayhook), and nbgrader
    would give its value, or full marks for text, as the cell's partial credit, whatever error follows it."""
    if output.output_type != "execute_result":
        return output
    return new_output("display_data", data=output.get("data", {}), metadata=output.get("metadata", {}))


def failure_output(message):
    """A failed judge as the cell's error output (nbgrader scores the cell 0; feedback shows the message)."""
    return new_output("error", ename="AssertionError", evalue=message, traceback=[f"AssertionError: {message}"])


def probe_and_judge(region, grade_id, namespace, judges, judge_namespace, seed):
    """A hidden test in one process, as grading runs it in two (the course's authoring tools): its probe in the
    notebook's `namespace`, the observations through their data form, its judge; the failure message, or ''."""
    # as in the kernel: the probe defined inside a function of the notebook's namespace, which it leaves as it is
    exec(compile(notebooks.probe_runner(region, f"return {notebooks.PROBE}"), f"<probe of {grade_id}>", "exec"),
         namespace)
    probe = namespace.pop(notebooks.KERNEL_RUNNER)()
    data = json.loads(json.dumps(course_utils.observations_to_data(probe(seed))))
    return judges.judge(grade_id, course_utils.observations_from_data(data), seed, judge_namespace)
