"""The canary cells: added around the test cells of a submission before nbgrader runs it, read back after.

Each canary runs the probe (probe.py) in the student's kernel, prints its report as one line
`DGM-CANARY <nonce> <index> <json>`, then fails on purpose with an AssertionError that carries the nonce.
`canary_evidence` checks that every canary cell is present and unchanged, printed exactly one report with this
run's nonce and shows exactly its deliberate error, and compares each report's fingerprints with the first
canary's. The nonce is fresh for every grading run and appears only in the canary cells, which are added after
the student submitted: a kernel that empties cells, wraps them in try/except, hides errors or reports success
cannot show the deliberate error, and student code cannot prepare a report before it sees the nonce.
"""
import copy
import json
from pathlib import Path

import nbformat

from .. import notebooks
from .scan import names_used_by_tests

CANARY_KEY = "dgm_canary"  # cell metadata that marks a canary cell
REPORT_PREFIX = "DGM-CANARY"
# The probe's text, as every canary cell ships it into the kernel (read once, when the worker starts).
PROBE = (Path(__file__).parent / "probe.py").read_text(encoding="utf-8")
# The name under which a canary cell keeps the probe's namespace while it runs (deleted before the cell ends).
PROBE_NAMESPACE = "_dgm_canary_probe"


def canary_source(nonce, index, where):
    """The code of canary `index` (`where` says where it sits, for the reader)."""
    # The report line is printed as one string: the kernel flushes its output between two writes when it likes,
    # and print(a, b, c) writes each argument, so the line could come back split across two outputs.
    return "\n".join([
        f"# Autograder canary {index} ({where}): checks that nothing tampered with grading. Added by the grader.",
        "# It runs the grader's probe (autograder/tamper/probe.py) in a namespace of its own: the notebook's names",
        "# stay as they are.",
        f"{PROBE_NAMESPACE} = {{}}",
        f"exec({PROBE!r}, {PROBE_NAMESPACE})",
        f"print({report_prefix(nonce, index)!r} + {PROBE_NAMESPACE}['report']({nonce!r}, {index}))",
        f"del {PROBE_NAMESPACE}",
        f"assert 1 + 1 == 3, {deliberate_error(nonce, index)!r}",
    ])


def report_prefix(nonce, index):
    """How canary `index`'s report line starts: `DGM-CANARY <nonce> <index> ` (its JSON follows)."""
    return f"{REPORT_PREFIX} {nonce} {index} "


def deliberate_error(nonce, index):
    return f"DGM canary {index} {nonce}: fails on purpose, so that the grader sees errors are shown"


def is_canary(cell):
    return bool(cell.get("metadata", {}).get(CANARY_KEY))


def canary_places(notebook):
    """[(position in notebook.cells before which a canary goes, where it sits)], in order."""
    places = [(0, "at the start")]
    for position, cell in enumerate(notebook.cells):
        if notebooks.is_test_cell(cell):
            places.append((position + 1, f"after test cell {notebooks.nbgrader_of(cell)['grade_id']}"))
    places.append((len(notebook.cells), "at the end"))
    return places


def new_canary_cell(notebook, nonce, index, where):
    cell = nbformat.v4.new_code_cell(canary_source(nonce, index, where), id=f"dgm-canary-{index}",
                                     metadata={CANARY_KEY: True, "editable": False, "deletable": False})
    if (notebook.nbformat, notebook.nbformat_minor) < (4, 5):
        del cell["id"]  # cell ids came with nbformat 4.5
    return cell


def add_canaries(notebook, nonce):
    """A copy of the submitted `notebook` with canary cells: at the start, after each test cell, at the end.

    A cell of the submission that claims to be a canary loses that mark (canary_evidence reports it), and one
    whose id a canary takes gets another."""
    marked = copy.deepcopy(notebook)
    for cell in marked.cells:
        cell.get("metadata", {}).pop(CANARY_KEY, None)
        if cell.get("id", "").startswith("dgm-canary-"):
            cell.id = "student-" + cell.id[:50]
    cells = list(marked.cells)
    for index, (position, where) in reversed(list(enumerate(canary_places(marked)))):
        cells.insert(position, new_canary_cell(marked, nonce, index, where))
    marked.cells = cells
    return marked


def remove_canaries(notebook):
    """A copy of `notebook` without the canary cells."""
    cleaned = copy.deepcopy(notebook)
    cleaned.cells = [cell for cell in cleaned.cells if not is_canary(cell)]
    return cleaned


# ---------------------------------------------------------------------------------------------------------------
# Evidence: what the executed canaries show.

