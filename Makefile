# `make demo` trains FaPN on the built-in demo data (a few minutes on a CPU), replacing an earlier outputs/demo;
# `make test` runs ruff and the tests.
# Both create (or reuse) the virtualenv in $(VENV) and install the package with its test extras.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fapn_hf-installed

.PHONY: demo test test-fast lint transformers-tests benchmark reproduce clean

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

test: lint transformers-tests
	$(PY) -m pytest -q

# The unit tier for iteration (well under a minute): no training, exports, servers, notebooks or common tests.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

benchmark: $(STAMP)
	$(PY) -m fapn_hf benchmark

reproduce: $(STAMP)
	$(PY) scripts/reproduce_fpn_vs_fapn.py

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
