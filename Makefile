# `make demo` trains FaPN on the built-in demo data (a few minutes on a CPU), replacing an earlier outputs/demo;
# `make test` runs ruff and the tests.
# Both create (or reuse) the virtualenv in $(VENV) and install the package with its test extras; `make test` also makes
# sure there is a Chromium for the Space's browser test (`make browser`: Debian's chromium through apt-get if none).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fapn_hf-installed

.PHONY: demo test test-fast lint transformers-tests browser benchmark reproduce clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fapn-train recipes/demo.yaml --overwrite_output_dir true

lint: $(STAMP)
	$(PY) -m ruff check fapn_hf scripts tests notebooks space_app
	$(PY) -m ruff format --check fapn_hf scripts tests notebooks space_app

# transformers' common model/processor tests come from its sdist (pinned to the installed version, cached).
transformers-tests: $(STAMP)
	$(PY) scripts/fetch_transformers_tests.py

# A Chromium for tests/test_space_folder.py, found as tests/find_chromium.py finds it ($FAPN_CHROMIUM, chromium,
# chromium-browser, google-chrome on PATH, Playwright's own); if there is none, Debian's chromium from apt-get (as root,
# or through sudo). Playwright's own download (`playwright install`) is not used: it does not work everywhere.
FIND_CHROMIUM ?= $(PY) tests/find_chromium.py
browser: $(STAMP)
	@if found=$$($(FIND_CHROMIUM) 2>/dev/null); then echo "Chromium for the browser test: $$found"; exit 0; fi; \
	if [ -n "$$FAPN_CHROMIUM" ]; then $(FIND_CHROMIUM); exit 1; fi; \
	if [ "$$(id -u)" -eq 0 ]; then sudo=""; \
	elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; \
	else echo "make browser: no Chromium found and no root or sudo to install Debian's chromium;" \
	  "install chromium (or Google Chrome) yourself, or set FAPN_CHROMIUM=/path/to/chrome" >&2; exit 1; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then echo "make browser: no Chromium found and no apt-get to install" \
	  "Debian's chromium; install chromium (or Google Chrome) yourself, or set FAPN_CHROMIUM=/path/to/chrome" >&2; \
	  exit 1; fi; \
	echo "No Chromium found: installing Debian's chromium for the Space's browser test ($${sudo:+sudo }apt-get, about a minute)"; \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
	  && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
	  || { echo "make browser: apt-get could not install chromium (see above)" >&2; exit 1; }; \
	found=$$($(FIND_CHROMIUM)) || { echo "make browser: chromium was installed but is not found on PATH" >&2; exit 1; }; \
	echo "Chromium for the browser test: $$found"

# The tests run in one worker per core (pytest-xdist; each worker's torch uses one thread, tests/conftest.py), every
# test module in one worker so that its module-scoped fixtures are built once.
TEST_WORKERS ?= auto
test: lint transformers-tests browser
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# The unit tier for iteration (well under a minute): no training, exports, servers, notebooks or common tests.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

benchmark: $(STAMP)
	$(PY) -m fapn_hf benchmark

reproduce: $(STAMP)
	$(PY) scripts/reproduce_fpn_vs_fapn.py

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
