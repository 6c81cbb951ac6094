"""The sandboxed Jupyter kernel every student's code runs in (bubblewrap, cgroups, a kernel fork server).

Other packages import only kernelspec.py. The modules, by the process they run in:
- kernelspec.py  the grader (nbgrader's process): check_available, nbgrader_launch (writes the kernelspec),
                 Zygote (starts the fork server), kernel_events (what happened to the kernels);
- launcher.py    the launcher nbgrader starts for each kernel, outside the sandbox: starts and supervises it;
- bwrap.py       what a sandbox shows (bwrap's options, file system, scratch copy, environment), for both;
- cgroups.py     the kernel's memory and process limits (cgroups v1 or v2), for the launcher;
- zygote.py      the fork server, inside its own sandbox (shipped as text: the repository is hidden there);
- kernel_main.py the kernel's main program, inside the sandbox (shipped as text too).
They import the standard library only (kernelspec.py also autograder.course and autograder.limits, which do
too), but for what zygote.py preloads and kernel_main.py runs (ipykernel) inside the sandbox.
"""
