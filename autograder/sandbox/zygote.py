"""The sandbox's kernel fork server (a "zygote"): one per grading worker. It imports once what every kernel
imports (torch, numpy, matplotlib, ipykernel: about 2 s of CPU time), then forks each student's kernel from
itself instead of starting a fresh interpreter.

It runs inside a bubblewrap sandbox that already hides what no kernel may see (kernelspec.Zygote starts it: the
course, the repository, the host's /tmp and $HOME, no network, user namespaces disabled), with the capabilities of
that sandbox's own user namespace, so that each fork can build the student's sandbox inside it, as bwrap builds
it for a kernel started afresh:
- new mount, PID, IPC and UTS namespaces; private in-memory /tmp, $HOME, /dev/shm and scratch root, where the
  student's working folder is recreated next to the kernel's runtime folder; a /proc of its own whose files that
  change the machine are read-only;
- an init process (PID 1 of the namespace) that reaps orphans, with the kernel as its only child;
- every capability dropped, no new privileges, the resource limits.
The launcher (launcher.py, outside) sends a request with its standard streams over a Unix socket, learns the
fork's process id (SCM_CREDENTIALS translates it into the launcher's PID namespace), puts the fork into the
kernel's cgroups before anything of the student runs, and receives the kernel's exit code.

Run as `python -c <this file's text> <socket path>` (the repository is hidden inside the sandbox): it imports only
the standard library and the preloaded packages, which is why it repeats two small pieces of launcher.py
(exit_code, the setrlimit loop of run_kernel) instead of importing them.
"""
import base64
import ctypes
import gc
import json
import os
import random
import resource
import select
import signal
import socket
import struct
import sys

if sys.path and sys.path[0] == "":
    del sys.path[0]  # the working folder: no student file may shadow a library

LIBC = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWPID = 0x20000, 0x4000000, 0x8000000, 0x20000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    0x1, 0x2, 0x4, 0x8, 0x20, 0x1000, 0x4000, 0x40000)
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 24, 38
LINUX_CAPABILITY_VERSION_3 = 0x20080522
PROC_READ_ONLY = ("sys", "sysrq-trigger", "irq", "bus")  # as bwrap leaves them


def disable_user_namespaces():
    """No process of this sandbox may create a user namespace (where it would have every capability): the limit
    is per user namespace, and only a process with capabilities in ours could raise it again."""
    with open("/proc/sys/user/max_user_namespaces", "w") as limit:
        limit.write("0")


def preload():
    """Import what every kernel imports, without running anything that starts threads (fork keeps one)."""
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # as ipykernel sets it
    import IPython  # noqa: F401
    import ipykernel.ipkernel  # noqa: F401
    import ipykernel.kernelapp  # noqa: F401
    import matplotlib.pyplot  # noqa: F401
    import numpy  # noqa: F401
    import torch  # noqa: F401
    # What the hidden tests' probes import on top: their meta-device steps enter a TorchDispatchMode, whose first
    # use imports torch._dynamo (about 2 s, paid once here).
    import torch._dynamo  # noqa: F401

    gc.freeze()  # what is loaded stays shared with the forks: no collection there writes to these pages


def check(result, what):
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def mount(source, target, kind, flags, options=None):
    def text(value):
        return value.encode() if value is not None else None

    check(LIBC.mount(text(source), text(target), text(kind), ctypes.c_ulong(flags), text(options)),
          f"mount {target}")


def exit_code(status):
    """A wait status as a shell would say it: the exit code, or 128 + the signal that killed (as
    launcher.shell_exit_code says a return code; repeated here, where the repository is hidden)."""
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def serve(path):
    """Fork a kernel for each connection to the socket at `path`; answer each with its exit code."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    os.write(1, b"ready\n")
    children = {}  # pidfd -> (process id, connection to its launcher)
    while True:
        ready, _, _ = select.select([listener, *children], [], [])
        for source in ready:
            if source is listener:
                connection, _ = listener.accept()
                pid = fork_kernel(connection, [listener, *children, *(c for _, c in children.values())])
                children[os.pidfd_open(pid)] = (pid, connection)
            else:
                pid, connection = children.pop(source)
                os.close(source)
                _, status = os.waitpid(pid, 0)
                try:
                    connection.sendall(struct.pack("<i", exit_code(status)))
                except OSError:  # the launcher is gone
                    pass
                connection.close()


def receive_request(connection):
    """The launcher's request (a dict) and its standard streams (stdin, stdout, stderr descriptors)."""
    header, streams, _, _ = socket.recv_fds(connection, 8, 3)
    (size,) = struct.unpack("<Q", header)
    body = bytearray()
    while len(body) < size:
        chunk = connection.recv(size - len(body))
        if not chunk:
            raise EOFError("the launcher closed the connection mid-request")
        body += chunk
    return json.loads(body), streams


