"""The kernel launcher: the process nbgrader starts for each kernel, from the kernelspec that
kernelspec.nbgrader_launch writes. It runs outside the sandbox, as

    python -P -m autograder.sandbox.launcher SETTINGS.json -- python -c <kernel_main.py> -f CONNECTION_FILE

(-P: the kernel's working folder, the student's files, is not on its path; the kernelspec puts the repository
root on PYTHONPATH for this process only), and imports only the standard library. It starts the kernel in a
bwrap sandbox of its own (BwrapKernel) or asks the worker's zygote for a fork (ZygoteKernel), puts it into its
cgroups, gives it standard streams of its own (KernelStreams), links its ipc sockets for nbgrader, and appends
what happened to it (exit code, killed for memory, its last words on stderr...) to <state_dir>/events.jsonl,
which kernelspec.kernel_events reads.
"""
import ctypes
import json
import os
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from .bwrap import (PRIVATE_SHM, PRIVATE_TMP, bwrap_command, connection_file, existing, home_folder,
                    kernel_environment, scratch_listing)
from .cgroups import Cgroups

EVENTS_FILE = "events.jsonl"  # in the state folder: one JSON record per kernel that ended
# The fields of autograder.limits.Limits that the sandbox enforces, passed in the settings file.
ENFORCED_LIMITS = ("memory_bytes", "processes", "cpu_seconds")
PR_SET_PDEATHSIG = 1
STDERR_TAIL_BYTES = 8192  # of the kernel's stderr kept in memory: the end of a traceback, of bwrap's complaint
LAST_LINES = 5  # of that tail in the record of a kernel that did not end well
DRAIN_SECONDS = 2  # to read what a kernel wrote just before it ended (its processes are gone by then)


def resource_limits(limits, cgroups):
    """{RLIMIT name: (soft, hard)} for the sandbox's first process: CPU time, no core files, and what no cgroup
    covers."""
    rlimits = {"RLIMIT_CPU": (limits["cpu_seconds"], limits["cpu_seconds"] + 5), "RLIMIT_CORE": (0, 0)}
    if "memory" not in cgroups.folders:
        rlimits["RLIMIT_AS"] = (limits["memory_bytes"], limits["memory_bytes"])
    if "pids" not in cgroups.folders:
        rlimits["RLIMIT_NPROC"] = (limits["processes"], limits["processes"])
    return rlimits


def set_resource_limits(rlimits):
    for name, values in rlimits.items():
        resource.setrlimit(getattr(resource, name), values)


def shell_exit_code(returncode):
    """A return code as a shell would say it (and the zygote does): the exit code, or 128 + the signal that
    killed (subprocess says minus the signal)."""
    return returncode if returncode >= 0 else 128 - returncode


class KernelStreams:
    """The kernel's standard streams: its own, not nbgrader's (those of the grading worker, whose stderr is a file
    on the host's disk, outside every limit). stdin and stdout are /dev/null: a cell's output reaches nbgrader
    over the kernel's sockets, and ipykernel merely echoes there what is written to the file descriptors
    themselves (C code, subprocesses). stderr is a pipe that the supervisor reads as it comes, so the kernel never
    blocks on it, keeping only its last STDERR_TAIL_BYTES: the last words of a kernel that dies (a traceback at
    start-up, bwrap's error) go to its record."""

    def __init__(self):
        self.null = os.open(os.devnull, os.O_RDWR)
        self.stderr, self.stderr_writer = os.pipe()
        self.tail = b""

    def given(self):
        """Close our copies of the kernel's ends, once it has them: the pipe ends when the kernel's processes do."""
        for fd in (self.null, self.stderr_writer):
            os.close(fd)
        self.null = self.stderr_writer = None

    def readable(self):
        """What to select for reading: the pipe, until it has ended."""
        return [] if self.stderr is None else [self.stderr]

    def read(self):
        """Read what the kernel wrote (the pipe is readable); at the end of the pipe, close it."""
        chunk = os.read(self.stderr, 65536)
        if chunk:
            self.tail = (self.tail + chunk)[-STDERR_TAIL_BYTES:]
        else:
            os.close(self.stderr)
            self.stderr = None

    def drain(self):
        """Read until the pipe ends, DRAIN_SECONDS at most (whatever the kernel's processes do)."""
        deadline = time.monotonic() + DRAIN_SECONDS
        while self.stderr is not None:
            ready, _, _ = select.select(self.readable(), [], [], max(0, deadline - time.monotonic()))
            if not ready:
                return
            self.read()

    def last_lines(self):
        """The last non-empty lines the kernel wrote to stderr, each cut to 300 characters."""
        lines = [line.strip()[:300] for line in self.tail.decode(errors="replace").splitlines() if line.strip()]
        return lines[-LAST_LINES:]

    def close(self):
        for fd in (self.null, self.stderr_writer, self.stderr):
            if fd is not None:
                os.close(fd)


