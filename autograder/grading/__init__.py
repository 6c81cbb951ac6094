"""Grading a course's submissions. `python -m autograder.grading` runs coordinator.main; the flow of one run:

    coordinator   the command: per notebook, collect, skip what is unchanged, grade, record, feedback, summary
    submission    the course's submissions read into jobs, each job's notebook checked before anything runs
    job           the model: a Job (one student's notebook and everything it is graded with), its Result
    worker        the worker processes (--jobs of them, or one per Dask task) and the pipe protocol to them
    unit          what a worker process does: autograde one job in a private nbgrader course; feedback
    cluster       grading on a Dask cluster instead of the local worker processes
    records       what the coordinator writes: gradebook, autograded/, logs/, grading_report.csv
    expectations  the example students of autograder/examples/ and the scores each must get
"""
