# The course's commands (see README.md). Each one creates or reuses the virtual environment .venv first.
#   make course    build the release, autograde the example submissions, export grades and feedback,
#                  build the book, and print a summary
#   make test      run every test
#   make release   regenerate the student release, the solution modules and the book pages
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
COURSE := build/course
EXAMPLES := build/examples
BOOK_HTML := build/book/_build/html

# Data: ../shared/data where it exists (CI and development); otherwise the notebooks' default, ./data.
ifneq ($(wildcard ../shared/data),)
export DGM_DATA_DIR ?= $(abspath ../shared/data)
endif

.PHONY: course test release grade book clean

$(VENV)/installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[instructor]'
	@# The grader runs student code in bubblewrap (autograder/sandbox.py): install it where we can.
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null; } \
	  || echo "note: install bubblewrap (apt-get install bubblewrap) to grade; see README.md, The sandbox"
	touch $@

release: $(VENV)/installed
	$(BIN)/python -m autograder.release

grade: release
	$(BIN)/python -m autograder.grade --examples

book: release
	$(BIN)/jupyter-book build book --path-output build/book --warningiserror --quiet

course: grade book
	@echo
	@echo "Student release:    assignment/ (give students this folder)"
	@echo "Example grades:     $(EXAMPLES)/grades.csv, report $(EXAMPLES)/grading_report.csv"
	@echo "Example feedback:   $(EXAMPLES)/feedback/<student>/<notebook>/<notebook>.html"
	@echo "Book:               $(BOOK_HTML)/index.html"

test: $(VENV)/installed
	$(BIN)/python -m pytest

clean:
	rm -rf build
