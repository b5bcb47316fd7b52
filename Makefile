# Two commands for a new user: `make run` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.onenip-installed
EXTRAS ?= test
# Threads for torch/numpy on a small machine (torch.set_num_threads breaks batched linalg.inv here).
export OMP_NUM_THREADS ?= 2
export MKL_NUM_THREADS ?= 2

.PHONY: setup run test bench clean-venv

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[$(EXTRAS)]'
	@touch $(STAMP)

setup: $(STAMP)

run: setup
	$(VENV)/bin/onenip run

test: setup
	$(PY) -m pytest

bench:
	$(MAKE) setup EXTRAS=test,bench
	$(PY) benchmarks/run_benchmark.py

clean-venv:
	rm -rf $(VENV)
