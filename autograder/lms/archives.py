"""Zip archives that students' bytes went into (an LMS download, a student's own .zip), read without trusting
them. Nothing here writes a file: members are read into memory, each within CollectLimits, and the caller decides
where checked bytes go (never to a path taken from the archive).

A member is refused, with the reason, when its path is absolute or climbs out with `..` (Python's zipfile docs
warn about both), when it is a symbolic link or encrypted, when it is larger than one member may be, when the
download has given out its total size or member count, or when it does not read back as the zip says (a
member's declared size bounds what zipfile returns, and a wrong CRC means the bytes were tampered with).
"""
import re
import stat
import zipfile
import zlib
from dataclasses import dataclass

from ..limits import CollectLimits

DRIVE = re.compile(r"^[A-Za-z]:")
UNREADABLE = (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, EOFError, OSError, ValueError)


class Refused(Exception):
    """A member, or an entry of a download, that is not collected; str() is the reason, for the instructor."""


def shown(name):
    """A name from an archive as it may be printed on a terminal: control characters escaped, the rest kept."""
    return "".join(char if char.isprintable() else f"\\x{ord(char):02x}" for char in name)


def path_parts(info):
    """The member's path as its parts, '\\' read as '/' (zips written on Windows use both)."""
    return info.filename.replace("\\", "/").split("/")


def check(info):
    """Refused when a member cannot be taken as it is: its path, its type, its encryption."""
    reason = problem(info)
    if reason:
        raise Refused(reason)


def problem(info):
    """Why a member cannot be taken as it is (None when it can)."""
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or DRIVE.match(name):
        return "absolute path"
    if ".." in path_parts(info):
        return "path climbs out of the archive (..)"
    if "\0" in name:
        return "NUL in its name"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link"
    if info.flag_bits & 0x1:
        return "encrypted"
    return None


@dataclass
class Budget:
    """What is left of CollectLimits while one download is read: every member read takes from it."""
    limits: CollectLimits
    members: int = 0
    bytes: int = 0

    def take(self, size):
        limits = self.limits
        if size > limits.member_bytes:
            raise Refused(f"{size / 2**20:.1f} MiB uncompressed, over the {limits.member_bytes / 2**20:g} MiB one "
                          f"file may have (--max-member-mib)")
        if self.members + 1 > limits.members:
            raise Refused(f"over the {limits.members} files a download may hold (--max-members)")
        if self.bytes + size > limits.total_bytes:
            raise Refused(f"over the {limits.total_bytes / 2**20:g} MiB a download may unpack to (--max-total-mib)")
        self.members += 1
        self.bytes += size


def open_zip(file):
    """zipfile.ZipFile(file), or Refused saying why it is not a readable zip."""
    try:
        return zipfile.ZipFile(file)
    except UNREADABLE as error:
        raise Refused(f"not a readable zip ({error})") from error


def read(archive, info, budget):
    """The bytes of member `info` of `archive`, taken from `budget`; Refused when the member may not be read or
    does not read back whole."""
    check(info)
    budget.take(info.file_size)
    try:
        with archive.open(info) as member:
            data = member.read(info.file_size + 1)
    except UNREADABLE as error:
        raise Refused(f"does not read back as the zip declares it ({error})") from error
    if len(data) != info.file_size:  # zipfile stops at the declared size; say so rather than trust it silently
        raise Refused("does not read back as the zip declares it (size)")
    return data
