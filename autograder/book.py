"""The book pages: what `make release` writes to book/<notebook>.ipynb, and how the book is checked in a browser.

A book page is the student release of a part, changed for readers in a few small steps (each a function below):
- the reader's header (release.py writes it), and a first code cell that fetches `course_utils.py` when the notebook
  runs without it (opened in Colab or downloaded from the book), from the repository named in book/_config.yml
  (tagged remove-cell: the notebook has it, the book's page does not show it);
- every theory answer placeholder becomes a collapsed "your answer" box: readers never see a model answer;
- the cells tagged book-only stay, with their placeholders `{{ metrics.json | test_bpd[-1] | .3f }}` filled
  in from the reference results in book/results/<notebook>/, so that captions read their numbers from the
  results themselves;
- a book-only cell whose metadata lists `book_outputs` (files of book/results/<notebook>/) gives those files
  to the code cell above it as outputs: figures as images, .txt files as printed text. The page then shows the
  reference run's output under the code that makes it, in the book and in Colab alike.

Every page links to the downloads that `make release` puts in book/downloads/ (DOWNLOADS): the assignment's zip,
each notebook as students receive it, and course_utils.py (`download_link`; the introduction lists them all).

Where the book is published is set in book/_config.yml alone (`publish_settings`): the repository (its url and
branch), the branch `make publish` pushes the built book to, and the site's address. `python -m autograder.book
remote branch site` prints them, for the Makefile.

`check_rendered_math` opens built HTML pages in headless Chromium and reports TeX that MathJax left as text;
tests/test_book.py runs it on the book, and it works as well on any HTML, e.g. nbgrader's feedback pages.
"""
import argparse
import base64
import copy
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import yaml

from . import notebooks
from .course import ROOT

BOOK = ROOT / "book"
RESULTS = BOOK / "results"
DOWNLOADS = "downloads"  # book/downloads/, written by `make release` (release.write_downloads)
ASSIGNMENT_ZIP = "assignment.zip"
SHARED_HELPERS = "course_utils.py"

# What nbgrader puts in a theory answer cell of the release.
ANSWER_PLACEHOLDER = "YOUR ANSWER HERE"
# Raw HTML, so that it folds in the book, in JupyterLab and in Colab alike.
ANSWER_BOX = """\
<details class="your-answer">
<summary><b>Your answer</b></summary>

Write your answer in the notebook: double-click this cell and replace this box with your answer.

</details>"""

FETCH_HELPERS = '''\
# Opened in Colab or downloaded from the book? The notebook needs the course's helpers, course_utils.py,
# next to it: this cell fetches them when they are missing. The data sets (MNIST, Grimms' Fairy Tales) are
# downloaded into ./data the first time they are needed (or set $DGM_DATA_DIR to a folder that has them), and
# the reference weights (LOAD_REFERENCE = True) into ./reference from the book's results.
import os
import pathlib
import urllib.request

HELPERS_URL = "{url}"
os.environ.setdefault("DGM_REFERENCE_URL", "{reference_url}")
if not pathlib.Path("course_utils.py").exists():
    try:
        with urllib.request.urlopen(HELPERS_URL, timeout=30) as response:
            pathlib.Path("course_utils.py").write_bytes(response.read())
        print("fetched course_utils.py from", HELPERS_URL)
    except OSError as error:
        raise RuntimeError(f"course_utils.py is missing and could not be downloaded from {{HELPERS_URL}} "
                           f"({{error}}). Put the course's assignment/course_utils.py next to this notebook "
                           "and run this cell again.") from None'''

# {{ file | expression | format }}: a number from a results file (JSON) of the part, e.g.
# {{ metrics.json | test_bpd[-1] | .3f }}. The expression sees the file's top-level keys as names.
PLACEHOLDER = re.compile(r"\{\{\s*(?P<file>[\w.-]+\.json)\s*\|\s*(?P<expression>.+?)\s*"
                         r"(?:\|\s*(?P<format>[^|{}]*?)\s*)?\}\}")
EXPRESSION_BUILTINS = {"len": len, "max": max, "min": min, "sum": sum, "round": round}


def settings():
    """The book's configuration, book/_config.yml."""
    return yaml.safe_load((BOOK / "_config.yml").read_text(encoding="utf-8"))


