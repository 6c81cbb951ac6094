"""No student script runs in the pages that show a submission, in headless Chromium: the feedback page
(FeedbackExporter as nbgrader_config.py configures it for generate_feedback) and the formgrader's grading page
(nbgrader's `formgrade` template, rendered as the formgrader renders autograded/<student>/<notebook>/<notebook>.ipynb,
once autograder.lms.sanitize has been through it). The hostile notebook tries every road a student has: script,
event handlers, javascript: links, frames in a written answer; HTML, JavaScript, markdown and SVG outputs; an
image's size metadata (written unquoted into the page); a raw cell; a cell tag; a grade id; widget state; a
grader's comment. Each payload, when it runs, adds a class `pwned-<where>` to <html>."""
import os
import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import nbgrader
import pytest
from nbconvert.exporters import HTMLExporter
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output, new_raw_cell
from nbgrader.server_extensions.formgrader import handlers
from traitlets.config import Config

from autograder.course import AUTOGRADER, read_nbgrader_config
from autograder.lms import collect, sanitize
from autograder.lms.feedback import FeedbackExporter, install_mathjax

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium)")
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="  # 1x1
MATH = r"\mathcal{L}(x) \leq \log p(x) < 0"


def mark(where):
    """JavaScript that leaves its trace on <html> when it runs (no space nor comma: it fits anywhere)."""
    return f"document.documentElement.classList.add('pwned-{where}')"


