"""The book: it builds offline, its math renders in a real browser, its pages can be launched and downloaded and
then run, they link to the assignment's downloads, they show the reference results with published numbers and no
model answer."""
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest

from autograder import book, release
from autograder.course import ROOT, source_notebooks

PARTS = [source.stem for source in source_notebooks()]
PAGES = ["intro"] + PARTS
REFERENCE_WEIGHTS = {"part1_vae": ["vae_z20.pt", "vae_z2.pt"],  # LOAD_REFERENCE
                     "part2_aae": ["aae_z8.pt", "ae_z2.pt", "aae_z2.pt"]}
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|tmp|home|root|Users|mnt|var)/")


@pytest.fixture(scope="module")
def downloads(fresh_build, tmp_path_factory):
    """{name: path} of what the book offers for download, made by the session's fresh release as `make release`
    makes book/downloads/."""
    scratch = tmp_path_factory.mktemp("downloads")
    zip_path = release.build_zip(fresh_build.written, scratch / "assignment.zip")
    return {path.name: path for path in release.write_downloads(fresh_build.written, zip_path, scratch / "downloads")}


@pytest.fixture(scope="module")
def html(downloads, tmp_path_factory):
    """The book built from the committed sources (a copy of book/, with the downloads of the fresh release) into a
    temporary folder (the build runs no notebook)."""
    out = tmp_path_factory.mktemp("book")
    shutil.copytree(ROOT / "book", out / "book", ignore=shutil.ignore_patterns("_build", "downloads"))
    shutil.copytree(next(iter(downloads.values())).parent, out / "book" / book.DOWNLOADS)
    return book.build(out / "book", out)


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium; the browser tests are skipped only where none is installed and none can be."""
    path = book.chromium()
    if path is None:
        can_install = os.geteuid() == 0 and shutil.which("apt-get")
        assert not can_install, "chromium is missing: run `make test` (it installs it) or apt-get install chromium"
        pytest.skip("chromium is not installed and cannot be installed here (needs root and apt-get): "
                    "the book's math was not checked in a browser")
    return path


def page_text(html, page):
    return (html / f"{page}.html").read_text(encoding="utf-8")


def config():
    return book.settings()


# --- Math -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("page", PAGES)
def test_every_page_is_built_with_local_mathjax_and_math(html, page):
    text = page_text(html, page)
    assert '<script defer="defer" src="_static/mathjax/tex-chtml.js"></script>' in text
    assert "cdn.jsdelivr.net" not in text and "mathjax@" not in text
    assert "\\(" in text or "\\[" in text or 'class="math' in text, f"{page} shows no math"


def test_mathjax_is_bundled_with_the_book(html):
    assert (html / "_static" / "mathjax" / "tex-chtml.js").stat().st_size > 100_000


def test_every_formula_renders_in_a_browser(html, browser):
    problems = book.check_rendered_math([html / f"{page}.html" for page in PAGES], browser)
    assert problems == {}, json.dumps(problems, indent=1)[:5000]


def test_the_browser_check_catches_tex_left_as_text_and_mathjax_errors(browser, tmp_path):
    """A book page with Part 1's old mistake (display math glued to the lines of a paragraph, a line of it read
    as a list item) and a formula MathJax cannot typeset (a double exponent)."""
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(ROOT / "book" / "_config.yml", source)
    (source / "_toc.yml").write_text("format: jb-book\nroot: page\n")
    (source / "page.md").write_text(
        "# Broken math\n\nThis leads to the evidence lower bound\n"
        "$$\\mathrm{ELBO}(x) = \\mathbb{E}_{q_\\phi(z \\mid x)}\\big[\\log p_\\theta(x \\mid z)\\big]\n"
        "- D_{\\mathrm{KL}}\\big(q_\\phi(z \\mid x) \\,\\|\\, p(z)\\big).$$\n\n"
        "A formula MathJax rejects: $x^2^3$.\n")
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    subprocess.run([str(jupyter_book), "build", str(source), "--path-output", str(tmp_path), "--quiet"],
                   capture_output=True, check=True)
    page = tmp_path / "_build" / "html" / "page.html"
    problems = book.check_rendered_math([page], browser)[str(page)]
    assert any("TeX left as text" in problem and "ELBO" in problem for problem in problems), problems
    assert any("MathJax errors" in problem for problem in problems), problems


# --- Reading and running ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("page", PARTS)
def test_part_pages_have_launch_buttons_and_a_repository_link(html, page):
    text = page_text(html, page)
    repository = config()["repository"]["url"]
    owner_and_name = repository.split("github.com/")[1]
    assert f"colab.research.google.com/github/{owner_and_name}/blob/" in text and f"/book/{page}.ipynb" in text
    assert f"mybinder.org/v2/gh/{owner_and_name}/" in text
    assert f'href="{repository}"' in text
    assert f"_sources/{page}.ipynb" in text, "the page offers no download of its notebook"


@pytest.mark.parametrize("page", PARTS)
def test_the_downloadable_notebook_has_no_myst_directives_and_fetches_its_helpers_first(html, page):
    notebook = nbformat.read(html / "_sources" / f"{page}.ipynb", as_version=4)
    markdown = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "markdown")
    assert not re.search(r"```\{|:::\{|\{figure\}|\{\{", markdown), "raw MyST or placeholders in the notebook"
    first_code = next(cell for cell in notebook.cells if cell.cell_type == "code")
    assert book.helpers_url(config()) in first_code.source
    assert "import course_utils" in next(cell.source for cell in notebook.cells[2:] if cell.cell_type == "code")


def run_fetch_cell(page, url, folder, monkeypatch):
    """Run the book page's first code cell in `folder` with its download address replaced by `url`."""
    notebook = nbformat.read(ROOT / "book" / f"{page}.ipynb", as_version=4)
    cell = next(cell for cell in notebook.cells if cell.cell_type == "code")
    monkeypatch.chdir(folder)
    monkeypatch.setattr(os, "environ", dict(os.environ))  # what the cell sets there stays in this test
    exec(cell.source.replace(book.helpers_url(config()), url), {})


