"""`make collect` on hostile LMS downloads, built here: for Canvas, Moodle, Brightspace and Blackboard, two honest
students plus one attack (zip slip, absolute paths, symbolic links, archives named after other students, two
students of the same name, names in other scripts, a zip bomb, an empty file). Every honest student must be
collected under the id the LMS gives them, every bad file listed, nothing written outside the course, nothing
over the limits."""
import io
import json
import os
import shutil
import stat
import struct
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from nbgrader.api import Gradebook

from autograder.limits import CollectLimits
from autograder.lms import collect
from autograder.lms.sheets import read_csv

NOTEBOOK = "part1_vae"
FILE = f"{NOTEBOOK}.ipynb"
SMALL = CollectLimits(total_bytes=2**20, member_bytes=2**18, members=50)  # a zip bomb's limits, lowered


@dataclass(frozen=True)
class Person:
    lms_id: str  # the LMS's id: a number, or Blackboard's username
    name: str
    login: str  # Canvas's login part of a file name

    @property
    def username(self):  # Blackboard's, in its file names: ASCII, whatever the name
        return f"u{self.lms_id}"


HONEST = (Person("101", "Ann Lee", "leeann"), Person("102", "Bo Chen", "chenbo"))
EVE = Person("666", "Eve Mallory", "mallory")


def entry(lms, person, file):
    """The name `lms` gives `person`'s file `file` in its download."""
    user = person.username if lms == "blackboard" else person.lms_id
    return {"canvas": f"{person.login}_{user}_{9000 + len(file)}_{file}",
            "moodle": f"{person.name}_{user}_assignsubmission_file_/{file}",
            "brightspace": f"{8000 + int(person.lms_id)}-{user} - {person.name} - Mar 3, 2024 945 AM - {file}",
            "blackboard": f"HW 1_{user}_attempt_2024-03-03-09-45-00_{file}"}[lms]


def expected_id(lms, person):
    return f"{lms}_{person.username if lms == 'blackboard' else person.lms_id}"


def notebook(owner):
    return json.dumps({"cells": [{"cell_type": "markdown", "metadata": {}, "source": f"written by {owner}"}],
                       "metadata": {}, "nbformat": 4, "nbformat_minor": 5}).encode()


def zip_of(members):
    """A zip (bytes) of `members`: (name or ZipInfo, bytes)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def symlink(name, target):
    info = zipfile.ZipInfo(name)
    info.create_system, info.external_attr = 3, (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


def lying_zip(name, size):
    """A zip whose member `name` holds `size` zero bytes but whose central directory declares 100."""
    data = bytearray(zip_of([(name, b"\0" * size)]))
    central = data.index(b"PK\x01\x02")
    data[central + 24:central + 28] = struct.pack("<I", 100)
    return bytes(data)


# Each attack: (extra members of the download, Eve's and others'; entries that must be reported, as parts of their
# names; the honest students, when the attack is in who they are; the limits to collect with).
def zip_slip(lms, tmp_path):
    work = zip_of([("../../../escaped.ipynb", notebook("eve")), (f"../{FILE}", notebook("eve"))])
    return ([(entry(lms, EVE, "work.zip"), work), (f"../../outside_{FILE}", notebook("eve"))],
            ["escaped.ipynb", f"../{FILE}", "outside_"], HONEST, CollectLimits())


def absolute_paths(lms, tmp_path):
    """Absolute member names that point into this test's own folder, where the test looks for what was written."""
    inner, outer = (str(tmp_path / "absolute" / f"{which}_{FILE}") for which in ("inner", "outer"))
    work = zip_of([(inner, notebook("eve"))])
    return [(entry(lms, EVE, "work.zip"), work), (outer, notebook("eve"))], [inner, outer], HONEST, CollectLimits()


def symlinks(lms, tmp_path):
    work = zip_of([symlink(FILE, "/etc/passwd")])
    return ([(entry(lms, EVE, "work.zip"), work), symlink(entry(lms, EVE, FILE), "/etc/shadow")],
            [f"work.zip > {FILE}", entry(lms, EVE, FILE)], HONEST, CollectLimits())


