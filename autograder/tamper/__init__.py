"""Tamper checks: the probe that runs in the kernel, the canaries around test cells, the static scan."""
