# Two commands for a new user: `make run` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.onenip-installed
EXTRAS ?= test
# Threads for torch/numpy of the main job (torch.set_num_threads breaks batched linalg.inv here);
# the test suite sets its own (tests/conftest.py).
THREADS ?= 2

.PHONY: setup run test test-fast bench clean-venv

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[$(EXTRAS)]'
	@touch $(STAMP)

setup: $(STAMP)

# The full pipeline (Prefect flow `retrain`) on ELPV with the `fast` profile of params.yaml;
# PROFILE= (empty) runs the full configuration.
PROFILE ?= fast
run: setup
	OMP_NUM_THREADS=$(THREADS) MKL_NUM_THREADS=$(THREADS) PATH="$(CURDIR)/$(VENV)/bin:$$PATH" \
		$(VENV)/bin/onenip run $(if $(PROFILE),--profile $(PROFILE),)

test: setup
	$(PY) -m pytest

# the edit-test loop: everything but the tests marked slow (services, pipelines, real-data training)
test-fast: setup
	$(PY) -m pytest -m "not slow"

bench: setup
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,bench]'
	OMP_NUM_THREADS=$(THREADS) MKL_NUM_THREADS=$(THREADS) $(PY) benchmarks/run_benchmark.py

clean-venv:
	rm -rf $(VENV)
