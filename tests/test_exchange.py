"""A JupyterHub course, end to end: nbgrader's exchange set up in the course folder (make exchange), the parts
released to it (make release), two students, each a user of their own, who fetch, fill in and submit with
nbgrader's own commands, `make collect` (nbgrader collect) and `make grade`. Then the course folder, copied
elsewhere, opens in `make formgrader`, which prints the formgrader's address with its token."""
import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from nbgrader.api import Gradebook

from autograder import examples, notebooks, release
from autograder.course import ROOT, read_nbgrader_config
from conftest import free_port

NOTEBOOK = "part1_vae"
STUDENTS = {"ann": "reference", "bob": "kld_mean"}  # each student's user name: the example student they submit as
COURSE_ID = "deep-generative-models"
FIRST_UID = 2001
# An absolute path in a configuration file: a quoted string that starts with a slash.
ABSOLUTE_PATH = re.compile(r"""["']/""")


def make(*args, **kwargs):
    """Run this repository's Makefile, as the instructor does (without reinstalling the environment)."""
    result = subprocess.run(["make", "--no-print-directory", "-o", ".venv/installed", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=900, **kwargs)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout


def nbgrader_as(user, uid, home, *args):
    """Run `nbgrader ARGS` in the student's home folder as the user `user`: a user namespace of their own with
    their uid and a passwd file that names it (nbgrader takes the student id from the user's name)."""
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (make installs it): the students cannot be users of their own")
    passwd = home.parent / f"passwd.{user}"
    passwd.write_text(Path("/etc/passwd").read_text() + f"{user}:x:{uid}:{uid}::{home}:/bin/sh\n")
    result = subprocess.run(
        ["bwrap", "--dev-bind", "/", "/", "--ro-bind", str(passwd), "/etc/passwd", "--unshare-user",
         "--uid", str(uid), "--gid", str(uid), "--chdir", str(home), "--",
         sys.executable, "-m", "nbgrader", *args],
        env={**os.environ, "HOME": str(home), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"},
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"nbgrader {' '.join(args)} as {user}:\n{result.stdout}{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def hub(fresh_build, tmp_path_factory):
    """A course released to its exchange: the session's fresh release in a course folder of its own, set up as
    `make exchange EXCHANGE=<folder>` sets it up, then released to the exchange as `make release` does."""
    scratch = tmp_path_factory.mktemp("hub")
    course, exchange = scratch / "course", scratch / "exchange"
    shutil.copytree(fresh_build.course, course)
    release.write_course_config(course, exchange=exchange)
    released = release.release_to_exchange(course)
    return SimpleNamespace(scratch=scratch, course=course, exchange=exchange, released=released)


@pytest.fixture(scope="module")
def submitted(hub):
    """Ann and Bob (a user each) fetch part 1, fill it in (Ann as the reference solution, Bob with the KL term
    averaged instead of summed) and submit it; the students' servers are configured as `make exchange` says."""
    source = notebooks.read(hub.course / "source" / NOTEBOOK / f"{NOTEBOOK}.ipynb")
    by_name = {example.student: example for example in examples.load_examples(NOTEBOOK)}
    for number, (user, example) in enumerate(STUDENTS.items()):
        home = hub.scratch / "home" / user
        home.mkdir(parents=True)
        (home / "nbgrader_config.py").write_text(
            f"c = get_config()\nc.Exchange.root = {str(hub.exchange)!r}\nc.CourseDirectory.course_id = {COURSE_ID!r}\n")
        nbgrader_as(user, FIRST_UID + number, home, "fetch_assignment", NOTEBOOK)
        fetched = home / NOTEBOOK / f"{NOTEBOOK}.ipynb"
        assert {path.name for path in fetched.parent.iterdir()} == {fetched.name, "course_utils.py", "README.md"}
        notebooks.write(examples.submission(by_name[example], notebooks.read(fetched), source), fetched)
        nbgrader_as(user, FIRST_UID + number, home, "submit", NOTEBOOK)
    return hub


def test_make_exchange_sets_up_the_exchange_and_releases_every_part_to_it(hub):
    config = (hub.course / "nbgrader_config.py").read_text(encoding="utf-8")
    assert f"c.Exchange.root = {str(hub.exchange)!r}" in config
    assert release.configured_exchange(hub.course) == hub.exchange
    parts = [source.stem for source in release.source_notebooks()]
    assert hub.released == parts
    for part in parts:
        outbound = hub.exchange / COURSE_ID / "outbound" / part
        assert release.same_files(hub.course / "release" / part, outbound)
        assert (outbound / f"{part}.ipynb").read_bytes() == (ROOT / "assignment" / f"{part}.ipynb").read_bytes(), \
            "students on the hub get the notebook of assignment/"
    assert (hub.exchange / COURSE_ID / "inbound").is_dir()


def test_make_release_keeps_the_exchange_and_releases_only_what_changed(hub, tmp_path):
    course = tmp_path / "course"
    shutil.copytree(hub.course, course)
    release.write_course_config(course)  # what every make release does first: the exchange stays
    assert release.configured_exchange(course) == hub.exchange
    assert release.release_to_exchange(course) == []  # the exchange has these releases already
    helpers = course / "release" / NOTEBOOK / "course_utils.py"
    helpers.write_text(helpers.read_text() + "\n# changed\n")
    shadow = tmp_path / "exchange"  # release the change to a copy of the exchange, not the module's
    shutil.copytree(hub.exchange, shadow)
    release.write_course_config(course, exchange=shadow)
    assert release.release_to_exchange(course) == [NOTEBOOK]
    assert (shadow / COURSE_ID / "outbound" / NOTEBOOK / "course_utils.py").read_text().endswith("# changed\n")


def test_make_collect_and_make_grade_grade_what_the_students_submitted(submitted):
    course = submitted.course
    output = make("collect", f"COURSE={course}")
    assert "nbgrader collect" in output
    for user in STUDENTS:
        assert (course / "submitted" / user / NOTEBOOK / f"{NOTEBOOK}.ipynb").is_file()
        assert (course / "submitted" / user / NOTEBOOK / "timestamp.txt").is_file()
    make("-o", "release", "grade", f"COURSE={course}")  # -o release: the course is released above
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        tests = sum(cell.max_score for cell in gradebook.find_notebook(NOTEBOOK, NOTEBOOK).grade_cells
                    if cell.cell_type == "code")
        scores = {user: gradebook.find_submission(NOTEBOOK, user).code_score for user in STUDENTS}
    assert scores["ann"] == tests > 0, "the reference solution earns every test's points"
    assert 0 < scores["bob"] < tests, "a KL term averaged instead of summed loses points"
    with (course / "grading_report.csv").open(newline="", encoding="utf-8") as file:
        report = {row["student"]: row for row in csv.DictReader(file) if row["notebook"] == NOTEBOOK}
    assert {user: report[user]["status"] for user in STUDENTS} == {"ann": "ok", "bob": "ok"}


# --- A course folder that moves ---------------------------------------------------------------------------------

def test_the_course_configuration_names_no_path_of_this_machine(fresh_build, hub):
    config = (fresh_build.course / "nbgrader_config.py").read_text(encoding="utf-8")
    assert not ABSOLUTE_PATH.search(config), config
    assert str(ROOT) not in config and str(fresh_build.course) not in config
    with_exchange = (hub.course / "nbgrader_config.py").read_text(encoding="utf-8")
    assert ABSOLUTE_PATH.findall(with_exchange) == ["'/"] and str(hub.course) not in with_exchange, \
        "with an exchange, its folder is the one path"
    copied = read_nbgrader_config(hub.course)
    assert copied.CourseDirectory.root == str(hub.course) and copied.CourseDirectory.course_id == COURSE_ID


class Formgrader:
    """`make formgrader COURSE=<folder>`, its output read as it comes."""

    def __init__(self, course):
        self.lines = []
        self.process = subprocess.Popen(
            ["make", "--no-print-directory", "-o", ".venv/installed", "formgrader", f"COURSE={course}",
             f"FORMGRADER_PORT={free_port()}", "FORMGRADER_OPTIONS=--no-browser --ServerApp.port_retries=0"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True).start()

    def address(self, seconds=180):
        """The formgrader's address with its token, as the server prints it."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := re.search(r"http://localhost:\d+/formgrader\?token=\w+", line):
                    return match[0]
            assert self.process.poll() is None, "make formgrader stopped:\n" + "".join(self.lines[-40:])
            time.sleep(0.5)
        raise TimeoutError("make formgrader printed no address:\n" + "".join(self.lines[-40:]))

    def get(self, address, path):
        base, token = address.split("/formgrader?token=")
        request = urllib.request.Request(f"{base}/formgrader/{path}", headers={"Authorization": f"token {token}"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.read().decode()

    def stop(self):
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def test_a_copied_course_folder_opens_in_make_formgrader_with_its_address_and_token(submitted, tmp_path):
    """The course, with its submissions, copied elsewhere: the formgrader finds the course there (a course folder
    that nbgrader's configuration puts anywhere else shows 'Sorry, the formgrader encountered an error')."""
    moved = tmp_path / "elsewhere" / "course"
    shutil.copytree(submitted.course, moved)
    formgrader = Formgrader(moved)
    try:
        address = formgrader.address()
        assert "/formgrader?token=" in address and "/lab?" not in address
        page = formgrader.get(address, "manage_assignments")
        assert "encountered an error" not in page and "warning-exchange" not in page, "the exchange is there"
        assignments = formgrader.get(address, "api/assignments")
        assert f'"name": "{NOTEBOOK}"' in assignments and '"status": "released"' in assignments
        students = formgrader.get(address, f"api/submissions/{NOTEBOOK}")
        assert all(f'"student": "{user}"' in students for user in STUDENTS)
    finally:
        formgrader.stop()
