# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
WORKERS ?= 1

.PHONY: run test test-fast train bench clean

# serving needs no torch: the base dependencies only
$(VENV)/.serve-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# everything: serving + training (torch 2.14.1 pinned) + test tools
$(VENV)/.all-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[train,dev]'
	touch $@ $(VENV)/.serve-installed

# Debian's Chromium for the review-page browser tests: Playwright drives it and never downloads a
# browser. Where apt is missing the browser tests skip (and .ci/run makes that a failure).
CHROMIUM ?= /usr/bin/chromium
$(CHROMIUM):
	@if command -v apt-get >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q chromium >/dev/null || { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium >/dev/null; }; \
	else echo "no apt-get: install Chromium yourself to run the browser tests"; fi

run: $(VENV)/.serve-installed
	$(BIN)/grader serve --host $(HOST) --port $(PORT) --workers $(WORKERS)

test: $(VENV)/.all-installed $(CHROMIUM)
	$(BIN)/python -m pytest

# the suite without model training and server processes
test-fast: $(VENV)/.all-installed
	$(BIN)/python -m pytest -m "not slow"

# retrain the shipped default model's recipe from ../shared/data (about 15 minutes on 2 cores), into
# var/: training is not bit-exact across machines, so evaluate the result before it replaces models/
train: $(VENV)/.all-installed
	$(BIN)/grader train --out var/models/apple-defect/0.3.0 --work-dir var/train/apple-defect-0.3.0

clean:
	rm -rf $(VENV) var .pytest_cache
