# Two commands: `make demo` (set up, analyse the samples) and `make test` (set up with dev extras, run the tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch that lies on this machine's disk; an unpinned torch would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: demo test lint docs zoo samples bench clean

$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.runtime
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# The official SARIF 2.1.0 JSON schema, to validate our SARIF output in the tests: the npm package of
# Microsoft's SARIF jest matchers ships it (npm's registry is reachable where PyPI is).
SARIF_PACKAGE ?= @microsoft/jest-sarif@1.0.0-beta.0
$(VENV)/sarif-schema-2.1.0.json: | $(VENV)/.runtime
	tmp=$$(mktemp -d) && cd $$tmp && npm pack -q "$(SARIF_PACKAGE)" >/dev/null && tar xzf *.tgz \
	  && cp package/lib/schemas/sarif-2.1.0-rtm.5.json $(CURDIR)/$@ && rm -rf $$tmp

# The main job: the symbolic pass and the probe (torch runs the gradients), side by side in one table.
$(VENV)/.demo: $(VENV)/.runtime
	$(PY) -m pip install -q "$(TORCH)"
	touch $@

demo: $(VENV)/.demo
	$(VENV)/bin/initcheck analyze sample_models/relu_mlp_he.onnx
	$(VENV)/bin/initcheck analyze sample_models/relu_mlp_glorot.onnx --fail-on never

# Format, lint and types are part of the tests: CI fails on an unformatted file, a lint or a type error.
lint: $(VENV)/.dev
	$(VENV)/bin/ruff format --check -q initcheck tests benchmarks sample_models
	$(VENV)/bin/ruff check -q initcheck tests benchmarks sample_models
	$(VENV)/bin/mypy

test: lint $(VENV)/.dev $(VENV)/sarif-schema-2.1.0.json
	INITCHECK_SARIF_SCHEMA=$(VENV)/sarif-schema-2.1.0.json $(PY) -m pytest -q -p no:cacheprovider -m "not zoo"

# The zoo's slow part: every stock model and broken twin through both ONNX exporters.
zoo: $(VENV)/.dev
	$(PY) -m pytest -q -p no:cacheprovider -m zoo tests/test_zoo.py

# docs/checks.md is generated from the code catalogue (a test fails when it is stale)
docs: $(VENV)/.runtime
	$(PY) -m initcheck.catalogue > docs/checks.md

samples: $(VENV)/.dev
	$(PY) sample_models/make_samples.py

clean:
	rm -rf $(VENV) build *.egg-info

bench: $(VENV)/.dev
	$(PY) benchmarks/probe_bench.py
