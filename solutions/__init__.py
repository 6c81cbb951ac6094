"""Reference solutions of the course, one module per part.

`vae.py`, `aae.py` and `gpt.py` are generated from the source notebooks `part*.md` beside them by
`make release`; `course_utils.py` is written by hand and shipped to students with the release.
"""
