"""Student notebooks made safe to show: no student script runs in a feedback page or in the formgrader.

Jupyter's notebook trust model runs a notebook's HTML and JavaScript only for a notebook its reader made or
signed; a submission is the opposite, yet nbconvert (behind nbgrader's feedback pages and the formgrader's
grading page) writes markdown and outputs into the page as they are. `notebook(nb)` returns a copy that any of
those renderers may show:

    markdown cells   rendered as nbconvert renders them (math left for MathJax, attachments inlined), then
                     through nh3 (the ammonia sanitiser): no script, event handler, style, form or frame; links
                     http(s) and mailto; images http(s) or data:image/...; stored as one HTML block
    raw cells        through nh3
    outputs          text, LaTeX and images kept; text/html through nh3; text/markdown rendered and through nh3;
                     JavaScript, widgets and every other type dropped; output metadata kept to numeric sizes
    notebook         metadata kept to kernelspec, language_info and nbgrader (widget state is dropped)

Code cells' source and text outputs need nothing: every page escapes them. `html(text)` is the sanitiser alone,
for the feedback page's own filters (autograder/lms/feedback.py).

    python -m autograder.lms.sanitize [--course build/course]   # sanitise the course's autograded notebooks
"""
import argparse
import copy
import re
from pathlib import Path

import nbformat
import nh3
from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath
from nbconvert.preprocessors import Preprocessor

from ..course import COURSE

ATTRIBUTES = {**{tag: set(names) for tag, names in nh3.ALLOWED_ATTRIBUTES.items()}, "*": {"class", "title", "lang"}}
URL_SCHEMES = {"http", "https", "mailto", "data"}
DATA_IMAGE = re.compile(r"data:image/(png|jpeg|gif|webp|svg\+xml)[;,]")
NOT_IN_URL = re.compile(r"[\x00-\x20]")  # browsers drop these from a URL before they read its scheme
KEPT_OUTPUTS = {"text/plain", "text/latex", "image/png", "image/jpeg", "image/gif", "image/svg+xml"}
KEPT_NOTEBOOK_METADATA = {"kernelspec", "language_info", "nbgrader"}
GRADE_ID = re.compile(r"[A-Za-z0-9_.-]+")  # nbgrader's pages write a cell's grade_id into attributes unescaped


def keep_url(element, attribute, value):
    """nh3's attribute filter: a data: URL only as an image's source, of an image type."""
    plain = NOT_IN_URL.sub("", value).lower()
    if plain.startswith("data:") and not (element == "img" and attribute == "src" and DATA_IMAGE.match(plain)):
        return None
    return value


def html(text):
    """`text` (HTML) with nothing that runs: nh3's allowed tags, attributes and URL schemes only."""
    return nh3.clean(text, attributes=ATTRIBUTES, url_schemes=URL_SCHEMES, attribute_filter=keep_url)


def markdown(source, attachments=None):
    """Markdown rendered as nbconvert renders it (math kept for MathJax, attachments as data: images), sanitised."""
    renderer = IPythonRenderer(escape=False, attachments=attachments or {}, exclude_anchor_links=True)
    return html(MarkdownWithMath(renderer=renderer).render(source))


def as_markdown_cell(safe_html):
    """Sanitised HTML as the source of a markdown cell: one line in a <div>, so that every markdown renderer
    reads it as one HTML block and parses none of its text as markdown again (a link written as text, say)."""
    line = safe_html.strip().replace("\r\n", "\n").replace("\r", "\n").replace("\n", "&#10;")
    return line if not line or line.startswith("<div") else f"<div>{line}</div>"


def markdown_cell(cell):
    cell.source = as_markdown_cell(markdown(cell.source, cell.get("attachments")))
    cell.pop("attachments", None)  # inlined by the rendering


def text(value):
    return "".join(value) if isinstance(value, list) else str(value)


def sizes(metadata):
    """Output metadata kept to numeric width and height (a page writes them into an <img> tag unquoted)."""
    kept = {}
    for key, value in metadata.items():
        if key in ("width", "height") and isinstance(value, (int, float)):
            kept[key] = value
        elif key in KEPT_OUTPUTS and isinstance(value, dict):
            kept[key] = sizes({name: value[name] for name in ("width", "height") if name in value})
    return kept


def display_output(output):
    """A display_data or execute_result output with only data that runs nothing; None when none is left."""
    data = {key: text(value) for key, value in output.get("data", {}).items() if key in KEPT_OUTPUTS}
    if "text/html" in output.get("data", {}):
        data["text/html"] = html(text(output.data["text/html"]))
    elif "text/markdown" in output.get("data", {}):
        data["text/html"] = markdown(text(output.data["text/markdown"]))
    if not data:
        return None
    kept = nbformat.v4.new_output(output.output_type, data=data, metadata=sizes(output.get("metadata", {})))
    if output.output_type == "execute_result":
        count = output.get("execution_count")
        kept.execution_count = count if isinstance(count, int) else None
    return kept


def code_outputs(outputs):
    kept = []
    for output in outputs:
        if output.get("output_type") == "stream":
            kept.append(nbformat.v4.new_output("stream", name=output.get("name", "stdout"),
                                               text=text(output.get("text", ""))))
        elif output.get("output_type") == "error":
            kept.append(nbformat.v4.new_output("error", ename=text(output.get("ename", "")),
                                               evalue=text(output.get("evalue", "")),
                                               traceback=[text(line) for line in output.get("traceback", [])]))
        elif output.get("output_type") in ("display_data", "execute_result"):
            kept.append(display_output(output))
    return [output for output in kept if output is not None]


def notebook(nb):
    """A copy of the notebook `nb` that runs no student script wherever it is shown (see the module's doc)."""
    nb = copy.deepcopy(nb)
    nb.metadata = {key: value for key, value in nb.metadata.items() if key in KEPT_NOTEBOOK_METADATA}
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id is not None and not GRADE_ID.fullmatch(str(grade_id)):
            del cell.metadata["nbgrader"]
        if cell.cell_type == "markdown":
            markdown_cell(cell)
        elif cell.cell_type == "raw":
            cell.source = html(cell.source)
        elif cell.cell_type == "code":
            cell.outputs = code_outputs(cell.get("outputs", []))
            count = cell.get("execution_count")
            cell.execution_count = count if isinstance(count, int) else None
    return nb


def notebook_bytes(data):
    """notebook() of a notebook file's bytes, as bytes (for the grader, which holds autograded notebooks so)."""
    return nbformat.writes(notebook(nbformat.reads(data.decode("utf-8"), as_version=4))).encode("utf-8")


class SanitizeNotebook(Preprocessor):
    """notebook() as an nbconvert/nbgrader preprocessor (e.g. the last step of nbgrader's autograde)."""

    def preprocess(self, nb, resources):
        return notebook(nb), resources


def sanitize_course(course):
    """Sanitise every autograded notebook of `course` in place (those graded before this module existed);
    return their paths."""
    paths = sorted((Path(course) / "autograded").glob("*/*/*.ipynb"))
    for path in paths:
        if not path.is_symlink():
            path.write_bytes(notebook_bytes(path.read_bytes()))
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description="Sanitise the autograded notebooks of a course in place, so that "
                                     "the formgrader runs no student script.")
    parser.add_argument("--course", type=Path, default=COURSE, help=f"nbgrader course folder (default {COURSE})")
    paths = sanitize_course(parser.parse_args(argv).course.resolve())
    print(f"sanitised {len(paths)} autograded notebooks")


if __name__ == "__main__":
    main()