def fork_kernel(connection, inherited):
    """Fork the process that builds one student's sandbox; return its process id. The fork reads the request
    itself: nothing of one student (names, files, keys) stays in the zygote's memory for the next to find."""
    pid = os.fork()
    if pid:
        return pid
    for item in inherited:  # the listener, the other kernels' connections: not this student's business
        if isinstance(item, int):
            os.close(item)
        else:
            item.close()
    exit_with(build_sandbox, connection)


def exit_with(function, *arguments):
    """End this forked process with function(*arguments)'s exit code; 1, and the error on stderr, if it raised."""
    code = 1
    try:
        code = function(*arguments)
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
    except BaseException:
        import traceback

        os.write(2, f"sandbox: could not run the kernel:\n{traceback.format_exc()}".encode())
    finally:
        os._exit(code)


def build_sandbox(connection):
    """In the fork: read the request, wait to be put into the cgroups, build the namespaces and folders, run
    init; its exit code."""
    request, streams = receive_request(connection)
    for target, stream in enumerate(streams):
        os.dup2(stream, target)
        os.close(stream)
    os.setsid()
    LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # the zygote gone (its worker killed): so are we
    credentials = struct.pack("3i", os.getpid(), os.getuid(), os.getgid())
    connection.sendmsg([b"p"], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, credentials)])
    if connection.recv(1) != b"g":  # the launcher could not put us into the cgroups
        return 1
    connection.close()
    check(LIBC.unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID), "unshare")  # hostname copied
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    # Fresh tmpfs over the zygote's own (what an earlier student left); what the kernel needs from below them
    # (the interpreter, in $HOME with pyenv) bound back, still read-only.
    needed = [(path, os.open(path, os.O_PATH)) for path in request["needed"]
              if any(os.path.commonpath([path, folder]) == folder for folder in request["private"])]
    for folder in request["private"]:
        mount("tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=0700,size={request['memory_bytes']}")
    for path, descriptor in needed:
        os.makedirs(path, exist_ok=True)
        mount(f"/proc/self/fd/{descriptor}", path, None, MS_BIND | MS_REC)
        os.close(descriptor)
    os.makedirs(request["runtime"], mode=0o700, exist_ok=True)
    with open(os.open(request["connection_file"], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
        file.write(request["connection"])
    recreate(request["cwd"], request["files"])
    init = os.fork()
    if init == 0:
        exit_with(run_init, request)
    _, status = os.waitpid(init, 0)
    return exit_code(status)


def recreate(folder, entries):
    """The student's working folder from the launcher's listing: [kind, path, value] with kind 'dir', 'link'
    (value: the link's target) or 'file' (value: [mode, base64 content])."""
    os.makedirs(folder, mode=0o755, exist_ok=True)
    os.chmod(folder, 0o755)
    for kind, path, value in entries:
        if kind == "dir":
            os.mkdir(path, 0o755)
        elif kind == "link":
            os.symlink(value, path)
        else:
            mode, content = value
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as file:
                file.write(base64.b64decode(content))


def run_init(request):
    """PID 1 of the student's namespace: mount its /proc, drop every privilege, run the kernel, reap orphans;
    exit with the kernel's code (which ends every process left in the namespace)."""
    LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name in PROC_READ_ONLY:
        path = f"/proc/{name}"
        if os.path.exists(path):
            mount(path, path, None, MS_BIND | MS_REC)
            mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    drop_privileges()
    kernel = os.fork()
    if kernel == 0:
        exit_with(run_kernel, request)  # the kernel ends with os._exit itself
    while True:
        pid, status = os.wait()
        if pid == kernel:
            return exit_code(status)


def drop_privileges():
    """No capability left (bounding, effective, permitted, inheritable, ambient), none to gain by exec."""
    for capability in range(64):
        LIBC.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0)  # fails past the last capability the kernel knows
    check(LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    header = (ctypes.c_uint32 * 2)(LINUX_CAPABILITY_VERSION_3, 0)
    check(LIBC.capset(header, (ctypes.c_uint32 * 6)()), "capset")


def run_kernel(request):
    """The kernel, as kernel_main.py runs it in a fresh interpreter, with the limits and environment."""
    for name, (soft, hard) in request["rlimits"].items():  # launcher.set_resource_limits, repeated (hidden here)
        resource.setrlimit(getattr(resource, name), (soft, hard))
    os.environ.clear()
    os.environ.update(request["environment"])
    os.chdir(request["cwd"])
    random.seed()  # a fresh interpreter's seeds, not the zygote's
    if "numpy.random" in sys.modules:
        sys.modules["numpy.random"].seed()
    _, option, code, *arguments = request["kernel"]  # [python, "-c", kernel_main.py's text, "-f", connection file]
    sys.argv = [option, *arguments]
    exec(compile(code, "<kernel>", "exec"), {"__name__": "__main__"})


if __name__ == "__main__":
    disable_user_namespaces()
    preload()
    serve(sys.argv[1])
