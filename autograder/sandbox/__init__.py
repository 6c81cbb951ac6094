"""The sandboxed Jupyter kernel every student's code runs in (bubblewrap, cgroups, a kernel fork server)."""