def published_url(config, path):
    """The address of the file `path` (relative to the repository's root) as the book's repository publishes it."""
    repository = config["repository"]
    return f"{repository['url'].rstrip('/')}/raw/{repository.get('branch', 'main')}/{path}"


def helpers_url(config):
    """Where the published course_utils.py is: the student release folder of the book's repository."""
    return published_url(config, "assignment/course_utils.py")


def reference_url(config, notebook):
    """Where the published reference weights of the part `notebook` are: its results folder in the book."""
    return published_url(config, f"{RESULTS.relative_to(ROOT).as_posix()}/{notebook}")


def publish_settings(config=None):
    """Where `make publish` pushes the book, from book/_config.yml: {"remote": the repository's url, "branch":
    publish.branch (gh-pages unless set), "site": html.baseurl, the address the pages are served at}."""
    config = config or settings()
    return {"remote": config["repository"]["url"],
            "branch": (config.get("publish") or {}).get("branch", "gh-pages"),
            "site": config["html"]["baseurl"]}


def download_names(notebooks):
    """What the book offers for download (in book/downloads/): the zip, each of `notebooks` (their names, e.g.
    part1_vae), course_utils.py."""
    return [ASSIGNMENT_ZIP, *(f"{notebook}.ipynb" for notebook in notebooks), SHARED_HELPERS]


def download_link(name, text=None):
    """A Markdown link to the download `name` of book/downloads/, for a page in book/. The path: scheme makes MyST
    copy the file into the built book as a download (a plain link to an .ipynb would name a page)."""
    return f"[{text or f'`{name}`'}](path:{DOWNLOADS}/{name})"


def shown(path):
    """A results file's path as messages show it: relative to the repository where it is inside it."""
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def fill_placeholders(text, results):
    """`text` with every {{ file | expression | format }} replaced by its value from the folder `results`."""
    def value(match):
        path = results / match["file"]
        if not path.is_file():
            raise FileNotFoundError(f"a book-only cell reads {shown(path)}, which does not exist")
        data = json.loads(path.read_text(encoding="utf-8"))
        try:
            result = eval(match["expression"], {"__builtins__": EXPRESSION_BUILTINS}, data)  # noqa: S307, our own files
        except Exception as error:
            raise ValueError(f"cannot compute {match['expression']!r} from {shown(path)}: {error!r}")
        return format(result, match["format"] or "")
    return PLACEHOLDER.sub(value, text)


def output_of(path):
    """A notebook output showing the results file at `path`: an image, or printed text."""
    if path.suffix == ".png":
        image = base64.b64encode(path.read_bytes()).decode("ascii")
        return nbformat.v4.new_output("display_data", data={"image/png": image, "text/plain": f"<{path.name}>"})
    if path.suffix == ".txt":
        return nbformat.v4.new_output("stream", name="stdout", text=path.read_text(encoding="utf-8"))
    raise ValueError(f"book_outputs: {path.name} is neither a .png figure nor a .txt text")


def attach_outputs(cells, results):
    """Give the outputs that each book-only cell lists in `book_outputs` to the code cell above it."""
    code_cell = None
    for cell in cells:
        if cell.cell_type == "code":
            code_cell = cell
        names = cell.metadata.pop("book_outputs", [])
        if names and code_cell is None:
            raise ValueError(f"cell {cell.get('id')}: book_outputs needs a code cell above it")
        for name in names:
            if not (results / name).is_file():
                raise FileNotFoundError(f"book_outputs names {shown(results / name)}, "
                                        f"which does not exist")
            code_cell.outputs.append(output_of(results / name))


def is_answer_placeholder(cell):
    return cell.cell_type == "markdown" and notebooks.is_solution_cell(cell) and ANSWER_PLACEHOLDER in cell.source


def page(released, notebook, header):
    """The book page of the nbgrader release `released` (book-only cells kept) of the part `notebook` (e.g.
    part1_vae), opening with the reader's `header`."""
    book_page = copy.deepcopy(released)
    results = RESULTS / notebook
    for cell in book_page.cells:
        if is_answer_placeholder(cell):
            cell.source = ANSWER_BOX
        if notebooks.has_tag(cell, "book-only"):
            cell.source = fill_placeholders(cell.source, results)
    attach_outputs(book_page.cells, results)
    # Only in the notebook: the book's readers need no helpers (the introduction tells them about this cell).
    fetch_helpers = FETCH_HELPERS.format(url=helpers_url(settings()),
                                         reference_url=reference_url(settings(), notebook))
    book_page.cells.insert(0, nbformat.v4.new_code_cell(fetch_helpers, id="fetch-helpers",
                                                        metadata={"tags": ["remove-cell"]}))
    return notebooks.with_header_cell(book_page, header)


