"""nbgrader configuration of the course. The tools in this folder run nbgrader from here, on the course
folder build/course (overridden with --CourseDirectory.root)."""
from pathlib import Path

from autograder.course import AUTOGRADER, COURSE
from autograder.limits import Limits

c = get_config()  # noqa: F821, provided by nbgrader when it loads this file

c.CourseDirectory.root = str(COURSE)
c.CourseDirectory.course_id = "deep-generative-models"

# The stub that replaces each solution region, as the course has always shown it.
c.ClearSolutions.code_stub = {"python": "\n".join([
    "#######################",
    "# PUT YOUR CODE HERE  #",
    "#######################",
    "raise NotImplementedError",
    "#######################",
    "# END OF YOUR CODE    #",
    "#######################",
])}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"

# A student cell that runs for more than a minute is stopped and counts as failed; training cells skip
# themselves while NBGRADER_EXECUTION is set, so correct work needs far less.
c.Execute.timeout = Limits.cell_seconds
c.Execute.interrupt_on_timeout = True
# After a cell's reply, its last outputs may lag on a loaded machine (nbclient waits 4 s by default, then fails
# the whole notebook).
c.Execute.iopub_timeout = 30

# Outputs kept in autograded notebooks and feedback: nbgrader's LimitOutput caps lines and traceback lines, the
# course's TruncateLongOutputs caps characters per output (a single 200 MB line passes LimitOutput).
from nbgrader.converters import Autograde  # noqa: E402
from nbgrader.preprocessors import LimitOutput  # noqa: E402

from autograder.preprocessors import TruncateLongOutputs  # noqa: E402

_pipeline = Autograde.class_traits()["autograde_preprocessors"].default()
c.Autograde.autograde_preprocessors = (_pipeline[:_pipeline.index(LimitOutput) + 1] + [TruncateLongOutputs]
                                       + _pipeline[_pipeline.index(LimitOutput) + 1:])

# Feedback (autograder/lms/feedback.py): hidden tests show their names, points and failure messages only; a note
# while written answers wait for a grader; math from the MathJax copy in <course>/feedback/mathjax/.
c.GenerateFeedback.preprocessors = [
    "nbgrader.preprocessors.GetGrades",
    "autograder.lms.feedback.HideHiddenTests",
    "autograder.lms.feedback.NoteUngradedAnswers",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
]
c.GenerateFeedback.exporter_class = "autograder.lms.feedback.FeedbackExporter"
c.FeedbackExporter.template_name = "course_feedback"
c.FeedbackExporter.extra_template_basedirs = [str(AUTOGRADER / "templates"), str(
    Path(__import__("nbgrader").__file__).parent / "server_extensions" / "formgrader" / "templates")]
