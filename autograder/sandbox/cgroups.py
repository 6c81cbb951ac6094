"""The kernel's cgroups: its memory and process limits where the host lets us make cgroups (v1 or v2), and the
counters that say it hit them. The launcher (launcher.py) makes them for each kernel, outside the sandbox; it
imports only the standard library.
"""
import os
import select
import signal
import uuid
from pathlib import Path

NAME_PREFIX = "dgm-sandbox"  # of each kernel's cgroup folders, followed by the launcher's process id


class Cgroups:
    """The kernel's own cgroup in each controller the host lets us use (v1 or v2, whichever carries it), or none.

    Each is created inside the launcher's own cgroup where possible, so any limit the host applies still holds.
    `limits`: {"memory_bytes": ..., "processes": ...} (fields of autograder.limits.Limits)."""

    def __init__(self, limits):
        self.folders = {}  # controller ("memory", "pids") -> this kernel's cgroup folder
        name = f"{NAME_PREFIX}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        for controller, settings in (("memory", memory_settings(limits["memory_bytes"])),
                                     ("pids", {"pids.max": limits["processes"]})):
            parent = cgroup_parent(controller)
            if parent is None:
                continue
            folder = parent / name
            try:
                folder.mkdir()
                for file, value in settings.items():
                    if (folder / file).exists():
                        (folder / file).write_text(str(value))
            except OSError:
                remove_cgroup(folder)
                continue
            self.folders[controller] = folder

    @staticmethod
    def usable(controller):
        """Whether kernels get a cgroup for `controller` ("memory", "pids") on this host."""
        return cgroup_parent(controller) is not None

    def enter(self, pid=None):
        """Move process `pid` (default: the calling one, the sandbox about to start) into every cgroup."""
        for folder in self.folders.values():
            (folder / "cgroup.procs").write_text(str(pid or os.getpid()))

    def counter(self, controller, file, key):
        """A counter such as `oom_kill` in memory.events; 0 where it does not exist."""
        try:
            lines = (self.folders[controller] / file).read_text().splitlines()
        except (KeyError, OSError):
            return 0
        return sum(int(line.split()[1]) for line in lines if line.split()[0] == key)

    def oom_kills(self):
        return self.counter("memory", "memory.events", "oom_kill") + self.counter("memory", "memory.oom_control",
                                                                                 "oom_kill")

    def process_limit_hits(self):
        return self.counter("pids", "pids.events", "max")

    def remove(self):
        """Kill whatever is left in the cgroups and remove them."""
        for folder in self.folders.values():
            remove_cgroup(folder)


def memory_settings(memory_bytes):
    """Files that limit memory, v2 and v1 names (only those that exist are written); no swap either."""
    return {"memory.max": memory_bytes, "memory.swap.max": 0,
            "memory.limit_in_bytes": memory_bytes, "memory.memsw.limit_in_bytes": memory_bytes}


def cgroup_parent(controller):
    """The cgroup folder in which to create a kernel's cgroup for `controller`, or None where we may not."""
    mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
    for hierarchy, controllers, path in (line.split(":", 2) for line in
                                         Path("/proc/self/cgroup").read_text().splitlines()):
        for _, mount, kind, options, *_ in mounts:
            if kind == "cgroup" and controller in controllers.split(",") and controller in options.split(","):
                return Path(mount + path) if os.access(mount + path, os.W_OK) else None  # v1: below ours
            if kind == "cgroup2" and hierarchy == "0" and not controllers:
                # v2 forbids controllers below a cgroup that holds processes, as ours usually does: then the
                # kernel's cgroup is a sibling of ours.
                own = Path(mount + path)
                for folder in (own, own.parent):
                    if folder.is_relative_to(mount) and delegate_v2(folder, controller):
                        return folder
    return None


def delegate_v2(folder, controller):
    """Whether children of this v2 cgroup folder can get `controller` (enabling it if possible)."""
    try:
        if controller not in (folder / "cgroup.controllers").read_text().split() or not os.access(folder, os.W_OK):
            return False
        if controller not in (folder / "cgroup.subtree_control").read_text().split():
            (folder / "cgroup.subtree_control").write_text(f"+{controller}")
        return True
    except OSError:  # e.g. processes in this cgroup itself ("no internal processes")
        return False


def remove_cgroup(folder):
    """Kill every process in a cgroup, then remove it."""
    for _ in range(100):
        try:
            pids = (folder / "cgroup.procs").read_text().split()
        except OSError:
            return
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        select.select([], [], [], 0.01)
    try:
        folder.rmdir()
    except OSError:
        pass
