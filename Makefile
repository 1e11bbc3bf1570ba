# flcore: the two commands of the README.
#   make reproduce   set up .venv if needed, then regenerate the quick profile's figures and tables
#   make test        set up .venv if needed, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PROFILE ?= quick

.PHONY: setup data browser reproduce test bench lint clean

setup: $(VENV)/.installed

# torch is pinned to the CPU wheel on local disk (a looser pin pulls a multi-GB CUDA build).
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[notebooks,dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

# Fashion-MNIST from Debian's dataset-fashion-mnist (root only; others: see README "Data").
data:
	@if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; fi

# Debian's chromium for the real-browser JupyterLab test (skipped with its reason where absent).
browser:
	@if ! command -v chromium >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null || \
	  echo "chromium could not be installed: the browser test will be skipped"; fi

reproduce: setup data
	$(BIN)/python -m flcore reproduce --profile $(PROFILE)

test: setup data browser
	$(BIN)/python -m pytest -q -n auto --dist loadgroup

bench: setup data
	$(BIN)/python benchmarks/engine_speed.py

lint: setup
	$(BIN)/ruff check flcore tests benchmarks

clean:
	rm -rf results reports
