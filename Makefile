# Two entry points for a fresh machine: `make demo` and `make test`.
# The venv is created on first use; installs are pinned by constraints.txt (torch==2.13.0
# is always named in the same pip call, so pip never pulls a multi-GB CUDA build).
# On a GPU machine: `make gpu-check` (the machine's own CUDA torch, no venv, no Ray).
# For a cluster: `make docker IMAGE=...` / `make docker-push IMAGE=...` (see Dockerfile).
VENV    ?= .venv
PYTHON  ?= python3
PIP      = $(VENV)/bin/pip
PINS     = -c constraints.txt torch==2.13.0
OUT     ?= runs/demo
IMAGE   ?= ghcr.io/your-org/tru-dist:0.1.0-gpu
GPU_PYTHON ?= python3

.PHONY: demo test lint install install-test clean gpu-check docker docker-push

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: $(VENV)/bin/python pyproject.toml constraints.txt
	$(PIP) install -q $(PINS) -e ".[ray]"
	touch $@

$(VENV)/.installed-test: $(VENV)/bin/python pyproject.toml constraints.txt
	$(PIP) install -q $(PINS) -e ".[test]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	RAY_USAGE_STATS_ENABLED=0 $(VENV)/bin/tru-dist demo --out $(OUT)

test: install-test
	$(VENV)/bin/ruff check tru_dist tests jobs
	RAY_USAGE_STATS_ENABLED=0 $(VENV)/bin/pytest -q

lint: install-test
	$(VENV)/bin/ruff check tru_dist tests jobs

# CUDA vs CPU (train / evaluate / unlearn) and NCCL via torchrun; writes gpu-check.json.
# Skips cleanly (exit 0, says why) where there is no GPU.
gpu-check:
	PYTHONPATH=$(CURDIR) RAY_USAGE_STATS_ENABLED=0 $(GPU_PYTHON) -m tru_dist.gpu_check --out gpu-check.json

docker:
	docker build -t $(IMAGE) .

docker-push: docker
	docker push $(IMAGE)

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
