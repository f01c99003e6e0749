# Two set-up commands: `make demo` and `make test`. Both create .venv and install into it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# torch==2.13.0 first: its CPU wheel installs offline; an unpinned torch would pull a CUDA build.
TORCH_PIN := torch==2.13.0
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test lint install fashion-mnist bench-dense clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# Debian's dataset-fashion-mnist gives the real data offline; skipped quietly where apt is unavailable.
fashion-mnist:
	@if [ ! -d $(FMNIST) ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) || \
		echo "note: could not apt-get install dataset-fashion-mnist; pass data.root or use download=True"; \
	fi

demo: install fashion-mnist
	$(VENV)/bin/prunekit compress recipes/lenet5-fashion-admm.yaml --out runs/demo

# the dense LeNet-5 every compression benchmark row starts from (bench/README.md)
bench-dense: install fashion-mnist
	@if [ -f runs/bench-dense/dense.pt ]; then echo "runs/bench-dense/dense.pt exists"; \
	else $(PY) bench/dense_baseline.py --out runs/bench-dense; fi

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
