# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv and install everything they need on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
WORKDIR ?= runs/demo

.PHONY: demo test venv bench clean

$(STAMP): requirements.txt requirements-test.txt setup.cfg setup.py pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install -q --no-deps tinysoundfont==0.3.7
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) demo.py --workdir $(WORKDIR)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --durations=15 tests

bench: $(STAMP)
	$(PY) -m bench.run --preset cpu

clean:
	rm -rf $(VENV) runs