def other_students_names(lms, tmp_path):
    """Eve's archive holds notebooks named as the LMS names Ann's and Bo's, one in an archive of its own."""
    inner = zip_of([(entry(lms, HONEST[1], FILE), notebook("eve as Bo"))])
    work = zip_of([(entry(lms, HONEST[0], FILE), notebook("eve as Ann")), ("inner.zip", inner)])
    return [(entry(lms, EVE, "work.zip"), work)], ["inner.zip"], HONEST, CollectLimits()


def same_names(lms, tmp_path):
    twins = (Person("201", "Sam Lee", "leesam"), Person("202", "Sam Lee", "leesam"))
    return [], [], twins, CollectLimits()


def other_scripts(lms, tmp_path):
    people = (Person("301", "Олена Петренко", "петренкоолена"), Person("302", "王 伟", "王伟"),
              Person("303", "محمد علي", "عليمحمد"))
    return [], [], people, CollectLimits()


def zip_bomb(lms, tmp_path):
    bomb = zip_of([(f"{NOTEBOOK}_{i}.ipynb", b"\0" * 2**21) for i in range(2)])
    return ([(entry(lms, EVE, "bomb.zip"), bomb), (entry(lms, EVE, "lying.zip"), lying_zip(FILE, 2**21))],
            [f"bomb.zip > {NOTEBOOK}_0", f"bomb.zip > {NOTEBOOK}_1", f"lying.zip > {FILE}"], HONEST, SMALL)


def empty_file(lms, tmp_path):
    return [(entry(lms, EVE, FILE), b"")], [entry(lms, EVE, FILE)], HONEST, CollectLimits()


ATTACKS = [zip_slip, absolute_paths, symlinks, other_students_names, same_names, other_scripts, zip_bomb, empty_file]


def lms_metadata(lms, people):
    """The files an LMS adds to its download: Brightspace's index, Blackboard's receipts."""
    if lms == "brightspace":
        return [("index.html", b"<html><body>Submissions</body></html>")]
    if lms == "blackboard":
        return [(f"HW 1_{p.username}_attempt_2024-03-03-09-45-00.txt", f"Name: {p.name} ({p.username})\n".encode())
                for p in people]
    return []


@pytest.fixture(scope="module")
def released_course(tmp_path_factory):
    """A course folder with two released assignments and an empty gradebook, nothing else (made once: nbgrader
    runs this environment's alembic to make a gradebook, seconds on a loaded machine)."""
    course = tmp_path_factory.mktemp("released") / "course"
    for name in (NOTEBOOK, "part2_aae"):
        (course / "release" / name).mkdir(parents=True)
        (course / "release" / name / f"{name}.ipynb").write_bytes(notebook("the instructor"))
    path = os.environ["PATH"]
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{path}"
    try:
        Gradebook(f"sqlite:///{course / 'gradebook.db'}").close()
    finally:
        os.environ["PATH"] = path
    return course


@pytest.fixture
def course(released_course, tmp_path):
    return Path(shutil.copytree(released_course, tmp_path / "course"))


def files_under(folder):
    return {path for path in folder.rglob("*")}