def canary_evidence(executed, submitted, source, nonce):
    """What tampering the canaries show, each item naming the canary and where it sits, and the submitted cells
    that claim to be canaries; [] when clean. `source`: the source notebook, whose test cells say which of the
    notebook's names the tests use."""
    claimed = [f"{notebooks.cell_label(submitted.cells[index], index)}: the submission carries a cell marked as a grader canary"
               for index, cell in enumerate(submitted.cells) if is_canary(cell)]
    return executed_canary_evidence(executed, submitted, source, nonce) + claimed


def executed_canary_evidence(executed, submitted, source, nonce):
    expected = [cell for cell in add_canaries(submitted, nonce).cells if is_canary(cell)]
    wheres = [where for _, where in canary_places(submitted)]
    found = [cell for cell in executed.cells if is_canary(cell)]
    if [cell.source for cell in found] != [cell.source for cell in expected]:
        return [f"the canary cells were removed or changed: expected {len(expected)} unchanged, found "
                f"{sum(cell.source in {e.source for e in expected} for cell in found)} of {len(found)} unchanged"]
    used_by_tests = names_used_by_tests(source)
    items, seen, start = [], set(), None
    for index, (cell, where) in enumerate(zip(found, wheres)):
        report, problems = read_canary_outputs(cell, nonce, index)
        if report is not None and index == 0:
            start = report.get("fingerprint", {})
        if report is not None:
            problems += canary_findings(report, start, used_by_tests)
        for problem in problems:
            if problem not in seen:  # a change stays visible to every later canary: report where it first shows
                seen.add(problem)
                items.append(f"canary {index} ({where}): {problem}")
    return items


def read_canary_outputs(cell, nonce, index):
    """(the canary's report or None, [problems with its outputs])."""
    if not cell.get("outputs"):
        return None, ["no output at all: the cell was emptied or never ran (an input transformer, a kernel that "
                      "skips cells, or the kernel died)"]
    # The kernel wrote these outputs: read them with .get, as any field may be missing.
    prefix = report_prefix(nonce, index)
    lines = [line for output in cell.outputs if output.get("output_type") == "stream"
             for line in "".join(output.get("text", "")).splitlines() if line.startswith(REPORT_PREFIX)]
    errors = [(str(output.get("ename")), str(output.get("evalue")))
              for output in cell.outputs if output.get("output_type") == "error"]
    problems = []
    if ("AssertionError", deliberate_error(nonce, index)) not in errors:
        shown = ("shown instead: " + "; ".join(f"{name}: {value}"[:200] for name, value in errors)
                 if errors else "no error")
        problems.append(f"its deliberate error is not shown ({shown}): errors are being hidden (try/except around "
                        "cells, a replaced showtraceback or exception handler, or a kernel that reports success)")
    if len(errors) > 1:
        problems.append(f"{len(errors)} errors shown instead of one")
    reports = [line[len(prefix):] for line in lines if line.startswith(prefix)]
    if len(reports) != 1 or len(lines) != 1:
        problems.append(f"expected one report line with this run's nonce, found {len(reports)} "
                        f"(and {len(lines) - len(reports)} forged or stale ones)")
        return None, problems
    try:
        report = json.loads(reports[0])
    except ValueError:
        report = None
    if not well_formed(report):
        return None, problems + ["its report is not what the canary prints (forged or altered)"]
    return report, problems


def well_formed(report):
    """Whether a parsed report has the shape the probe gives it (so that reading it cannot fail)."""
    texts = ("misbehaving", "unusual", "rebound")
    return (isinstance(report, dict) and isinstance(report.get("fingerprint"), dict)
            and isinstance(report.get("custom_exceptions"), str)
            and all(isinstance(report.get(key), list) and all(isinstance(item, str) for item in report[key])
                    for key in texts))


def canary_findings(report, start, used_by_tests):
    """The tampering one canary report shows: its fingerprint compared with the first canary's (`start`), and
    what it found directly; `used_by_tests`: the names the test cells read."""
    fingerprint, findings = report.get("fingerprint", {}), []
    if start is not None:  # else the first canary's missing output is the evidence
        findings += [f"changed since the start of the notebook: {name}"
                     for name in sorted(set(fingerprint) | set(start)) if fingerprint.get(name) != start.get(name)]
    findings += report.get("misbehaving", [])
    findings += [f"the notebook's name {name!r}, which the tests use, no longer holds the builtin or module it "
                 f"names" for name in report.get("rebound", []) if name in used_by_tests]
    custom = report.get("custom_exceptions")
    if custom not in ("none", "course"):
        findings.append(f"a custom exception handler was installed: {custom}")
    findings += report.get("unusual", [])
    return findings
