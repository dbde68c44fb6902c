# One-command set-up: `make demo` runs the demo, `make test` runs lint + tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint format soak bench clean install

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests examples bench
	$(VENV)/bin/ruff format --check src tests examples bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff format src tests examples bench
	$(VENV)/bin/ruff check --fix src tests examples bench

test: lint
	$(PY) -m pytest -q

soak: $(STAMP)
	$(PY) -m pytest -q -m soak -o addopts=''

bench: $(STAMP)
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .superpose .mypy_cache .ruff_cache .pytest_cache
