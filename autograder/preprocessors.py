"""nbgrader preprocessors of the course (nbgrader_config.py adds them to nbgrader's own pipelines; the grading
unit puts ExecuteWithinLimits in place of nbgrader's Execute)."""
import json

from nbformat.v4 import new_output
from nbgrader.preprocessors import Execute, NbGraderPreprocessor
from traitlets import Integer

from .limits import Limits
from .notebooks import is_test_cell
from .tamper.canaries import CANARY_KEY

# Notebook metadata in which ExecuteWithinLimits says what it cut (the grading unit reads it, then removes it).
OUTPUTS_CUT = "dgm_outputs_cut"
# How a cell that lost outputs says so, where the first went (on stderr: nbgrader scores a test cell with it 0).
OUTPUTS_CUT_MARK = "[outputs cut]"
# Outputs of a grader's canary cell kept whatever the notebook's budget (its report line and its deliberate error).
CANARY_OUTPUTS = 4


class TruncateLongOutputs(NbGraderPreprocessor):
    """Cut every output text to `max_characters`, so that a huge print or error message cannot make a huge
    autograded notebook or feedback page (nbgrader's LimitOutput counts lines: one 200 MB line passes it)."""

    max_characters = Integer(Limits.output_characters, help="characters kept of each output text (-1: no limit)").tag(config=True)

    def truncated(self, text):
        if self.max_characters < 0 or len(text) <= self.max_characters:
            return text
        return f"{text[:self.max_characters]}\n... Output truncated ({len(text):,} characters) ..."

    def preprocess_cell(self, cell, resources, cell_index):
        for output in cell.get("outputs", []):
            if "text" in output:
                output.text = self.truncated(output.text)
            for mime, value in output.get("data", {}).items():
                if isinstance(value, str):
                    output.data[mime] = self.truncated(value)
            if "evalue" in output:
                output.evalue = self.truncated(output.evalue)
                output.traceback = [self.truncated(line) for line in output.traceback]
        return cell, resources


class RefuseUnsandboxedAutograde(NbGraderPreprocessor):
    """Stops nbgrader's own autograde in a course folder (`nbgrader autograde` run there by hand, the formgrader's
    autograde button) before any student code runs: nbgrader would run it outside the sandbox, with the
    instructor's rights over the course folder and the gradebook. The course folder's nbgrader_config.py
    (release.COURSE_CONFIG) puts it in place of the autograde steps; `make grade` grades with the course's
    configuration (autograder/nbgrader_config.py), each kernel sandboxed."""

    def preprocess(self, nb, resources):
        raise RuntimeError(
            "nbgrader's own autograde is switched off in this course folder: it would run student code outside "
            "the sandbox, with your rights. Grade with `make grade` (python -m autograder.grading --course "
            "<this folder>) from the course repository: it autogrades every submission sandboxed and fills the "
            "same gradebook.")


def is_observation(msg):
    """Whether a kernel message is a hidden test's observations (course_utils.send_to_judge)."""
    from solutions.course_utils import OBSERVATIONS_TYPE  # torch comes with it: only where notebooks run

    return msg["msg_type"] == "display_data" and OBSERVATIONS_TYPE in msg["content"].get("data", {})


def kept_size(output, max_characters=Limits.output_characters):
    """The bytes one output takes in the autograded notebook, as JSON, nested data and metadata included, once
    TruncateLongOutputs has cut its texts to `max_characters` (-1: no limit)."""
    def cut(value):
        return value[:max_characters] if isinstance(value, str) and max_characters >= 0 else value

    shown = dict(output)
    for key in ("text", "evalue"):
        if key in shown:
            shown[key] = cut(shown[key])
    if isinstance(shown.get("data"), dict):
        shown["data"] = {mime: cut(value) for mime, value in shown["data"].items()}
    if isinstance(shown.get("traceback"), list):
        shown["traceback"] = [cut(line) for line in shown["traceback"]]
    return len(json.dumps(shown, default=str))


def readable_size(count):
    """4194304 -> '4 MiB'."""
    for unit in ("B", "KiB", "MiB"):
        if count < 1024 or unit == "MiB":
            return f"{count:.3g} {unit}"
        count /= 1024


