"""The book builds with Jupyter Book, offline, with its math rendered by a bundled MathJax."""
import subprocess
import sys
from pathlib import Path

import pytest

from autograder.course import ROOT, source_notebooks


@pytest.fixture(scope="module")
def html(tmp_path_factory):
    """The book built from the committed sources into a temporary folder (the build runs no notebook)."""
    out = tmp_path_factory.mktemp("book")
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    result = subprocess.run([str(jupyter_book), "build", str(ROOT / "book"), "--path-output", str(out),
                             "--warningiserror", "--quiet"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out / "_build" / "html"


@pytest.mark.parametrize("page", ["intro"] + [source.stem for source in source_notebooks()])
def test_every_page_is_built_with_local_mathjax_and_math(html, page):
    text = (html / f"{page}.html").read_text(encoding="utf-8")
    assert '<script defer="defer" src="_static/mathjax/tex-chtml.js"></script>' in text
    assert "cdn.jsdelivr.net" not in text and "mathjax@" not in text
    assert "\\(" in text or "\\[" in text or 'class="math' in text, f"{page} shows no math"


def test_mathjax_is_bundled_with_the_book(html):
    assert (html / "_static" / "mathjax" / "tex-chtml.js").stat().st_size > 100_000


@pytest.mark.parametrize("page", [source.stem for source in source_notebooks()])
def test_part_pages_show_the_exercises_as_students_get_them_and_the_results(html, page):
    text = (html / f"{page}.html").read_text(encoding="utf-8")
    assert "PUT YOUR CODE HERE" in text
    assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text
    assert "<img" in text, f"{page} shows no figure of results"
