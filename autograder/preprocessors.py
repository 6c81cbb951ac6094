"""nbgrader preprocessors of the course (nbgrader_config.py adds them to nbgrader's own pipelines)."""
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Integer

from .limits import Limits


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