def build(source, out):
    """Build the book whose sources are in the folder `source` into `out`, as `make book` does (offline: it runs
    no notebook); return the folder of its HTML. Raises RuntimeError with jupyter-book's output when it fails."""
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    result = subprocess.run([str(jupyter_book), "build", str(source), "--path-output", str(out), "--warningiserror",
                             "--quiet"], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"jupyter-book build {source} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return Path(out) / "_build" / "html"


def main(argv=None):
    parser = argparse.ArgumentParser(description="Print where `make publish` pushes the book (book/_config.yml): "
                                                 "the settings asked for, on one line.")
    parser.add_argument("settings", nargs="+", choices=["remote", "branch", "site"])
    settings = publish_settings()
    print(" ".join(settings[name] for name in parser.parse_args(argv).settings))


# --- Rendered math, checked in a browser ---------------------------------------------------------------------

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--mute-audio")
# TeX that MathJax would have typeset: left in the page's text, it means the math did not render.
LEFTOVER_TEX = re.compile(r"\$\$|\\\(|\\\[|\\(?:mathrm|mathcal|mathbb|frac|tfrac|mid|sum|int|prod|log|sqrt|"
                          r"begin|end|left|right|big|Big|qquad|cdot|theta|phi|sigma|mu|lambda|epsilon)\b")


def chromium():
    """The path of a Chromium executable, or None."""
    for name in CHROMIUM_NAMES:
        if path := shutil.which(name):
            return path
    return None


def rendered_dom(page_path, browser, budget_ms=20_000):
    """The DOM of an HTML file after its scripts (MathJax) ran in headless Chromium, as HTML text."""
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
             "--dump-dom", Path(page_path).resolve().as_uri()],
            capture_output=True, text=True, timeout=120)
    if result.returncode != 0 or "<html" not in result.stdout:
        raise RuntimeError(f"chromium could not render {page_path}: {result.stderr[-2000:]}")
    return result.stdout


def visible_text(dom):
    """The text a reader sees as prose: the DOM without code, scripts, styles and typeset math."""
    dom = re.sub(r"<(script|style|pre|code|mjx-container|mjx-assistive-mml|textarea|svg)\b.*?</\1>", " ",
                 dom, flags=re.DOTALL | re.IGNORECASE)
    dom = re.sub(r"<[^>]+>", " ", dom)
    return re.sub(r"\s+", " ", dom.replace("&nbsp;", " "))


def math_problems(dom):
    """What is wrong with the math of a rendered page: TeX left as text, MathJax errors. Empty when fine."""
    problems = []
    if "<mjx-merror" in dom:
        errors = re.findall(r'<mjx-merror[^>]*data-mjx-error="([^"]*)"', dom)
        problems.append(f"MathJax errors: {errors or 'mjx-merror'}")
    text = visible_text(dom)
    for match in LEFTOVER_TEX.finditer(text):
        problems.append(f"TeX left as text: ...{text[max(0, match.start() - 60):match.end() + 60]}...")
    return problems


def download_links(dom):
    """{file name: href} of the links to downloads (Sphinx's _downloads/<hash>/<name>) in a rendered page."""
    return {href.rsplit("/", 1)[1]: href for href in re.findall(r'<a\b[^>]*\bhref="(_downloads/[^"#?]+)"', dom)}


def check_rendered_math(pages, browser=None):
    """{page: [problems]} for the HTML files `pages` rendered in Chromium; pages without problems are left out.

    Needs a Chromium (found on PATH when `browser` is None); raises FileNotFoundError without one.
    """
    browser = browser or chromium()
    if browser is None:
        raise FileNotFoundError("no Chromium found (apt-get install chromium)")
    report = {}
    for page_path in pages:
        problems = math_problems(rendered_dom(page_path, browser))
        if problems:
            report[str(page_path)] = problems
    return report


if __name__ == "__main__":
    main()
