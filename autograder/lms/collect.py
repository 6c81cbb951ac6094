"""`make collect ZIP=...`: read the submissions an LMS lets you download into the nbgrader course folder.

    python -m autograder.lms.collect submissions.zip [--course build/course] [--lms canvas] [--assignment part1_vae]
                                     [--max-total-mib N] [--max-member-mib N] [--max-members N]

Each file of the download is attributed by the name the LMS gave it, and by nothing else (file layouts as each
LMS writes them; the student's id comes from the LMS's own stable id, the name is kept as the LMS wrote it):

    canvas        <login>[_late]_<user id>_<submission id>_<file>            id canvas_<user id>
    moodle        <Full Name>_<participant id>_assignsubmission_file_/<file>  id moodle_<participant id>
                  (or ..._file_<file>, without folders)
    brightspace   <a>-<b> - <Full Name> - <Mon D, YYYY HMM AM> - <file>   id brightspace_<user id>, the user id
                  being the number of <a>-<b> that stays one student's (see Brightspace below); or the folder
                  <a>-<b> - <Full Name> - <Mon D, YYYY HMM AM>/<file>
    blackboard    <Assignment>_<username>_attempt_<YYYY-MM-DD-HH-MM-SS>_<file>  id blackboard_<username>
                  (the name from Blackboard's <...>.txt receipt)

A student's file is a notebook, or a .zip of their own, whose notebooks are theirs (whatever those are named) and
whose archives are not unpacked. Every file that is not collected is listed with the reason: not named as the LMS
names submissions, an id the name does not give, a path that is absolute or climbs out (..), a link, a size or
count over CollectLimits (autograder/limits.py), an empty or unreadable file, no released assignment of that
name, an older copy of the same notebook (the other files of a student's .zip, in one line). The rest is
collected.

The notebooks, read and checked, go through nbgrader's `zip_collect` (its extractor and collector plugins
replaced by ones that take them as they are) to <course>/submitted/<student>/<assignment>/, under the name the
student gave (the grader renames a lone notebook to the assignment's name); a submission time the LMS gives goes
to nbgrader's timestamp.txt. The student's name goes to the gradebook, and the LMS's id, name and late flag to
<course>/submissions.csv, which `python -m autograder.lms.export` reads to write grades the LMS can import.
Without --assignment, a notebook belongs to the released assignment its file name starts with.
"""
import argparse
import io
import re
import shutil
import sys
import unicodedata
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path, PurePosixPath

from nbgrader.api import Gradebook
from nbgrader.apps import ZipCollectApp
from nbgrader.plugins import ExtractorPlugin, FileNameCollectorPlugin

from ..course import COURSE, is_plain_student_id
from ..limits import CollectLimits
from . import archives, sheets
from .archives import Refused, shown

RECORDS = "submissions.csv"  # in the course folder: one row per assignment and student
FIELDS = ["assignment", "student_id", "lms", "lms_id", "first_name", "last_name", "late", "submitted_at", "file"]
STAGING = ".checked"  # <course>/downloaded/.checked/: the notebooks read from one download, until collected
NOT_A_NAME = re.compile(r"[<>\"\u202a-\u202e\u2066-\u2069]")  # markup, and text direction overrides
OTHER_ARCHIVES = (".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar")
SKIPPED_FOLDERS = {"__MACOSX", ".ipynb_checkpoints"}  # macOS resource forks, Jupyter's autosaves
NAME_BYTES = 200  # of a notebook's file name: it becomes a file of the course (most file systems allow 255)


class NotASubmission(Refused):
    """A file that is no submission (a data file, a hidden file): in a student's archive, only counted."""


@dataclass(frozen=True)
class Student:
    """A student as the LMS names them in one file name."""
    student_id: str
    lms: str
    lms_id: str
    first_name: str = ""
    last_name: str = ""
    late: str = ""
    submitted_at: str = ""


@dataclass(frozen=True)
class Notebook:
    """One notebook taken from the download: whose, for which assignment, and where collect() put its bytes."""
    assignment: str
    student: Student
    name: str
    entry: str  # where it came from in the download, for the report
    staged: Path