class ExecuteWithinLimits(Execute):
    """nbgrader's Execute, keeping at most `max_outputs` outputs and `max_output_bytes` of them (kept_size: nested
    JSON data and metadata included) in the whole notebook, as they arrive from the kernel: later ones are dropped,
    so that neither the autograded notebook nor the grader's memory grows with what a notebook floods (20,000
    small display() calls, 30 MB nested in a JSON output's data or metadata, display updates...). Kept whatever
    the budget: the first error of each cell (it decides a test's score) and a grader canary cell's few outputs.
    A cell that lost outputs says so where the first went; the notebook's metadata[OUTPUTS_CUT] says how many
    (the grading unit reports it). Widget state is not kept (an autograded notebook shows no widgets).
    The hidden tests' observations in test cells count against `max_observation_bytes` instead (the judges read
    them, then drop them), so that neither a probe's data nor a notebook's outputs crowd the other out."""

    max_outputs = Integer(Limits.notebook_outputs, help="outputs kept in the whole notebook").tag(config=True)
    max_output_bytes = Integer(Limits.notebook_output_bytes, help="bytes of outputs kept in the whole notebook"
                               ).tag(config=True)
    max_characters = Integer(Limits.output_characters, help="characters TruncateLongOutputs keeps of each "
                             "output text (outputs are measured as it will leave them)").tag(config=True)
    max_observation_bytes = Integer(Limits.observation_bytes, help="bytes of the hidden tests' observations kept "
                                    "in the whole notebook").tag(config=True)
    store_widget_state = False

    def reset_execution_trackers(self):
        super().reset_execution_trackers()
        self.widget_registry = {}  # no Output widget captures outputs past the budget
        self.kept_outputs, self.kept_bytes, self.dropped, self.seen = 0, 0, 0, 0
        self.observation_bytes = 0
        self.sizes = {}  # id(kept output) -> its kept_size
        self.cut_cells = []  # [(cell id, grade_id)] of the cells that lost outputs, in order
        self.markers = {}  # id(a cell's outputs) -> the mark that says they were cut

    def preprocess(self, nb, resources=None, km=None):
        nb.metadata.pop(OUTPUTS_CUT, None)  # only this run says what it cut
        nb, resources = super().preprocess(nb, resources, km)
        if self.dropped:
            nb.metadata[OUTPUTS_CUT] = {"dropped": self.dropped, "outputs": self.seen,
                                        "max_outputs": self.max_outputs, "max_bytes": self.max_output_bytes,
                                        "cells": self.cut_cells[:20]}
        return nb, resources

    def release(self, outputs):
        """The budget that `outputs`, about to be cleared, held."""
        for output in outputs:
            if id(output) in self.sizes:
                self.kept_bytes -= self.sizes.pop(id(output))
                self.kept_outputs -= 1

    def clear_output(self, outs, msg, cell_index):
        if not msg["content"].get("wait") and not self.output_hook_stack[msg["parent_header"].get("msg_id")]:
            self.release(outs)
        super().clear_output(outs, msg, cell_index)

    def output(self, outs, msg, display_id, cell_index):
        if self.clear_before_next_output:
            self.release(outs)
        self.seen += 1
        cell = self.nb.cells[cell_index]
        if is_test_cell(cell) and is_observation(msg):
            return self.observation(outs, msg, display_id, cell_index)
        # measured only when it may be kept: past the count, a flood costs no serialisation
        size = kept_size(msg["content"], self.max_characters) if self.kept_outputs < self.max_outputs else 0
        if cell.metadata.get(CANARY_KEY):
            keep = len(outs) < CANARY_OUTPUTS
        elif msg["msg_type"] == "error" and not any(out.get("output_type") == "error" for out in outs):
            keep = True
        else:
            keep = self.kept_outputs < self.max_outputs and self.kept_bytes + size <= self.max_output_bytes
        if not keep:
            self.dropped += 1
            self.mark_cut(cell, outs)
            return None
        out = super().output(outs, msg, display_id, cell_index)
        if out is not None:
            self.sizes[id(out)] = size
            self.kept_outputs += 1
            self.kept_bytes += size
        return out

    def observation(self, outs, msg, display_id, cell_index):
        """A hidden test's observations, kept within their own budget."""
        size = len(json.dumps(msg["content"].get("data", {})))
        if self.observation_bytes + size > self.max_observation_bytes:
            self.dropped += 1
            self.mark_cut(self.nb.cells[cell_index], outs)
            return None
        self.observation_bytes += size
        return super().output(outs, msg, display_id, cell_index)

    def _update_display_id(self, display_id, msg):
        """A display update replaces kept outputs' data and metadata: dropped if the new ones pass the budget."""
        targets = [self.nb.cells[cell_index].outputs[index]
                   for cell_index, indices in self._display_id_map.get(display_id, {}).items()
                   for index in indices if index < len(self.nb.cells[cell_index].outputs)]
        size = kept_size({**msg["content"], "output_type": "display_data"}, self.max_characters)
        growth = sum(size - self.sizes.get(id(output), 0) for output in targets)
        if targets and self.kept_bytes + growth > self.max_output_bytes:
            self.seen += 1
            self.dropped += 1
            return
        super()._update_display_id(display_id, msg)
        for output in targets:
            if id(output) in self.sizes:
                self.kept_bytes += size - self.sizes[id(output)]
                self.sizes[id(output)] = size

    def mark_cut(self, cell, outs):
        """Say in the cell, where its first output went, that outputs were cut from here (once: outputs kept
        after the mark are few, errors and what a cleared output freed)."""
        key = (cell.get("id"), cell.metadata.get("nbgrader", {}).get("grade_id"))
        if key not in self.cut_cells:
            self.cut_cells.append(key)
        if any(out is self.markers.get(id(outs)) for out in outs[-4:]):
            return
        self.markers[id(outs)] = new_output("stream", name="stderr", text=(
            f"{OUTPUTS_CUT_MARK} The notebook reached the grader's limit of {self.max_outputs:,} outputs / "
            f"{readable_size(self.max_output_bytes)} of outputs: this cell's outputs from here on are not kept.\n"))
        outs.append(self.markers[id(outs)])
