# The course's commands (see README.md). Each one creates or reuses the virtual environment .venv first.
#   make course    build the release, autograde the example submissions, export grades and feedback,
#                  build the book, and print a summary
#   make test      run every test
#   make release   regenerate the student release, the solution modules and the book pages
#   make mutants   mutation testing of the course's tests (every mutant of every exercise)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
COURSE := build/course
BOOK_HTML := build/book/_build/html

# Data: ../shared/data where it exists (CI and development); otherwise the notebooks' default, ./data.
ifneq ($(wildcard ../shared/data),)
export DGM_DATA_DIR ?= $(abspath ../shared/data)
endif

.PHONY: course test release grade book mutants clean

$(VENV)/installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[instructor]'
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
	@echo "Grades:             $(COURSE)/grades.csv"
	@echo "Feedback:           $(COURSE)/feedback/<student>/<notebook>/<notebook>.html"
	@echo "Book:               $(BOOK_HTML)/index.html"

mutants: $(VENV)/installed
	$(BIN)/python -m autograder.mutants part1_vae part2_aae part3_gpt

test: $(VENV)/installed
	$(BIN)/python -m pytest

clean:
	rm -rf build