@dataclass
class Collection:
    """What collect() made of one download: the notebooks collected, and (entry, reason) for every file not."""
    notebooks: list = field(default_factory=list)
    refused: list = field(default_factory=list)
    ids_note: str = None  # how the ids were read, when that rests on a choice (Brightspace)

    def records(self):
        """One submissions.csv row per assignment and student collected."""
        rows = {}
        for notebook in sorted(self.notebooks, key=lambda notebook: notebook.student.submitted_at):
            key = (notebook.assignment, notebook.student.student_id)
            files = rows[key]["file"] + "; " + notebook.name if key in rows else notebook.name
            rows[key] = {**vars(notebook.student), "assignment": notebook.assignment, "file": files}  # the newest
        return [rows[key] for key in sorted(rows)]


# ---------------------------------------------------------------------------------------------------------------
# The names each LMS gives the files of its download

def display_name(text):
    """The name as the LMS wrote it, in any script, without markup characters, control characters or text
    direction overrides (it is shown in the formgrader's pages and in spreadsheets)."""
    text = NOT_A_NAME.sub("", unicodedata.normalize("NFC", text))
    return " ".join("".join(char for char in text if char.isprintable()).split())[:200]


def split_name(full_name):
    """'Jane Ann Doe' -> ('Jane Ann', 'Doe'): LMSs write the full name first name first."""
    first, _, last = display_name(full_name).rpartition(" ")
    return first, last


def student_id(lms, lms_id):
    """<lms>_<id> from the LMS's own id (e.g. canvas_12345), or Refused: never an empty or made-up id."""
    plain = lms_id.strip().lower().replace("@", "_at_")
    if not is_plain_student_id(plain):  # a folder name nbgrader and the grader accept
        raise Refused(f"no usable {lms} id in its name ({shown(lms_id)!r}: letters, digits, . _ - @ only)")
    return f"{lms}_{plain}"


class Lms:
    """How one LMS names the files of its download: `pattern` matches a whole member name, the LMS's part first
    (what identifies the student) and the student's file last (group `file`); `student` reads the match."""
    name = ""
    pattern = re.compile("")

    def student(self, match, download):
        raise NotImplementedError

    def named(self, lms_id, full_name, **values):
        """The Student of this LMS with the id `lms_id` and the name the LMS wrote in full."""
        first, last = split_name(full_name)
        return Student(student_id(self.name, lms_id), self.name, lms_id, first, last, **values)

    def is_metadata(self, member_name):
        """A file the LMS adds to its download itself (an index, a receipt): neither collected nor refused."""
        return False

    def for_download(self, names, user_id=None):
        """This LMS as it reads the download whose member names are `names`; `user_id` says where the user id is
        when the LMS's names leave it open (Brightspace's --brightspace-user-id)."""
        return self

    def how_ids_were_read(self):
        """A line for the instructor when the ids rest on a choice (None when the names leave none)."""
        return None


class Canvas(Lms):
    name = "canvas"
    pattern = re.compile(r"(?P<login>[^_/]*?)(?P<late>_late)?_(?P<user_id>\d+)_(?P<submission_id>\d+)_"
                         r"(?P<file>[^/]+)", flags=re.IGNORECASE)

    def student(self, match, download):
        return Student(student_id(self.name, match["user_id"]), self.name, match["user_id"],
                       last_name=display_name(match["login"]), late="yes" if match["late"] else "no")


class Moodle(Lms):
    name = "moodle"
    # Moodle writes '_' in a name as ' ', so the first '_<digits>_assignsubmission_' ends the LMS's part.
    pattern = re.compile(r"(?P<full_name>[^_/]+)_(?P<participant>\d+)_assignsubmission_(?P<plugin>[a-z]+)_/?"
                         r"(?P<file>.+)")

    def student(self, match, download):
        return self.named(match["participant"], match["full_name"])


