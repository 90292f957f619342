# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv on first use. `make demo` installs only what the demo runs (runtime + render);
# `make test` adds the test stack (tools, torch, the oracles, pytest) to the same venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DEMO_STAMP := $(VENV)/.installed-demo
TEST_STAMP := $(VENV)/.installed-test
WORKDIR ?= runs/demo
# PyPI's torch is the CUDA build (about 2.7 GB of nvidia wheels). For the CPU wheel:
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
# (not the default: where that index cannot be reached, pip retries it for every package).
TORCH_INDEX ?=

.PHONY: demo test test-fast venv venv-test bench clean

$(DEMO_STAMP): requirements.txt requirements-render.txt setup.cfg setup.py pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-render.txt
	$(PY) -m pip install -q --no-deps tinysoundfont==0.3.7
	$(PY) -m pip install -q --no-deps -e .
	touch $@

$(TEST_STAMP): $(DEMO_STAMP) requirements-test.txt requirements-tools.txt requirements-torch.txt
	$(PY) -m pip install -q -r requirements-test.txt \
	  $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	touch $@

venv: $(DEMO_STAMP)

venv-test: $(TEST_STAMP)

demo: $(DEMO_STAMP)
	$(PY) demo.py --workdir $(WORKDIR)

# The other GM soundfonts of synth_gm's `_fluidr3`/`_musescore` test renders: `make soundfonts`.
include datasets/synth_gm/soundfonts.mk

# Everything, the slow (compile-bound, subprocess, benchmark) tests included: CI runs this.
# It installs the soundfonts first; where apt-get cannot, their tests skip naming `make soundfonts`.
test: $(TEST_STAMP)
	@$(MAKE) --no-print-directory soundfonts || echo "soundfonts: not installed; their tests skip"
	$(PY) -m pytest -q -n 2 --durations=15 tests

# The same without the tests marked slow (setup.cfg, [tool:pytest] markers).
test-fast: $(TEST_STAMP)
	$(PY) -m pytest -q -n 2 --durations=15 -m "not slow" tests

bench: $(TEST_STAMP)
	$(PY) -m bench.run --preset cpu

clean:
	rm -rf $(VENV) runs
