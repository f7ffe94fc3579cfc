# make demo / make test work on a fresh machine with only python3 and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint venv clean

$(STAMP): requirements-lock.txt setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-lock.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

# The main job on the built-in synthetic data: make the data, train, evaluate, export, draw.
# A finished run in runs/shapes_demo is reused; delete the folder to train again.
demo: venv
	$(BIN)/python tools/demo.py --flagfile=configs/shapes_demo.cfg --model_dir=runs/shapes_demo

lint: venv
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest -q

# The suite without the tests marked slow (trainings, TFLite conversions, tool subprocesses): a few minutes.
test-fast: lint
	$(BIN)/pytest -q -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
