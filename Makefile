# The course's commands (see README.md). Each one creates or reuses the virtual environment .venv first.
#   make course    build the release, autograde the example submissions (make examples), export grades and feedback,
#                  build the book, and print a summary
#   make test      run every test
#   make release   regenerate the student release, the solution modules and the book pages
#   make mutants   mutation testing of the course's tests (every mutant of every exercise)
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

.PHONY: course test release grade examples book mutants clean collect formgrader feedback export browser

$(VENV)/installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[instructor]'
	@# The grader runs student code in bubblewrap (autograder/sandbox/kernelspec.py): install it where we can.
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null; } \
	  || echo "note: install bubblewrap (apt-get install bubblewrap) to grade; see README.md, The sandbox"
	touch $@

release: $(VENV)/installed
	$(BIN)/python -m autograder.release

grade: release
	$(BIN)/python -m autograder.grading --course $(COURSE)

# The example students of autograder/examples/, in their own course folder: each must score as its file says.
examples: release
	$(BIN)/python -m autograder.grading --examples

book: release
	$(BIN)/jupyter-book build book --path-output build/book --warningiserror --quiet

course: examples book
	@echo
	@echo "Student release:    assignment/ (give students this folder)"
	@echo "Example grades:     $(EXAMPLES)/grades.csv, report $(EXAMPLES)/grading_report.csv"
	@echo "Example feedback:   $(EXAMPLES)/feedback/<student>/<notebook>/<notebook>.html"
	@echo "Book:               $(BOOK_HTML)/index.html"

# The instructor's loop on a course (README.md, Instructors): make collect ZIP=<LMS download>, make grade,
# make formgrader (grade the written answers), make feedback, make export. COURSE=<folder> for another course.
collect: $(VENV)/installed
	$(if $(ZIP),,$(error usage: make collect ZIP=<the zip of submissions downloaded from the LMS>))
	$(BIN)/python -m autograder.lms.collect "$(ZIP)" --course $(COURSE)

formgrader: $(VENV)/installed
	@echo "Formgrader: open the http://localhost:8888/formgrader/?token=... address printed below; Ctrl-C stops it."
	cd $(COURSE) && PATH="$(abspath $(BIN)):$$PATH" $(abspath $(BIN))/jupyter lab --ServerApp.default_url=/formgrader \
		$(if $(filter 0,$(shell id -u)),--allow-root)

feedback: $(VENV)/installed
	$(BIN)/python -m autograder.lms.feedback --course $(COURSE)

export: $(VENV)/installed
	$(BIN)/python -m autograder.lms.export --course $(COURSE)

# Mutation testing of the course's own tests (autograder/authoring/mutants.py): how many wrong solutions they catch.
mutants: $(VENV)/installed
	$(BIN)/python -m autograder.authoring.mutants part1_vae part2_aae part3_gpt

test: $(VENV)/installed browser
	$(BIN)/python -m pytest

# The book's browser test (tests/test_book.py) renders the pages in Chromium: install it when it is missing and
# we are root with apt-get; otherwise that test is skipped and says why.
browser:
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null || \
		{ apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || echo "could not install chromium"

clean:
	rm -rf build
