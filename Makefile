# `make demo` builds a Hub-ready FaPN-R50 folder; `make test` runs ruff and the test suite.
# Both create (or reuse) the virtualenv in $(VENV) and install the package with its test extras.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fapn_hf-installed

.PHONY: demo test lint benchmark clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/create_model.py --preset fapn-r50 --labels cityscapes --output-dir outputs/fapn-r50-cityscapes

lint: $(STAMP)
	$(PY) -m ruff check fapn_hf scripts tests
	$(PY) -m ruff format --check fapn_hf scripts tests

test: lint
	$(PY) -m pytest -q

benchmark: $(STAMP)
	$(PY) scripts/benchmark.py

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