def test_the_first_cell_fetches_the_helpers_only_when_they_are_missing(tmp_path, monkeypatch, capsys):
    published = (ROOT / "assignment" / "course_utils.py").resolve()
    run_fetch_cell(PARTS[0], published.as_uri(), tmp_path, monkeypatch)
    assert (tmp_path / "course_utils.py").read_bytes() == published.read_bytes()
    assert "fetched course_utils.py" in capsys.readouterr().out
    run_fetch_cell(PARTS[0], "file:///nowhere/course_utils.py", tmp_path, monkeypatch)  # present: no download


@pytest.mark.parametrize("page", PARTS)
def test_the_first_cell_points_the_reference_weights_at_the_published_results_of_its_part(tmp_path, monkeypatch,
                                                                                         page):
    (tmp_path / "course_utils.py").write_text("")  # present: nothing is fetched
    monkeypatch.delenv("DGM_REFERENCE_URL", raising=False)
    run_fetch_cell(page, "file:///nowhere/course_utils.py", tmp_path, monkeypatch)
    url = os.environ["DGM_REFERENCE_URL"]
    assert url == book.reference_url(config(), page)
    assert url.endswith(f"/raw/{config()['repository']['branch']}/book/results/{page}")
    for name in REFERENCE_WEIGHTS.get(page, []):
        assert (ROOT / "book" / "results" / page / name).is_file(), f"{name} is not in the book's results"


@pytest.mark.parametrize("page", [page for page in PARTS if page in REFERENCE_WEIGHTS])
def test_the_reference_weights_are_downloads_of_the_page(html, page):
    text = page_text(html, page)
    for name in REFERENCE_WEIGHTS[page]:
        link = re.search(rf'href="(_downloads/\w+/{re.escape(name)})"', text)
        assert link and (html / link[1]).read_bytes() == (ROOT / "book" / "results" / page / name).read_bytes()


@pytest.mark.parametrize("page", PAGES)
def test_every_page_links_to_the_assignment_downloads_in_the_browser(html, downloads, browser, page):
    """The introduction links to every download, a part page to the zip, its own notebook and course_utils.py; each
    link of the page, as the browser has it, leads to the file of the release."""
    links = book.download_links(book.rendered_dom(html / f"{page}.html", browser))
    expected = (book.download_names(PARTS) if page == "intro"
                else [book.ASSIGNMENT_ZIP, f"{page}.ipynb", book.SHARED_HELPERS])
    assert set(expected) <= set(links), f"{page} does not link to {set(expected) - set(links)}"
    for name in expected:
        assert (html / links[name]).read_bytes() == downloads[name].read_bytes(), f"{page}: {links[name]}"


def test_the_downloads_are_the_release_students_get(downloads, fresh_build):
    assert list(downloads) == book.download_names(PARTS)
    for name, path in downloads.items():
        if name != book.ASSIGNMENT_ZIP:
            assert path.read_bytes() == (fresh_build.out / "assignment" / name).read_bytes(), name
    with zipfile.ZipFile(downloads[book.ASSIGNMENT_ZIP]) as archive:
        assert {f"assignment/{name}" for name in book.download_names(PARTS)[1:]} <= set(archive.namelist())


def test_the_first_cell_says_what_to_do_when_the_helpers_cannot_be_fetched(tmp_path, monkeypatch):
    with pytest.raises(RuntimeError, match="could not be downloaded.*next to this notebook"):
        run_fetch_cell(PARTS[0], (tmp_path / "missing.py").as_uri(), tmp_path, monkeypatch)
    assert not (tmp_path / "course_utils.py").exists()