def hostile_notebook():
    answer = new_markdown_cell(
        f"My bound: ${MATH}$ and my plot ![plot](attachment:plot.png)\n\n"
        f"<script>{mark('md-script')}</script>\n<img src=x onerror=\"{mark('md-img')}\">\n"
        f"[click](javascript:{mark('md-link')}) <a href=\"data:text/html,<script>{mark('md-data')}</script>\">x</a>\n"
        f"<svg onload=\"{mark('md-svg')}\"></svg><iframe srcdoc=\"<script>parent.{mark('md-frame')}</script>\">"
        f"</iframe>\n<style>body{{display:none}}</style>",
        metadata={"nbgrader": {"grade": True, "solution": True, "grade_id": "written", "points": 2, "score": 1,
                               "locked": False, "comment": f'<img src=x onerror="{mark("comment")}">'}})
    answer.attachments = {"plot.png": {"image/png": PNG}}
    code = new_code_cell("display(...)", execution_count=3)
    code.metadata["tags"] = [f'"><img src=x onerror={mark("tag")}>']
    code.outputs = [
        new_output("display_data", data={"text/plain": "table", "text/html":
                                         f"<b>table</b><img src=x onerror=\"{mark('html-img')}\">"
                                         f"<script>{mark('html-script')}</script>"}),
        new_output("display_data", data={"text/plain": "js", "application/javascript": mark("js")}),
        new_output("display_data", data={"text/markdown": f"**bold** <img src=x onerror=\"{mark('md-output')}\">"}),
        new_output("display_data", data={"image/svg+xml": f"<svg xmlns='http://www.w3.org/2000/svg' onload=\""
                                         f"{mark('svg')}\"><script>{mark('svg-script')}</script></svg>"}),
        new_output("display_data", data={"image/png": "broken"},
                   metadata={"image/png": {"width": f"1 onerror={mark('width')}"}}),
        new_output("execute_result", data={"image/png": PNG, "text/plain": "<Figure>"}, execution_count=3),
    ]
    raw = new_raw_cell(f"<script>{mark('raw')}</script>", metadata={"raw_mimetype": "text/html"})
    bad_id = new_markdown_cell("answer", metadata={"nbgrader": {
        "grade": True, "solution": True, "points": 1, "score": 0, "grade_id": f'x"><img src=x onerror={mark("id")}>'}})
    widgets = {"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2, "version_minor": 0},
               f'x"></script><img src=x onerror={mark("widgets")}>': {}}
    return new_notebook(cells=[answer, code, raw, bad_id], metadata={"widgets": widgets, "kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}})


def page_dom(page, budget_ms=10_000):
    """The DOM of the page at `page` once Chromium has loaded it and let its scripts (MathJax...) run."""
    command = [CHROMIUM, "--headless", "--disable-gpu", "--no-first-run", f"--virtual-time-budget={budget_ms}",
               *(["--no-sandbox"] if os.geteuid() == 0 else []), "--dump-dom", page.as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout


def traces(dom):
    """The payloads that ran: the pwned-<where> classes on <html>."""
    html_tag = re.search(r"<html[^>]*>", dom)[0]
    return set(re.findall(r"pwned-([\w-]+)", html_tag))


def feedback_page(folder, exporter_class=FeedbackExporter):
    """The feedback page of the hostile notebook, where generate_feedback writes it, with the MathJax it loads."""
    config = read_nbgrader_config(AUTOGRADER)
    css = Path(nbgrader.__file__).parent / "server_extensions" / "formgrader" / "static" / "node_modules"
    config.HTMLExporter.extra_template_paths = [str(css / "bootstrap" / "dist" / "css")]  # as generate_feedback
    if exporter_class is not FeedbackExporter:  # nbgrader's own feedback page, for comparison
        config.HTMLExporter.template_name = "feedback"
        config.HTMLExporter.extra_template_basedirs = config.FeedbackExporter.extra_template_basedirs
    resources = {"nbgrader": {"notebook": "part1_vae", "score": 1, "max_score": 3, "late_penalty": 0}}
    html, _ = exporter_class(config=config).from_notebook_node(hostile_notebook(), resources=resources)
    page = folder / "feedback" / "student" / "part1_vae" / "part1_vae.html"
    page.parent.mkdir(parents=True)
    page.write_text(html, encoding="utf-8")
    install_mathjax(folder)
    return page


def formgrader_page(folder, notebook, last_name="Lee"):
    """The formgrader's grading page of `notebook`, rendered as its SubmissionHandler renders it."""
    exporter = HTMLExporter(config=Config({"HTMLExporter": {"template_name": "formgrade",
                                                             "extra_template_basedirs": [handlers.template_path]}}))
    resources = {"assignment_id": "part1_vae", "notebook_id": "part1_vae", "submission_id": "1", "index": 0,
                 "total": 1, "base_url": "", "student": "moodle_7", "last_name": last_name, "first_name": "Ann",
                 "notebook_path": "/autograded/moodle_7/part1_vae/part1_vae.ipynb"}
    page = folder / "formgrade.html"
    page.write_text(exporter.from_notebook_node(notebook, resources=resources)[0], encoding="utf-8")
    return page


def test_the_payloads_run_in_pages_that_do_not_sanitise(tmp_path):
    """The control: the hostile notebook is hostile, and the browser check sees it."""
    assert {"md-script", "md-img", "html-img", "html-script", "md-output", "width", "id"} <= traces(
        page_dom(formgrader_page(tmp_path, hostile_notebook()), budget_ms=2000))
    assert {"md-script", "md-img", "html-img", "comment"} <= traces(
        page_dom(feedback_page(tmp_path, HTMLExporter), budget_ms=2000))


def test_the_feedback_page_runs_no_student_script_and_keeps_math_and_images(tmp_path):
    dom = page_dom(feedback_page(tmp_path))
    assert traces(dom) == set()
    assert "javascript:" not in " ".join(re.findall(r'(?:href|src)="[^"]*"', dom))
    assert "<mjx-container" in dom, "the answer's math is typeset"
    assert dom.count(f'src="data:image/png;base64,{PNG}"') >= 2, "the answer's attachment and the output's image"


def test_the_formgrader_page_runs_no_student_script_once_sanitised(tmp_path):
    hostile_name = collect.display_name(f'<img src=x onerror="{mark("name")}">')
    dom = page_dom(formgrader_page(tmp_path, sanitize.notebook(hostile_notebook()), last_name=hostile_name),
                   budget_ms=2000)
    assert traces(dom) == set()
    assert "javascript:" not in " ".join(re.findall(r'(?:href|src)="[^"]*"', dom))
    assert MATH.replace("<", "&lt;") in dom, "the math is left for MathJax"
    assert dom.count(f'src="data:image/png;base64,{PNG}"') >= 2, "the answer's attachment and the output's image"


def test_sanitising_keeps_a_plain_answer_and_is_idempotent():
    plain = new_markdown_cell("**Yes**: the KL term is $\\geq 0$, so\n\n- ELBO $\\leq \\log p(x)$\n\n> quoted")
    once = sanitize.notebook(new_notebook(cells=[plain, *hostile_notebook().cells]))
    assert once.cells[0].source.startswith("<div><p><strong>Yes</strong>: the KL term is $\\geq 0$")
    assert "<li>ELBO $\\leq \\log p(x)$</li>" in once.cells[0].source and "<blockquote>" in once.cells[0].source
    assert "\n" not in once.cells[0].source, "one HTML block: no markdown parses its text again"
    assert sanitize.notebook(once) == once
    code = once.cells[2]
    assert [sorted(output.get("data", {})) for output in code.outputs] == [
        ["text/html", "text/plain"], ["text/plain"], ["text/html"], ["image/svg+xml"], ["image/png"],
        ["image/png", "text/plain"]]
    assert code.outputs[4].metadata == {"image/png": {}} and "widgets" not in once.metadata
    nbformat.validate(once)


def test_sanitize_course_rewrites_the_autograded_notebooks(tmp_path):
    path = tmp_path / "autograded" / "moodle_7" / "part1_vae" / "part1_vae.ipynb"
    path.parent.mkdir(parents=True)
    hostile = hostile_notebook()
    nbformat.write(hostile, path)
    sanitize.main(["--course", str(tmp_path)])
    assert nbformat.read(path, as_version=4) == sanitize.notebook(hostile)
