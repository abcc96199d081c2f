# Two entry points, each doing all of its own set-up:
#   make quickstart   create .venv, install nas alone (what a search needs), run the quickstart search
#   make test         create .venv, install nas + the dev and kernel extras + the example plugin; lint, check the
#                     import layers, type-check, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
# A CPU build of torch is installed first so that nothing pulls CUDA wheels on a CPU-only machine.
# On a CUDA machine: make TORCH_SPEC="torch" ...
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: quickstart test check install clean

# The lean install (`pip install .`): what a search needs, as a user installs it (not editable: `make test`
# installs the project editable for development).
$(VENV)/.lean: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q .
	touch $@

# Everything `make test` needs: the dev and kernel extras and the example plugin (its entry points are tested).
$(VENV)/.dev: pyproject.toml examples/nas-example-plugin/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev,kernels]" -e examples/nas-example-plugin
	touch $(VENV)/.lean $@

install: $(VENV)/.dev

quickstart: $(VENV)/.lean
	$(BIN)/nas search search_spaces/quickstart.yaml

# The house rules: ruff, the import-linter contracts in pyproject.toml (layers, forbidden imports, no cycles)
# and mypy on nas/.
check: $(VENV)/.dev
	$(BIN)/ruff check nas plugins tests examples benchmarks
	$(BIN)/lint-imports
	$(BIN)/mypy

test: check
	$(BIN)/python -m pytest tests examples/nas-example-plugin/tests

clean:
	rm -rf $(VENV) .nas
