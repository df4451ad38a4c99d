# Everything a fresh machine needs: Python 3.11 + pip + make. The venv lives in .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --progress-bar off -e '.[test]'
	touch $@

install: $(BIN)/.installed

# The main job on the embedded default (CPU scale: 128 px, width 32 keeps the paper's params-per-pixel ratio).
run: install
	$(BIN)/lipsweep fit --image Set5/baby --task denoise --size 128 --width 32 --iters 1500 --out runs/quickstart

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/fit_loop.py

clean:
	rm -rf $(VENV) runs
