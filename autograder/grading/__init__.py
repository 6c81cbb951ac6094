"""Grading: the coordinator (`python -m autograder.grading`), the job model, the unit, its workers, Dask."""
