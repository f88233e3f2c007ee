# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
WORKERS ?= 1

.PHONY: run lint test test-fast train bench clean mqtt-tools

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

# Mosquitto's broker and clients (mosquitto_sub/mosquitto_pub) for the sorter-link tests: the tests
# talk to the machine's broker at 127.0.0.1:1883 and start brokers of their own to stop and kill
MOSQUITTO ?= /usr/sbin/mosquitto
MOSQUITTO_SUB ?= /usr/bin/mosquitto_sub
$(MOSQUITTO) $(MOSQUITTO_SUB):
	@if command -v apt-get >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q mosquitto mosquitto-clients >/dev/null || { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q mosquitto mosquitto-clients >/dev/null; }; \
	else echo "no apt-get: install Mosquitto (broker and clients) yourself to run the MQTT tests"; fi

mqtt-tools: $(MOSQUITTO) $(MOSQUITTO_SUB)

run: $(VENV)/.serve-installed
	$(BIN)/grader serve --host $(HOST) --port $(PORT) --workers $(WORKERS)

# ruff: pyflakes, pycodestyle, import order and the formatter ([tool.ruff] in pyproject.toml); `make test` runs it first
lint: $(VENV)/.all-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint $(VENV)/.all-installed $(CHROMIUM) $(MOSQUITTO) $(MOSQUITTO_SUB)
	$(BIN)/python -m pytest

# the suite without model training and server processes
test-fast: lint $(VENV)/.all-installed
	$(BIN)/python -m pytest -m "not slow"

# retrain the shipped default model's recipe from ../shared/data (about 15 minutes on 2 cores), into
# var/: training is not bit-exact across machines, so evaluate the result before it replaces models/
train: $(VENV)/.all-installed
	$(BIN)/grader train --out var/models/apple-defect/0.3.0 --work-dir var/train/apple-defect-0.3.0

clean:
	rm -rf $(VENV) var .pytest_cache
