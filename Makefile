# Two commands for a newcomer: `make demo` and `make test`. Each sets up .venv first.
PYTHON ?= python3
TORCH_INDEX ?=  # e.g. https://download.pytorch.org/whl/cpu: an extra index that holds the build of torch wanted
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install services clean

# constraints.txt pins every dependency's version: each machine tests the same code.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	# torch is pinned to the version tested (an unpinned torch may pull a newer multi-GB CUDA
	# build). Which build of 2.13.0 comes is the index's: PyPI's Linux wheel is the CUDA one;
	# `make TORCH_INDEX=https://download.pytorch.org/whl/cpu demo` takes the CPU one. GPU
	# hosts: see deploy/README.md.
	$(PY) -m pip install --quiet -c constraints.txt $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) \
		"torch==2.13.0" "setuptools<81"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[worker,test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/specq demo

services:
	./scripts/services.sh

# Test processes: one per core, at most 4. The tests of real services run in one of them,
# one after another (tests/conftest.py keeps them together); the others share out the rest.
TEST_PROCESSES ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)

test: $(STAMP) services
	# The crash tests' counts (enqueued, rows, duplicates, lost) close the run ("measured by the tests").
	# --durations: the slowest tests, for keeping the suite within CI's time
	# CI runs the RabbitMQ tests too: missing RabbitMQ fails them there instead of skipping.
	SPECQ_TEST_REQUIRE_RABBITMQ=1 $(PY) -m pytest -q -n $(TEST_PROCESSES) --durations=20

clean:
	rm -rf $(VENV) .pytest_cache