def wait_for_end(ended, grader_alive, streams):
    """Read the kernel's stderr until `ended` (readable once the kernel has ended: False) or `grader_alive`
    (readable at its end, once the launcher is gone: True) is readable."""
    while True:
        ready, _, _ = select.select([ended, grader_alive, *streams.readable()], [], [])
        if streams.stderr in ready:
            streams.read()
        if ended in ready:
            return False
        if grader_alive in ready:
            return True


class BwrapKernel:
    """A kernel started in a sandbox of its own by bwrap (a fresh interpreter)."""

    def __init__(self, settings, kernel, cgroups, streams):
        self.streams = streams
        fds = []
        info, fds_info = os.pipe()
        try:
            command = bwrap_command(settings, os.getcwd(), kernel, fds, fds_info)
            rlimits = resource_limits(settings["limits"], cgroups)
            # bwrap gets the kernel's environment: the sandbox's first process shows its own in /proc/1/environ
            self.process = subprocess.Popen(command, pass_fds=[*fds, fds_info], stdin=streams.null,
                                            stdout=streams.null, stderr=streams.stderr_writer,
                                            env=kernel_environment(),
                                            preexec_fn=lambda: (cgroups.enter(), set_resource_limits(rlimits)))
        finally:
            for fd in [*fds, fds_info]:
                os.close(fd)
        with os.fdopen(info, "rb") as stream:
            started = stream.read()
        self.pid = json.loads(started)["child-pid"] if started else None  # None: bwrap failed, said why on stderr

    def wait(self, grader_alive):
        """Wait until the kernel ends (False) or the launcher's parent is gone (True)."""
        ended = os.pidfd_open(self.process.pid)
        try:
            return wait_for_end(ended, grader_alive, self.streams)
        finally:
            os.close(ended)

    def kill(self):
        self.process.kill()

    def exit_code(self):
        return shell_exit_code(self.process.wait())


class ZygoteKernel:
    """A kernel forked by the worker's Zygote into a sandbox of its own."""

    def __init__(self, settings, kernel, cgroups, streams):
        self.streams = streams
        self.connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.connection.connect(settings["zygote"]["socket"])
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        body = json.dumps(zygote_request(settings, kernel, cgroups)).encode()
        socket.send_fds(self.connection, [struct.pack("<Q", len(body))],
                        [streams.null, streams.null, streams.stderr_writer])
        self.connection.sendall(body)
        # The fork says who it is; the kernel translates its process id into ours. Into the cgroups, then go.
        _, ancillary, _, _ = self.connection.recvmsg(1, socket.CMSG_SPACE(struct.calcsize("3i")))
        self.pid = next((struct.unpack("3i", data)[0] for level, kind, data in ancillary
                         if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)), None)
        if self.pid is not None:  # else the fork failed, and said why on stderr
            cgroups.enter(self.pid)
            self.connection.sendall(b"g")

    def wait(self, grader_alive):
        """Wait until the zygote reports the kernel's end (False) or the launcher's parent is gone (True)."""
        return wait_for_end(self.connection, grader_alive, self.streams)

    def kill(self):
        try:
            os.kill(self.pid, signal.SIGKILL)  # its init and kernel follow (parent-death signals)
        except (ProcessLookupError, TypeError):  # gone, or never started
            pass

    def exit_code(self):
        """The kernel's exit code as the zygote saw it; 1 where the zygote could not say (it died)."""
        reply = self.connection.recv(4)
        self.connection.close()
        return struct.unpack("<i", reply)[0] if len(reply) == 4 else 1


