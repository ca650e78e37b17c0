# Every target uses the project's own virtual environment.
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch; on a GPU machine use `make install TORCH_SPEC=torch` (see README).
TORCH_SPEC ?= torch==2.13.0

.PHONY: install test lint bench demo clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# The stamp makes repeated `make test` skip pip; editing pyproject.toml reinstalls.
STAMP := $(VENV)/.sparse-edit-installed

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,plot,gguf]"
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check sparse_edit tests benchmarks
	$(VENV)/bin/ruff format --check sparse_edit tests benchmarks
	$(VENV)/bin/mypy

bench: install
	$(PY) -m pytest -q -m slow tests
	$(PY) benchmarks/runner.py

demo: install
	bash examples/demo.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
