# The two commands in the README: `make testnet` (main job) and `make test` (whole suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TESTNET ?= testnets/default.toml

.PHONY: testnet test pytest lint typecheck imports proto bench bench-quick clean

# editable_mode=compat: a plain path entry (.pth) in site-packages, which type checkers follow,
# instead of setuptools' default import hook, which they cannot: with it, `mypy --strict` on a
# user's own file outside the checkout cannot find `overlay` (README, "Type checking your code").
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]' --config-settings editable_mode=compat
	touch $(STAMP)

testnet: $(STAMP)
	$(BIN)/overlay testnet --manifest $(TESTNET) --report testnet-report.json --plot testnet.png

test: lint typecheck imports pytest

pytest: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

imports: $(STAMP)
	$(BIN)/lint-imports

proto: $(STAMP)
	$(BIN)/python -m proto.generate

bench: $(STAMP)
	$(BIN)/python bench/run.py --json docs/bench-results.json

bench-quick: $(STAMP)
	$(BIN)/python bench/run.py --quick

clean:
	rm -rf $(VENV) build *.egg-info