@pytest.mark.parametrize("attack", ATTACKS, ids=[attack.__name__ for attack in ATTACKS])
@pytest.mark.parametrize("lms", ["canvas", "moodle", "brightspace", "blackboard"])
def test_collect_takes_every_honest_student_and_lists_every_bad_file(lms, attack, course, tmp_path):
    extra, bad_entries, people, limits = attack(lms, tmp_path)
    download = tmp_path / "download.zip"
    members = [(entry(lms, person, FILE), notebook(person.lms_id)) for person in people] + extra
    download.write_bytes(zip_of(members + lms_metadata(lms, [*people, EVE])))
    before = files_under(tmp_path) - files_under(course)

    collection = collect.collect(download, course, lms=lms, limits=limits)

    records = {record["student_id"]: record for record in collection.records()}
    for person in people:
        student = expected_id(lms, person)
        submitted = course / "submitted" / student / NOTEBOOK / FILE
        assert submitted.read_bytes() == notebook(person.lms_id), f"{student} is not what {person.name} submitted"
        assert records[student]["lms_id"] == (person.username if lms == "blackboard" else person.lms_id)
        if lms != "canvas":  # Canvas's file names carry a login, not the name
            full = " ".join(part for part in (records[student]["first_name"], records[student]["last_name"]) if part)
            assert full == person.name
    assert not any(record["student_id"].strip("_") in ("", lms) for record in records.values())
    refused = " | ".join(entry for entry, _ in collection.refused)
    for bad in bad_entries:
        assert bad in refused, f"{bad} is not listed as refused: {collection.refused}"
    after = files_under(tmp_path) - files_under(course)
    assert after == before, f"written outside the course: {after - before}"
    assert not any(path.name in ("escaped.ipynb", f"inner_{FILE}", f"outer_{FILE}", f"outside_{FILE}") for path in files_under(tmp_path))
    assert not any(Path(bad).exists() for bad in bad_entries if bad.startswith("/"))
    for path in (course / "submitted").rglob("*"):
        assert path.is_dir() or (not path.is_symlink() and path.stat().st_size <= limits.member_bytes)
    eve = course / "submitted" / expected_id(lms, EVE) / NOTEBOOK / FILE
    assert not eve.exists() or b"written by eve" in eve.read_bytes()


def test_the_id_comes_from_the_lms_and_the_name_is_kept(course, tmp_path):
    download = tmp_path / "moodle.zip"
    download.write_bytes(zip_of([(entry("moodle", Person("7", "Юлія Ткаченко", ""), FILE), notebook("7"))]))
    collect.collect(download, course)  # the LMS detected from the names
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        student = gradebook.find_student("moodle_7")
        assert (student.first_name, student.last_name) == ("Юлія", "Ткаченко")
    assert [row["student_id"] for row in read_csv(course / collect.RECORDS)] == ["moodle_7"]


def test_an_id_that_cannot_be_derived_is_refused_never_empty():
    assert collect.student_id("blackboard", "J.Doe@Uni.edu") == "blackboard_j.doe_at_uni.edu"
    for bad in ("", "   ", "éva", "a/b", "../x"):
        with pytest.raises(collect.Refused, match="no usable blackboard id"):
            collect.student_id("blackboard", bad)


def test_names_lose_markup_and_direction_overrides_but_keep_their_script():
    assert collect.display_name('<img src=x onerror="alert(1)">') == "img src=x onerror=alert(1)"
    assert collect.display_name("Ann\u202eeeL\u202c\x1b[31m") == "AnneeL[31m"
    assert collect.split_name("  王  伟 ") == ("王", "伟")


def test_brightspace_keeps_the_newest_of_two_submissions(course, tmp_path):
    ann = HONEST[0]
    older = f"{8000}-{ann.lms_id} - {ann.name} - Mar 3, 2024 945 AM - {FILE}"
    newer = f"{8001}-{ann.lms_id} - {ann.name} - Mar 4, 2024 1015 PM - {FILE}"
    download = tmp_path / "brightspace.zip"
    download.write_bytes(zip_of([(newer, notebook("newer")), (older, notebook("older"))]))
    collection = collect.collect(download, course)
    folder = course / "submitted" / "brightspace_101" / NOTEBOOK
    assert (folder / FILE).read_bytes() == notebook("newer")
    assert (folder / "timestamp.txt").read_text().startswith("2024-03-04 22:15")
    assert [entry for entry, _ in collection.refused] == [older]


def brightspace_download(tmp_path, numbers, layout=" - "):
    """A Brightspace download: one notebook per (first, second, person) of `numbers`, named <first>-<second>."""
    download = tmp_path / "brightspace.zip"
    download.write_bytes(zip_of([(f"{first}-{second} - {person.name} - Mar {day}, 2024 945 AM{layout}{FILE}",
                                  notebook(f"{first}-{second}"))
                                 for day, (first, second, person) in enumerate(numbers, start=1)]))
    return download