class Brightspace(Lms):
    """Brightspace names a submission <a>-<b> - <Full Name> - <date>, with two numbers of which one is the
    student's user id and the other changes per submission (or per folder); which is which is documented nowhere
    we could check, so the download itself decides where it can: the number that stays the same across one
    student's submissions while the other changes, or the one that differs between students while the other is
    the same for all. Where nothing decides (one submission per student, both numbers differing), `position`
    (--brightspace-user-id, default second) does, and collect says so: check one id against the Classlist."""
    name = "brightspace"
    pattern = re.compile(r"(?P<first>\d+)-(?P<second>\d+) - (?P<full_name>[^/]+?) - "
                         r"(?P<date>[A-Z][a-z]{2} \d{1,2}, \d{4} \d{3,4} [AP]M)(?: - |/)(?P<file>.+)")
    POSITIONS = ("first", "second")

    def __init__(self, position="second", evidence=None):
        self.position, self.evidence = position, evidence

    def student(self, match, download):
        submitted = datetime.strptime(match["date"], "%b %d, %Y %I%M %p")
        return self.named(match[self.position], match["full_name"], submitted_at=submitted.isoformat())

    def for_download(self, names, user_id=None):
        if user_id is not None:
            return Brightspace(user_id, "as --brightspace-user-id says")
        found = self.position_in(self.pattern.fullmatch(name) for name in names)
        if found is not None:
            return Brightspace(*found)
        return Brightspace(self.position, "nothing in the download tells; pass --brightspace-user-id first if "
                                          "Brightspace's Classlist shows the first number as the user id")

    def how_ids_were_read(self):
        return f"brightspace ids: the {self.position} number of <a>-<b> is taken as the user id ({self.evidence})"

    @classmethod
    def position_in(cls, matches):
        """(position, why) of the user id as the download shows it, or None when it does not."""
        submissions = {(m["first"], m["second"], m["full_name"]) for m in matches if m is not None}
        for position, other in (cls.POSITIONS, cls.POSITIONS[::-1]):
            ids_by_name, others = {}, {}
            for submission in submissions:
                values = dict(zip(cls.POSITIONS, submission))
                ids_by_name.setdefault(submission[2], set()).add(values[position])
                others.setdefault(submission[2], set()).add(values[other])
            ids = {value for values in ids_by_name.values() for value in values}
            if len(ids_by_name) > 1 and len(ids) == 1:
                continue  # the same for every student: not a user id
            if any(len(ids_by_name[name]) == 1 < len(others[name]) for name in ids_by_name):
                return position, "one student's submissions share it, the other number changes"
            if len(ids_by_name) > 1 and len({value for values in others.values() for value in values}) == 1:
                return position, "it differs between students, the other number is the same for all"
        return None

    def is_metadata(self, member_name):
        return member_name == "index.html"


class Blackboard(Lms):
    name = "blackboard"
    pattern = re.compile(r"(?P<prefix>[^/]+?_(?P<username>[^_/]+)_attempt_(?P<date>\d{4}(?:-\d\d){5}))_"
                         r"(?P<file>[^/]+)")
    RECEIPT = re.compile(r"[^/]+?_[^_/]+_attempt_\d{4}(?:-\d\d){5}\.txt")
    NAME_LINE = re.compile(r"^Name:\s*(?P<full_name>.+?)\s*\((?P<username>[^)]+)\)\s*$", flags=re.MULTILINE)
    RECEIPT_BYTES = 2**16

    def student(self, match, download):
        first, last = "", display_name(match["username"])
        try:  # Blackboard's receipt, <prefix>.txt: "Name: Jane Doe (jdoe)", ...
            info = download.getinfo(match["prefix"] + ".txt")
            if info.file_size <= self.RECEIPT_BYTES and not archives.problem(info):
                found = self.NAME_LINE.search(download.read(info).decode("utf-8", errors="replace"))
                if found and found["username"] == match["username"]:
                    first, last = split_name(found["full_name"])
        except (KeyError, *archives.UNREADABLE):
            pass  # no receipt, or none that reads: the username stands for the name
        submitted = datetime.strptime(match["date"], "%Y-%m-%d-%H-%M-%S")
        return Student(student_id(self.name, match["username"]), self.name, match["username"], first, last,
                       submitted_at=submitted.isoformat())

    def is_metadata(self, member_name):
        return self.RECEIPT.fullmatch(member_name) is not None


