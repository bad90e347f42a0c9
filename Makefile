# Two commands: `make demo` (set up, analyse the samples) and `make test` (set up with dev extras, run the tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch that lies on this machine's disk; an unpinned torch would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: demo test samples bench clean

$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.runtime
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: $(VENV)/.runtime
	$(VENV)/bin/initcheck analyze sample_models/relu_mlp_he.onnx
	$(VENV)/bin/initcheck analyze sample_models/residual_mlp.onnx --fail-on never

test: $(VENV)/.dev
	$(PY) -m pytest -q -p no:cacheprovider

samples: $(VENV)/.dev
	$(PY) sample_models/make_samples.py

clean:
	rm -rf $(VENV) build *.egg-info

bench: $(VENV)/.dev
	$(PY) benchmarks/probe_bench.py