def zygote_request(settings, kernel, cgroups):
    """What the zygote's fork needs to build the kernel's sandbox (zygote.py, build_sandbox, reads it)."""
    with open(connection_file(kernel)) as file:
        connection_info = file.read()
    private = [PRIVATE_TMP, home_folder(), PRIVATE_SHM, settings["zygote"]["scratch_root"]]
    return {"kernel": kernel, "cwd": os.getcwd(), "files": scratch_listing(os.getcwd()),
            "runtime": settings["runtime"], "connection_file": connection_file(kernel),
            "connection": connection_info, "private": existing(outermost(private)),
            "needed": settings["needed"], "memory_bytes": settings["limits"]["memory_bytes"],
            "environment": kernel_environment(), "rlimits": resource_limits(settings["limits"], cgroups)}


def outermost(folders):
    """The folders that are not inside another of them."""
    return sorted({folder for folder in folders
                   if not any(folder != other and Path(folder).is_relative_to(other) for other in folders)})


def forked_from_zygote(settings):
    """Whether the launcher asks the zygote: there is one, and the kernel's folders lie where it can make them."""
    zygote = settings.get("zygote")
    if not zygote:
        return False
    roots = [PRIVATE_TMP, zygote["scratch_root"]]
    return all(any(Path(path).is_relative_to(root) for root in roots) for path in (os.getcwd(), settings["runtime"]))


def supervise(settings, kernel, grader_alive):
    """Run the sandboxed kernel until it ends or the launcher dies (EOF on `grader_alive`); record what happened.

    Runs in its own session, so the signals nbgrader sends to the launcher's process group (a SIGKILL when the
    kernel does not stop) leave it alive to clean up."""
    cgroups = Cgroups(settings["limits"])
    streams = KernelStreams()
    links = []
    try:
        start = ZygoteKernel if forked_from_zygote(settings) else BwrapKernel
        sandbox = start(settings, kernel, cgroups, streams)
        streams.given()
        links = expose_sockets(connection_file(kernel), sandbox.pid)
        stopped_by_grader = sandbox.wait(grader_alive)
        if stopped_by_grader:
            sandbox.kill()
        code = sandbox.exit_code()
        streams.drain()
        record = {"kernel": Path(connection_file(kernel)).stem, "exit_code": code,
                  "oom_kills": cgroups.oom_kills(), "process_limit_hits": cgroups.process_limit_hits(),
                  "stopped_by_grader": stopped_by_grader, "limits": settings["limits"],
                  "enforced_by_cgroup": sorted(cgroups.folders),
                  "stderr_last_lines": streams.last_lines() if code else []}
        with open(Path(settings["state_dir"]) / EVENTS_FILE, "a") as events:
            events.write(json.dumps(record) + "\n")
        return code
    finally:
        streams.close()
        cgroups.remove()
        remove_links(links)


def expose_sockets(connection_file, pid):
    """Make the ipc sockets that the kernel creates in its private runtime folder reachable from the host: a link
    at each socket's host path into the root of the sandbox's process `pid` (/proc/PID/root/...). The kernel
    writes nothing to the host. Returns the links made (none without a sandbox)."""
    if pid is None:
        return []
    root = f"/proc/{pid}/root"
    connection = json.loads(Path(connection_file).read_text())
    links = []
    for name in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"):
        socket_path = f"{connection['ip']}-{connection[name]}"
        link = Path(socket_path)
        link.unlink(missing_ok=True)  # a link left by an earlier kernel that was killed
        link.symlink_to(root + socket_path)
        links.append((link, root + socket_path))
    return links


def remove_links(links):
    """Remove our links, unless a later kernel already replaced one with its own."""
    for link, target in links:
        if link.is_symlink() and os.readlink(link) == target:
            link.unlink()


def launch(settings_file, kernel):
    """The kernelspec's command: start a supervisor in its own session and wait for it."""
    # Die with the nbgrader process that started us (a killed nbgrader must not leave kernels running);
    # the supervisor sees our pipe close and kills the sandbox.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    settings = json.loads(Path(settings_file).read_text())
    grader_alive, launcher_alive = os.pipe()
    supervisor = os.fork()
    if supervisor == 0:
        os.close(launcher_alive)
        os.setsid()
        code = 1
        try:
            code = supervise(settings, kernel, grader_alive)
        finally:
            os._exit(code)
    os.close(grader_alive)
    _, status = os.waitpid(supervisor, 0)
    return os.waitstatus_to_exitcode(status)


def main(argv):
    """`SETTINGS.json -- KERNEL COMMAND...`, as the kernelspec's argv gives them."""
    separator = argv.index("--")
    return launch(argv[0], argv[separator + 1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
