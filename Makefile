# Everything a fresh machine needs: Python 3.11 + pip + make. The venv lives in .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test check bench ui clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --progress-bar off -e '.[test]'
	touch $@

install: $(BIN)/.installed

# The main job: the rewind ablation (Fig. 9) at CPU scale, local Ray, MLflow in ./mlflow.db.
run: install
	$(BIN)/lipsweep run rewind_ablation --profile local

# Two pytest workers, one test file each at a time (-n 2 --dist loadfile): most tests wait on Ray, MLflow
# servers and subprocesses, so two share the 2 cores of a CI machine well (~8-12 min instead of ~15).
test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# The fast part, ~2 min: no test marked ray, cluster or slow (tests/conftest.py marks most of them).
check: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not ray and not cluster and not slow"

bench: install
	$(BIN)/python benchmarks/fit_loop.py

ui: install
	$(BIN)/lipsweep ui

clean:
	rm -rf $(VENV) runs .lipsweep mlflow.db mlruns