def test_brightspace_user_id_is_the_number_that_stays_one_students(course, tmp_path):
    """Ann's two submissions share their first number: that one is her user id, in either layout (a file
    named after its submission, or a folder per submission)."""
    ann, bo = HONEST
    download = brightspace_download(tmp_path, [("101", "7001", ann), ("101", "7002", ann), ("102", "7003", bo)],
                                    layout="/")
    collection = collect.collect(download, course)
    assert {record["student_id"] for record in collection.records()} == {"brightspace_101", "brightspace_102"}
    assert (course / "submitted" / "brightspace_101" / NOTEBOOK / FILE).read_bytes() == notebook("101-7002")
    assert "first number" in collection.ids_note and "share it" in collection.ids_note


def test_brightspace_user_id_differs_between_students_where_the_other_number_is_shared(course, tmp_path):
    ann, bo = HONEST
    collection = collect.collect(brightspace_download(tmp_path, [("397063", "101", ann), ("397063", "102", bo)]),
                                 course)
    assert {record["student_id"] for record in collection.records()} == {"brightspace_101", "brightspace_102"}
    assert "second number" in collection.ids_note and "same for all" in collection.ids_note


def test_brightspace_user_id_position_can_be_given_and_is_said_when_nothing_decides(course, tmp_path, capsys):
    ann, bo = HONEST
    download = brightspace_download(tmp_path, [("101", "7001", ann), ("102", "7002", bo)])
    collect.main([str(download), "--course", str(course)])
    out = capsys.readouterr().out
    assert "collected part1_vae brightspace_7001 (Ann Lee)" in out
    assert "nothing in the download tells; pass --brightspace-user-id first" in out
    collect.main([str(download), "--course", str(course), "--brightspace-user-id", "first"])
    assert "collected part1_vae brightspace_101 (Ann Lee)" in capsys.readouterr().out


def test_collect_lists_what_it_did_not_take_and_names_no_files_it_was_not_given(course, tmp_path, capsys):
    download = tmp_path / "canvas.zip"
    download.write_bytes(zip_of([(entry("canvas", HONEST[0], FILE), notebook("101")),
                                 ("notes\x1b[2J.txt", b"hello"), (entry("canvas", EVE, "essay.docx"), b"doc"),
                                 (entry("canvas", EVE, "work.tar.gz"), b"tar")]))
    collect.main([str(download), "--course", str(course)])
    out = capsys.readouterr().out
    assert "collected part1_vae canvas_101 (leeann): part1_vae.ipynb" in out
    assert "not collected: notes\\x1b[2J.txt: not named as canvas names submissions" in out
    assert "essay.docx: not a notebook" in out and "work.tar.gz: an archive other than .zip" in out
    assert "\x1b" not in out


def test_a_file_that_is_not_a_zip_is_refused_with_a_message(course, tmp_path):
    download = tmp_path / "download.zip"
    download.write_bytes(b"not a zip at all")
    with pytest.raises(SystemExit, match="not a readable zip"):
        collect.collect(download, course)


def test_the_other_files_of_a_students_archive_are_listed_in_one_line(course, tmp_path):
    project = zip_of([(f"project/{FILE}", notebook("101")), ("project/.ipynb_checkpoints/x-checkpoint.ipynb", b"{}"),
                      (f"__MACOSX/project/._{FILE}", b"\0"), *[(f"project/data/{i}.png", b"png") for i in range(50)]])
    download = tmp_path / "canvas.zip"
    download.write_bytes(zip_of([(entry("canvas", HONEST[0], "project.zip"), project)]))
    collection = collect.collect(download, course)
    assert (course / "submitted" / "canvas_101" / NOTEBOOK / FILE).read_bytes() == notebook("101")
    [(listed, reason)] = collection.refused
    assert listed.endswith("project.zip > 52 files (project/.ipynb_checkpoints/x-checkpoint.ipynb, "
                           "__MACOSX/project/._part1_vae.ipynb, project/data/0.png, ...)")
    assert reason == "not notebooks, not collected"