# --- A page that reads like a book --------------------------------------------------------------------------------

@pytest.mark.parametrize("page", PARTS)
def test_part_pages_show_the_exercises_as_students_get_them_and_the_results(html, page):
    text = page_text(html, page)
    assert "PUT YOUR CODE HERE" in text
    assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text
    assert "<img" in text, f"{page} shows no figure of results"


@pytest.mark.parametrize("page", PARTS)
def test_answers_are_folded_boxes_never_placeholders_or_model_answers(html, page):
    source = (ROOT / "solutions" / f"{page}.md").read_text(encoding="utf-8")
    answers = re.findall(r'^\+\+\+ \{"role": "answer".*?\n\n(.+?)\n', source, flags=re.MULTILINE)
    text = page_text(html, page)
    assert "YOUR ANSWER HERE" not in text
    assert text.count('<details class="your-answer">') == len(answers) > 0
    for answer in answers:
        assert answer[:60] not in text, f"a model answer is on the page: {answer[:60]}"


@pytest.mark.parametrize("page", PARTS)
def test_reference_outputs_are_shown_under_their_code(page):
    notebook = nbformat.read(ROOT / "book" / f"{page}.ipynb", as_version=4)
    figures = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
               if "image/png" in output.get("data", {})]
    assert figures, f"no code cell of {page} shows the reference run's figures"


@pytest.mark.parametrize("page", PARTS)
def test_the_numbers_of_the_results_are_published_with_the_book(html, page):
    text = page_text(html, page)
    links = re.findall(r'href="(_downloads/[0-9a-f]+/([\w.-]+\.json))"', text)
    assert {name for _, name in links} == {path.name for path in (ROOT / "book/results" / page).glob("*.json")}
    for link, _ in links:
        assert json.loads((html / link).read_text(encoding="utf-8")), link


@pytest.mark.parametrize("page", PARTS)
def test_each_part_has_further_reading_with_linked_papers(html, page):
    text = page_text(html, page)
    assert "Further reading" in text
    assert len(re.findall(r'href="https://(?:arxiv\.org/abs/\d{4}\.\d{4,5}|cdn\.openai\.com/[^"]+\.pdf)"', text)) >= 2


def test_nothing_published_names_a_path_of_this_machine_or_an_instructor_command(html):
    published = [*(ROOT / "book" / "results").rglob("*.json"), *(ROOT / "book" / "results").rglob("*.txt"),
                 *(ROOT / "book").glob("*.ipynb"), *(html / f"{page}.html" for page in PAGES)]
    for path in published:
        text = path.read_text(encoding="utf-8")
        assert not MACHINE_PATH.search(text), f"{path.name}: {MACHINE_PATH.search(text)[0]}..."
    for page in PAGES:
        assert "python -m solutions" not in page_text(html, page), f"{page} tells readers to run a solution module"
    for path in (ROOT / "assignment").glob("*.ipynb"):
        notebook = nbformat.read(path, as_version=4)
        assert not any("python -m solutions" in cell.source for cell in notebook.cells), path.name


# --- The book page's own steps ------------------------------------------------------------------------------------

def test_placeholders_read_numbers_from_the_results_and_say_what_is_wrong(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"test_bpd": [0.61, 0.5234], "config": {"z_dim": 20}}))
    assert book.fill_placeholders("bpd {{ metrics.json | test_bpd[-1] | .3f }}, z {{metrics.json|config['z_dim']}}",
                                  tmp_path) == "bpd 0.523, z 20"
    with pytest.raises(FileNotFoundError, match="other.json"):
        book.fill_placeholders("{{ other.json | x }}", tmp_path)
    with pytest.raises(ValueError, match="val_bpd"):
        book.fill_placeholders("{{ metrics.json | val_bpd[-1] }}", tmp_path)


def test_book_outputs_go_to_the_code_cell_above(tmp_path):
    (tmp_path / "log.txt").write_text("epoch 1: 0.6 bpd\n")
    cells = [nbformat.v4.new_code_cell("train()"), nbformat.v4.new_markdown_cell("answer"),
             nbformat.v4.new_markdown_cell("caption", metadata={"book_outputs": ["log.txt"]})]
    book.attach_outputs(cells, tmp_path)
    assert cells[0].outputs[0].text == "epoch 1: 0.6 bpd\n" and "book_outputs" not in cells[2].metadata
    with pytest.raises(FileNotFoundError, match="missing.png"):
        book.attach_outputs([cells[0], nbformat.v4.new_markdown_cell("", metadata={"book_outputs": ["missing.png"]})],
                            tmp_path)