LMSS = {lms.name: lms for lms in (Canvas(), Moodle(), Brightspace(), Blackboard())}


def detect_lms(names):
    """Which LMS wrote a download with these member names: the one that names most of them (None when none)."""
    counts = {lms: sum(LMSS[lms].pattern.fullmatch(name) is not None for name in names) for lms in LMSS}
    best = max(counts, key=counts.get)
    return best if counts[best] else None


# ---------------------------------------------------------------------------------------------------------------
# Reading one download

class Reader:
    """Reads one download into `collection`, checking every file; a notebook's bytes go to `staging`, under a
    name of ours, never one from the archive."""

    def __init__(self, lms, released, assignment, staging, limits):
        self.lms, self.released, self.assignment, self.staging = lms, released, assignment, staging
        self.budget = archives.Budget(limits)
        self.collection = Collection()
        self.kept = {}  # (assignment, student id, notebook name) -> Notebook

    def read_download(self, download):
        for info in download.infolist():
            if info.is_dir() or self.lms.is_metadata(info.filename):
                continue
            try:
                self.read_entry(download, info)
            except Refused as refusal:
                self.refuse(info.filename, refusal)
        self.collection.notebooks = list(self.kept.values())
        return self.collection

    def refuse(self, entry, reason):
        self.collection.refused.append((shown(entry), str(reason)))

    def read_entry(self, download, info):
        """A top-level file of the download: the LMS's name says whose it is."""
        archives.check(info)
        match = self.lms.pattern.fullmatch(info.filename)
        if match is None:
            raise Refused(f"not named as {self.lms.name} names submissions (pass --lms if it is another LMS's)")
        student = self.lms.student(match, download)
        self.read_file(student, match["file"], info.filename, lambda: archives.read(download, info, self.budget))

    def read_file(self, student, path, entry, read):
        """One file of `student`'s: a notebook, or their own .zip; `read()` returns its bytes."""
        parts = PurePosixPath(path.replace("\\", "/")).parts
        name = parts[-1] if parts else ""
        if SKIPPED_FOLDERS & set(parts) or name.startswith("."):
            raise NotASubmission("a hidden file or Jupyter's/macOS's own copy, not a submission")
        if not name.isprintable() or len(name.encode()) > NAME_BYTES:
            raise Refused(f"a file name with control characters or over {NAME_BYTES} bytes")
        if name.lower().endswith(".ipynb"):
            self.keep(student, name, entry, read())
        elif name.lower().endswith(".zip"):
            self.read_own_archive(student, entry, read())
        elif name.lower().endswith(OTHER_ARCHIVES):
            raise Refused("an archive other than .zip, not unpacked: ask for the notebook, or a .zip")
        else:
            raise NotASubmission("not a notebook")

    def read_own_archive(self, student, entry, data):
        """A student's own .zip: its notebooks are the student's whatever their names; archives inside it are not
        unpacked; its other files (a project's data, say) are listed together, in one line."""
        others = []
        with archives.open_zip(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                if info.is_dir():
                    continue
                inner = f"{entry} > {info.filename}"
                try:
                    archives.check(info)
                    if info.filename.lower().endswith(".zip"):
                        raise Refused("an archive inside the student's archive, not unpacked")
                    self.read_file(student, info.filename, inner, lambda: archives.read(archive, info, self.budget))
                except NotASubmission:
                    others.append(info.filename)
                except Refused as refusal:
                    self.refuse(inner, refusal)
        if others:
            listed = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            self.refuse(f"{entry} > {len(others)} files ({listed})", "not notebooks, not collected")

    def keep(self, student, name, entry, data):
        """Keep one notebook of `student`, unless it is empty, belongs to no released assignment or an as new
        copy of it is kept already (then the older of the two is listed)."""
        if not data.strip():
            raise Refused("empty file")
        assignment = self.assignment or owner(name, self.released)
        if assignment is None:
            raise Refused(f"its name starts with no released assignment ({', '.join(self.released)}); pass "
                          f"--assignment NAME to collect it into NAME")
        key = (assignment, student.student_id, name)
        kept = self.kept.get(key)
        if kept is not None and kept.student.submitted_at >= student.submitted_at:
            raise Refused(f"{student.student_id} has another {name}, as new or newer: {kept.entry}")
        if kept is not None:
            self.refuse(kept.entry, f"{student.student_id} has a newer {name}: {shown(entry)}")
        staged = kept.staged if kept else self.staging / f"{len(self.kept)}.ipynb"
        staged.write_bytes(data)
        self.kept[key] = Notebook(assignment, student, name, shown(entry), staged)


def owner(file_name, released):
    """The released assignment a notebook's name starts with (the longest such), or None."""
    return max((name for name in released if file_name.startswith(name)), key=len, default=None)


# ---------------------------------------------------------------------------------------------------------------
# nbgrader's zip_collect, fed with the checked notebooks

class CheckedExtractor(ExtractorPlugin):
    """nbgrader's extraction step: puts the assignment's checked notebooks in <extracted>/<student>/<name>
    (collect() reads the download itself; nothing from it is unpacked here)."""
    notebooks = ()  # set per assignment by zip_collect()

    def extract(self, archive_path, extracted_path):
        for notebook in self.notebooks:
            target = Path(extracted_path) / notebook.student.student_id / notebook.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(notebook.staged, target)


class CheckedCollector(FileNameCollectorPlugin):
    """nbgrader's collection step: each extracted file is the notebook CheckedExtractor put there."""
    notebooks = ()  # set per assignment by zip_collect()

    def collect(self, submitted_file):
        path = Path(submitted_file)
        found = [notebook for notebook in self.notebooks
                 if (notebook.student.student_id, notebook.name) == (path.parent.name, path.name)]
        if not found:
            return None
        info = {"student_id": found[0].student.student_id, "file_id": found[0].name}
        if found[0].student.submitted_at:
            info["timestamp"] = found[0].student.submitted_at
        return info


def zip_collect(course, assignment, archive, notebooks):
    """nbgrader's zip_collect of one assignment's checked `notebooks` (the download kept in its archive folder)."""
    folder = course / "downloaded" / assignment / "archive"
    shutil.rmtree(folder, ignore_errors=True)  # exactly this download: an older one must not come back
    folder.mkdir(parents=True)
    shutil.copy(archive, folder / "download.zip")
    app = ZipCollectApp()
    app.initialize([assignment, "--force", "--log-level=ERROR", f"--CourseDirectory.root={course}"])
    given = {"notebooks": tuple(notebooks)}
    app.extractor_plugin = type("Extractor", (CheckedExtractor,), given)
    app.collector_plugin = type("Collector", (CheckedCollector,), given)
    app.start()


def save_records(course, records):
    """Add `records` to <course>/submissions.csv (replacing the rows of the same assignment and student), and
    the students' names to the gradebook."""
    path = course / RECORDS
    rows = {(row["assignment"], row["student_id"]): row for row in sheets.read_csv(path)}
    rows.update({(record["assignment"], record["student_id"]): record for record in records})
    sheets.write_csv(path, FIELDS, ([rows[key][name] for name in FIELDS] for key in sorted(rows)))
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        for record in records:
            gradebook.update_or_create_student(record["student_id"], first_name=record["first_name"] or None,
                                               last_name=record["last_name"] or None)


def released_assignments(course):
    names = sorted(path.name for path in (course / "release").iterdir() if path.is_dir())
    if not names:
        raise SystemExit(f"No released assignment in {course}/release: run "
                         f"`python -m autograder.release --course {course}` first.")
    return names


def check_download(archive, staging, lms, released, assignment, limits, user_id=None):
    """The Collection of the download `archive` (its notebooks staged in `staging`)."""
    try:
        with archives.open_zip(archive) as download:
            names = [info.filename for info in download.infolist() if not info.is_dir()]
            lms = lms or detect_lms(names)
            if lms is None:
                raise SystemExit(f"{archive}: no file in it is named as Canvas, Moodle, Brightspace or Blackboard "
                                 f"name them (see `python -m autograder.lms.collect --help`); pass --lms if you "
                                 f"know which.")
            lms = LMSS[lms].for_download(names, user_id)
            collection = Reader(lms, released, assignment, staging, limits).read_download(download)
            collection.ids_note = lms.how_ids_were_read()
            return collection
    except Refused as refusal:
        raise SystemExit(f"{archive}: {refusal}; pass the zip you downloaded from the LMS") from refusal


def collect(archive, course=COURSE, lms=None, assignment=None, limits=CollectLimits(), user_id=None):
    """Collect the LMS download `archive` into `course`; return its Collection (what was and was not collected).
    `user_id`: where the user id is when the LMS's names leave it open (Brightspace: first or second)."""
    released = released_assignments(course)
    if assignment is not None and assignment not in released:
        raise SystemExit(f"{assignment} is not released in {course} (released: {', '.join(released)})")
    staging = course / "downloaded" / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        collection = check_download(archive, staging, lms, released, assignment, limits, user_id)
        for name in sorted({notebook.assignment for notebook in collection.notebooks}):
            zip_collect(course, name, archive, [n for n in collection.notebooks if n.assignment == name])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    collection.notebooks = [replace(notebook, staged=None) for notebook in collection.notebooks]
    save_records(course, collection.records())
    return collection


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = CollectLimits()
    parser.add_argument("zip", type=Path, help="the submissions as downloaded from the LMS")
    parser.add_argument("--course", type=Path, default=COURSE, help=f"nbgrader course folder (default {COURSE})")
    parser.add_argument("--lms", choices=sorted(LMSS), help="the LMS that wrote the zip (default: detect)")
    parser.add_argument("--assignment", help="collect every notebook of the zip into this assignment "
                        "(default: the released assignment each file name starts with)")
    parser.add_argument("--max-total-mib", type=float, default=defaults.total_bytes / 2**20,
                        help="most the download may unpack to, student archives included (default %(default)g)")
    parser.add_argument("--max-member-mib", type=float, default=defaults.member_bytes / 2**20,
                        help="most one file may unpack to (default %(default)g)")
    parser.add_argument("--max-members", type=int, default=defaults.members,
                        help="most files the download and the students' archives may hold (default %(default)d)")
    parser.add_argument("--brightspace-user-id", choices=Brightspace.POSITIONS,
                        help="which number of Brightspace's <a>-<b> is the user id (default: what the download "
                             "shows, else second)")
    args = parser.parse_args(argv)
    if not args.zip.is_file():
        sys.exit(f"{args.zip}: no such file; pass the zip you downloaded from the LMS")
    limits = CollectLimits(int(args.max_total_mib * 2**20), int(args.max_member_mib * 2**20), args.max_members)
    collection = collect(args.zip.resolve(), args.course.resolve(), args.lms, args.assignment, limits,
                         args.brightspace_user_id)
    if collection.ids_note:
        print(collection.ids_note)
    for record in collection.records():
        late = " (late)" if record["late"] == "yes" else ""
        name = " ".join(part for part in (record["first_name"], record["last_name"]) if part)
        print(f"collected {record['assignment']} {record['student_id']} ({name}): {record['file']}{late}")
    for entry, reason in collection.refused:
        print(f"not collected: {entry}: {reason}")
    print(f"{len(collection.records())} submissions collected into {args.course / 'submitted'}; records in "
          f"{args.course / RECORDS}." + (f" {len(collection.refused)} files not collected (listed above)."
                                         if collection.refused else "") + " Next: make grade")


if __name__ == "__main__":
    main()
